/**
 * Write ordering on one member: a write that overlaps writes still in flight on that
 * member is issued only after they complete. A write-mostly member may still be
 * working through write-behind writes the caller has long had acknowledged; a newer
 * write to the same range must not overtake them, or the older data would win.
 *
 * The in-flight ranges also tell reads where a member may still hold older data.
 *
 * Finding the overlapping writes costs what they cost, not what every write in flight
 * costs: the writes in flight are indexed by the 64 KiB granules their ranges touch, so
 * a small write looks only at the writes in its own granules. A write that touches more
 * than 16 granules (about 1 MiB) is kept apart, in a short list that every lookup checks;
 * a lookup for such a range looks at every write in flight.
 *
 * ```
 *   begin(range) ── an overlapping write in flight? ─ no ──► issued now
 *     │                                                yes ─► issued once they all settled
 *     └─ indexed: in each granule of its range (or with the wide ones)
 *   end(entry)   ── the write settled: out of the index
 * ```
 *
 * @module
 */
/** One write in flight on the member: its range and its completion. */
export interface InFlight {
  start: number
  end: number
  done: Promise<void>
}

/** Bytes per granule of the index. */
const GRANULE = 64 * 1024
/** A range touching more granules than this is "wide": kept in a list, not in granules. */
const MAX_SPAN = 16

function firstGranule(start: number): number {
  return Math.floor(start / GRANULE)
}

/** The last granule a range touches; an empty range is kept under the granule of its start. */
function lastGranule(start: number, end: number): number {
  return end > start ? Math.floor((end - 1) / GRANULE) : Math.floor(start / GRANULE)
}

export class WriteOrder {
  private readonly inFlight = new Set<InFlight>()
  /** The writes in flight that are not wide, under each granule their range touches. */
  private readonly byGranule = new Map<number, InFlight[]>()
  /** The writes in flight whose range touches more than MAX_SPAN granules. */
  private readonly wide = new Set<InFlight>()

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
    if (this.scan(offset, length)) done = Promise.allSettled(this.overlapping(offset, length)).then(write)
    else {
      try {
        done = write()
      } catch (e) {
        // A member that throws instead of rejecting: the same as a rejection (as when the write waited).
        done = Promise.reject(e)
      }
    }
    const entry: InFlight = { start: offset, end: offset + length, done }
    this.add(entry)
    return entry
  }

  /** The write of `entry` (from {@link begin}) settled. */
  end(entry: InFlight): void {
    if (!this.inFlight.delete(entry)) return
    if (this.wide.delete(entry)) return
    for (let g = firstGranule(entry.start), last = lastGranule(entry.start, entry.end); g <= last; g++) {
      const list = this.byGranule.get(g)!
      if (list.length === 1) {
        this.byGranule.delete(g)
        continue
      }
      const i = list.indexOf(entry)
      list[i] = list[list.length - 1]
      list.pop()
    }
  }

  private add(entry: InFlight): void {
    this.inFlight.add(entry)
    const first = firstGranule(entry.start)
    const last = lastGranule(entry.start, entry.end)
    if (last - first >= MAX_SPAN) {
      this.wide.add(entry)
      return
    }
    for (let g = first; g <= last; g++) {
      const list = this.byGranule.get(g)
      if (list) list.push(entry)
      else this.byGranule.set(g, [entry])
    }
  }

  /** Completions of the writes in flight that overlap the range. */
  overlapping(offset: number, length: number): Promise<unknown>[] {
    const out: Promise<unknown>[] = []
    this.scan(offset, length, out)
    return out
  }

  /**
   * The writes in flight that overlap the range, through the index: their completions
   * pushed to `out`, each once; without `out`, whether there is one (the first found ends it).
   */
  private scan(offset: number, length: number, out?: Promise<unknown>[]): boolean {
    if (this.inFlight.size === 0) return false
    const end = offset + length
    const first = firstGranule(offset)
    const last = lastGranule(offset, end)
    if (last - first >= MAX_SPAN) return take(this.inFlight, offset, end, out)
    let found = false
    for (let g = first; g <= last; g++) {
      const list = this.byGranule.get(g)
      if (!list) continue
      for (const w of list) {
        // A write under several of these granules is taken once: at the first granule both ranges touch.
        if (w.start < end && offset < w.end && g === Math.max(first, firstGranule(w.start))) {
          if (!out) return true
          out.push(w.done)
          found = true
        }
      }
    }
    return take(this.wide, offset, end, out) || found
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

/** The scan of a plain list (the wide writes, or all): every write of `ws` overlapping `[offset, end)`. */
function take(ws: Iterable<InFlight>, offset: number, end: number, out: Promise<unknown>[] | undefined): boolean {
  let found = false
  for (const w of ws) {
    if (w.start < end && offset < w.end) {
      if (!out) return true
      out.push(w.done)
      found = true
    }
  }
  return found
}
