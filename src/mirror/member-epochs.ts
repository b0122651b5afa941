/**
 * Member-set epochs: which writes were issued to a member set that a member has since
 * joined.
 *
 * A write takes its list of active members once, when it starts. A member that becomes
 * active (recovering) after that never gets the write, and the write's `endWrite` may
 * still report success on every member it knew. A recovery that built its list of
 * chunks before such a write ended would miss its chunk, and the chunk's bit could be
 * cleared with the new member lacking the write. So:
 *
 *   write starts ── join(): counted in the current epoch E (same tick as taking the
 *   │               member list, so the list and E always agree)
 *   │   ...member writes, acknowledgement, behind writes...
 *   └── leave(E) after endWrite: E's count goes down; at 0, waiters for E are woken
 *
 *   a member becomes active ── advance(): E → E + 1, returns E + 1
 *   └── drainedBefore(E + 1): resolves once no write of an epoch < E + 1 is left
 *
 * A recovery waits for `drainedBefore` after its member became active and before it
 * lists the chunks to copy: every write that missed the member has ended by then, while
 * the mirror was degraded (the member is not in sync), so its chunk is NEEDED and on
 * the list. Writes that started after the member became active include it.
 */
export class MemberEpochs {
  private epoch = 0
  /** Writes not yet ended, by the epoch they started in. */
  private readonly open = new Map<number, number>()
  private waiters: Array<{ before: number; wake: () => void }> = []

  /** A write takes its member list now: returns its epoch, to give back to {@link leave}. */
  join(): number {
    this.open.set(this.epoch, (this.open.get(this.epoch) ?? 0) + 1)
    return this.epoch
  }

  /** The write of `epoch` ended (its endWrite ran, or it failed before touching a member). */
  leave(epoch: number): void {
    const n = (this.open.get(epoch) ?? 1) - 1
    if (n > 0) this.open.set(epoch, n)
    else this.open.delete(epoch)
    if (this.waiters.length) this.waiters = this.waiters.filter((w) => (this.anyBefore(w.before) ? true : (w.wake(), false)))
  }

  /** A member became active: later writes include it. Returns the new epoch. */
  advance(): number {
    return ++this.epoch
  }

  /** Resolves once every write that started in an epoch before `epoch` has ended. */
  drainedBefore(epoch: number): Promise<void> {
    if (!this.anyBefore(epoch)) return Promise.resolve()
    return new Promise((wake) => this.waiters.push({ before: epoch, wake }))
  }

  private anyBefore(epoch: number): boolean {
    for (const e of this.open.keys()) if (e < epoch) return true
    return false
  }
}
