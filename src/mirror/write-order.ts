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
interface InFlight {
  start: number
  end: number
  done: Promise<unknown>
}

export class WriteOrder {
  private readonly inFlight = new Set<InFlight>()

  /** Runs `write` once every overlapping write issued before it has completed. */
  run(offset: number, length: number, write: () => Promise<void>): Promise<void> {
    const before = this.overlapping(offset, length)
    const p = (before.length ? Promise.allSettled(before).then(write) : write())
    const entry: InFlight = { start: offset, end: offset + length, done: p }
    this.inFlight.add(entry)
    const remove = () => void this.inFlight.delete(entry)
    p.then(remove, remove)
    return p
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
