/**
 * How the demo's parent (`../demo.ts`) and its writer child (`writer.ts`) open the
 * mirror's members: the write-mostly one slowed, a stand-in for a distant replica, and
 * in the writer also timed, so it can report the slow member's latency.
 *
 * @internal
 * @module
 */
import { DelegatingMember, FileMember, SlowMember, type Member, type OpenMember } from '../../member'

/** Bytes per demo write: the writer writes whole blocks at block-aligned offsets. */
export const BLOCK = 64 * 1024

/** A member that reports how long each of its writes took. */
class TimedMember extends DelegatingMember {
  constructor(
    inner: Member,
    private readonly record: (ms: number) => void,
  ) {
    super(inner)
  }
  override async write(data: Uint8Array, offset: number): Promise<void> {
    const t0 = performance.now()
    await this.inner.write(data, offset)
    this.record(performance.now() - t0)
  }
}

/** How the demo opens members: the write-mostly one slowed by `slowMs` per write. `onSlowWrite` gets each slow write's latency (ms). */
export function demoOpenMember(slowMs: number, onSlowWrite?: (ms: number) => void): OpenMember {
  return async (spec) => {
    const file = await FileMember.open(spec.path)
    if (!spec.writeMostly) return file
    const slow = new SlowMember(file, slowMs)
    return onSlowWrite ? new TimedMember(slow, onSlowWrite) : slow
  }
}
