/**
 * A slowed member: a stand-in for a distant write-mostly replica.
 *
 * @module
 */
import { DelegatingMember } from './delegating'
import type { Member } from './types'

/**
 * A member whose writes complete `delayMs` later than the inner member's: a stand-in
 * for a distant write-mostly replica in demos, tests and benchmarks. The data is real;
 * only the completion is late.
 */
export class SlowMember extends DelegatingMember {
  constructor(
    inner: Member,
    /** Extra milliseconds before each write completes. */
    public delayMs: number,
  ) {
    super(inner)
  }
  override async write(data: Uint8Array, offset: number): Promise<void> {
    if (this.delayMs > 0) await new Promise((r) => setTimeout(r, this.delayMs))
    await this.inner.write(data, offset)
  }
}
