/**
 * Write ordering on one member: a write that overlaps writes still in flight on that
 * member is issued only after they complete. A write-mostly member may still be
 * working through write-behind writes the caller has long had acknowledged; a newer
 * write to the same range must not overtake them, or the older data would win.
 *
 * The in-flight ranges also tell reads where a member may still hold older data.
 *
 * @module
 */
/** One write in flight on the member: its range and its completion. */
export interface InFlight {
  start: number
  end: number
  done: Promise<void>
}

export class WriteOrder {
  private readonly inFlight = new Set<InFlight>()

  /** Runs `write` once every overlapping write issued before it has completed. */
  run(offset: number, length: number, write: () => Promise<void>): Promise<void> {
    const entry = this.begin(offset, length, write)
    const p = entry.done
    const remove = () => this.end(entry)
    p.then(remove, remove)
    return p
  }

  /**
   * {@link run} for a caller that reacts to the write's completion itself, with no
   * promise of the order's own: the write is issued now or, if it overlaps writes in
   * flight, once they completed; the returned entry's `done` settles with it. The
   * caller must call {@link end} with the entry as soon as `done` settles, before
   * anything else reacts to it.
   */
  begin(offset: number, length: number, write: () => Promise<void>): InFlight {
    let done: Promise<void>
    if (this.anyOverlapping(offset, length)) done = Promise.allSettled(this.overlapping(offset, length)).then(write)
    else {
      try {
        done = write()
      } catch (e) {
        // A member that throws instead of rejecting: the same as a rejection (as when the write waited).
        done = Promise.reject(e)
      }
    }
    const entry: InFlight = { start: offset, end: offset + length, done }
    this.inFlight.add(entry)
    return entry
  }

  /** The write of `entry` (from {@link begin}) settled. */
  end(entry: InFlight): void {
    this.inFlight.delete(entry)
  }

  private anyOverlapping(offset: number, length: number): boolean {
    const end = offset + length
    for (const w of this.inFlight) if (w.start < end && offset < w.end) return true
    return false
  }

  /** Completions of the writes in flight that overlap the range. */
  overlapping(offset: number, length: number): Promise<unknown>[] {
    const end = offset + length
    const out: Promise<unknown>[] = []
    for (const w of this.inFlight) if (w.start < end && offset < w.end) out.push(w.done)
    return out
  }

  /** Resolves once no write issued so far overlaps the range (successful or not). */
  async drained(offset: number, length: number): Promise<void> {
    for (let ws = this.overlapping(offset, length); ws.length; ws = this.overlapping(offset, length)) {
      await Promise.allSettled(ws)
    }
  }

  /** Writes in flight now. */
  get size(): number {
    return this.inFlight.size
  }

  /** Resolves once no write is in flight. */
  async idle(): Promise<void> {
    while (this.inFlight.size) await Promise.allSettled([...this.inFlight].map((w) => w.done))
  }
}
