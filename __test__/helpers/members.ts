/**
 * Member wrappers for tests and crash fixtures, all on the library's SlowMember (a
 * DelegatingMember: every call goes to the wrapped member unless overridden):
 *
 * - {@link JitterMember}: a slowed member whose delay is drawn anew for each write, so
 *   its writes complete out of order (a distant, uneven replica);
 * - {@link ProbeMember}: counts reads and writes, delays write completions, holds
 *   writes at a gate and injects faults, on the say of a {@link MemberControl} that
 *   survives the member being reopened (reAdd, Mirror.open).
 *
 * Fault injection exists because a real device cannot be made to fail one chosen read
 * or write on demand; the failure specs also produce real errors (ENOSPC, a shrunk
 * device) where the kernel can.
 */
import { MdBitmapError, SlowMember, type Member } from '../../src'

/** A SlowMember whose delay (ms) is `draw()`n anew for each write. */
export class JitterMember extends SlowMember {
  constructor(
    inner: Member,
    private readonly draw: () => number,
  ) {
    super(inner, 0)
  }
  override write(data: Uint8Array, offset: number): Promise<void> {
    this.delayMs = this.draw()
    return super.write(data, offset)
  }
}

/** What a test controls and observes for one member slot. */
export class MemberControl {
  /** Extra milliseconds before each write completes (SlowMember). */
  delayMs = 0
  /** Fail reads / writes that overlap [offset, offset+length) when this says so. */
  failRead: ((offset: number, length: number) => boolean) | null = null
  failWrite: ((offset: number, length: number) => boolean) | null = null
  reads = 0
  writesStarted = 0
  writesDone = 0
  writesInFlight = 0
  /** Called when a write completed on the member (successfully). */
  onWriteDone: ((offset: number, length: number) => void) | null = null
  /** Called as a read or write reaches the member, with the buffer the mirror passed it. */
  onIo: ((what: 'read' | 'write', buf: Uint8Array, offset: number) => void) | null = null
  /** While set, writes wait here before they start (see {@link hold}). */
  gate: Promise<void> | null = null
  private openGate: (() => void) | null = null
  private readonly pending = new Set<Promise<unknown>>()

  /**
   * Holds every write issued from now on until {@link release}: a slow member whose
   * slowness does not depend on how loaded the machine is, so a test can be sure a
   * write is still in flight while it looks.
   */
  hold(): void {
    if (!this.gate) this.gate = new Promise((r) => (this.openGate = r))
  }

  release(): void {
    this.openGate?.()
    this.gate = null
    this.openGate = null
  }
  /** Offsets (start) of completed writes, in completion order. */
  readonly completed: number[] = []

  track(p: Promise<unknown>): void {
    this.pending.add(p)
    const rm = () => void this.pending.delete(p)
    p.then(rm, rm)
  }

  /** Resolves once every write issued so far to the member has settled. */
  async idle(): Promise<void> {
    while (this.pending.size) await Promise.allSettled([...this.pending])
  }
}

export function injected(what: string, offset: number): MdBitmapError {
  return new MdBitmapError('EIO', `injected ${what} error at ${offset} (test fault)`, { errno: 5 })
}

/** A member that counts, delays and fails on its control's say. */
export class ProbeMember extends SlowMember {
  constructor(
    inner: Member,
    readonly ctl: MemberControl,
  ) {
    super(inner, 0)
  }
  override async read(target: Uint8Array, offset: number): Promise<void> {
    this.ctl.onIo?.('read', target, offset)
    if (this.ctl.failRead?.(offset, target.length)) throw injected('read', offset)
    await this.inner.read(target, offset)
    this.ctl.reads++
  }
  override write(data: Uint8Array, offset: number): Promise<void> {
    const ctl = this.ctl
    ctl.onIo?.('write', data, offset)
    ctl.writesStarted++
    ctl.writesInFlight++
    const delay = ctl.delayMs
    const gate = ctl.gate
    const p = (async () => {
      try {
        if (gate) await gate
        if (ctl.failWrite?.(offset, data.length)) throw injected('write', offset)
        this.delayMs = delay
        await super.write(data, offset)
        ctl.writesDone++
        ctl.completed.push(offset)
        ctl.onWriteDone?.(offset, data.length)
      } finally {
        ctl.writesInFlight--
      }
    })()
    ctl.track(p)
    return p
  }
}
