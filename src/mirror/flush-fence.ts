/**
 * The flush fence: which writes a {@link Mirror.flush} waits for before it syncs the
 * members. A flush covers every write whose `write()` was called before the flush was;
 * it does not wait for writes called later, so a steady stream of writes cannot starve it.
 *
 * Writes are counted in generations. A write enters the open generation when it is
 * called and leaves it when it is acknowledged or rejected. A flush closes the open
 * generation (later writes enter a new one) and waits until that generation is empty,
 * and every generation closed before it too (an earlier flush may still be waiting on
 * an older one):
 *
 * ```
 *   write() ── enter: open generation g, count + 1 ── acknowledged or rejected: count − 1
 *   flush() ── g has writes? close g, open g + 1 ── wait: g empty, and every generation
 *              closed before g empty ── then fdatasync the members
 * ```
 *
 * Cost: a write adds and subtracts one on an object that already exists; only a flush
 * that has writes to wait for allocates (a generation and a promise).
 *
 * @module
 */

/** The writes entered between two flushes. */
export interface FenceGeneration {
  /** Writes of this generation not yet acknowledged or rejected. */
  writes: number
  /** Set by the flush that closed the generation: called when `writes` reaches 0. */
  drained?: () => void
}

export class FlushFence {
  private open: FenceGeneration = { writes: 0 }
  /** Resolves once every generation closed so far is empty. Never rejects. */
  private closedDrained: Promise<void> = Promise.resolve()

  /** A write was called: returns its generation, to give back to {@link FlushFence.leave}. */
  enter(): FenceGeneration {
    this.open.writes++
    return this.open
  }

  /** The write was acknowledged or rejected. */
  leave(generation: FenceGeneration): void {
    if (--generation.writes === 0) generation.drained?.()
  }

  /** Resolves once every write entered before this call has left. */
  drain(): Promise<void> {
    const closing = this.open
    if (closing.writes > 0) {
      this.open = { writes: 0 }
      const empty = new Promise<void>((resolve) => (closing.drained = resolve))
      this.closedDrained = this.closedDrained.then(() => empty)
    }
    return this.closedDrained
  }
}
