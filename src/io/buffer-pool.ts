/**
 * A pool of aligned buffers reused instead of allocating (and zero-filling) a fresh one
 * per use: the mirror's write-behind copies (one pool per mirror, its budget
 * `behindMemoryLimit`), a resync's pieces (one pool per run), and the NBD server's
 * request buffers (one pool per server).
 *
 * Size classes are exact byte lengths (a write of 4 KiB and one of 1 MiB never share a
 * buffer), so a buffer lent for `len` bytes holds `len` bytes, no more: the pool's
 * memory is counted in the same bytes as the caller's budget. Two counts: `lent` (bytes
 * of buffers out with a holder) and `free` (bytes on the free lists).
 *
 * ```
 *   a buffer:   (allocated, not zeroed) ──take──► lent ──give──► free ──take──► lent …
 *                                                   │              │
 *                                                   │              └─ dropped (to the GC)
 *                                                   │                 when a take needs room
 *                                                   └─give, no room─► dropped
 *
 *   take(len, align)  reserves len against the budget and lends a buffer of len bytes:
 *                     lent += len; the free list of len pops one if it has one
 *                     (free −= len), else a new buffer is allocated, not zeroed (the
 *                     holder overwrites it at once; one of 1 MiB or more from huge
 *                     pages, several to a 2 MiB page when len divides it, the others
 *                     put on the free list: free += their bytes; else the whole 2 MiB
 *                     pages of its own len bytes), and free buffers are
 *                     dropped, other lengths first, until lent + free ≤ budget (or
 *                     none is left)
 *   give(buf)         the holder is done with it: lent −= len; back on its free list
 *                     (free += len) if lent + free + len ≤ budget, else dropped. A buffer
 *                     that is not lent (given twice, or never taken here) is ignored.
 * ```
 *
 * Invariants:
 * - `lent + free ≤ max(budget, lent)`: the pool keeps no more than the budget, and it
 *   keeps nothing once the lent buffers alone reach it. Admission is the caller's:
 *   the data path checks a behind write's copy against `behindMemoryLimit` before it
 *   takes one (and falls back to a synchronous write when it does not fit, as it
 *   always did), so `lent` is the `behindBytes` that `stats()` reports.
 * - A buffer is lent to one holder at a time, and the holder gives it back only once
 *   no I/O references it: after every member write (and the read) that uses it has
 *   settled, whether it succeeded or failed. So the pool never hands out memory that an
 *   in-flight write may still be reading.
 * - Buffers are aligned to the largest alignment asked of the pool; when a member with
 *   a larger alignment joins, every free buffer of the smaller one is dropped, and a
 *   lent one is dropped when it is given back.
 *
 * @module
 */
import { HUGE_PAGE, allocAlignedUninit, allocHugePageBuffersUninit } from './aligned'

/**
 * Buffers this long or longer come from huge pages ({@link allocHugePageBuffersUninit}): a
 * read or write of one reaches the device as one segment. Those of up to 2 MiB are
 * carved several to a huge page (the ones not lent at once wait on the free list, as
 * if given back).
 */
const HUGE_MIN = 1 << 20

export class BufferPool {
  private readonly freeLists = new Map<number, Uint8Array[]>()
  /** The alignment each lent buffer was allocated with. */
  private readonly lentAlign = new Map<Uint8Array, number>()
  private align = 512
  private lent = 0
  private free = 0

  constructor(
    /** Most bytes the pool keeps (lent and free together; see the invariants at the top). */
    readonly budget: number,
  ) {}

  /** Lends a buffer of exactly `len` bytes aligned to `align`; its bytes are whatever they were (overwrite them). */
  take(len: number, align: number): Uint8Array {
    if (align > this.align) {
      this.align = align
      this.freeLists.clear()
      this.free = 0
    }
    this.lent += len
    let buf = this.freeLists.get(len)?.pop()
    if (buf) {
      this.free -= len
    } else {
      buf = this.allocate(len)
      this.dropFree((size) => size !== len)
      this.dropFree(() => true)
    }
    this.lentAlign.set(buf, this.align)
    return buf
  }

  /** Takes back a buffer from {@link take} once no I/O references it any more. */
  give(buf: Uint8Array): void {
    const align = this.lentAlign.get(buf)
    if (align === undefined) return
    this.lentAlign.delete(buf)
    const len = buf.length
    this.lent -= len
    if (align < this.align || this.lent + this.free + len > this.budget) return
    const list = this.freeLists.get(len)
    if (list) list.push(buf)
    else this.freeLists.set(len, [buf])
    this.free += len
  }

  /** Bytes lent now and bytes kept free (for tests and benchmarks). */
  get bytes(): { lent: number; free: number } {
    return { lent: this.lent, free: this.free }
  }

  /**
   * A new buffer of `len` bytes. From huge pages when it is large: one huge page holds
   * `HUGE_PAGE / len` buffers of a length that divides it, and those not lent now go on
   * the free list (counted as free, so the budget still holds them to account). A
   * length that does not divide 2 MiB gets memory of its own length, 2 MiB-aligned: its
   * whole 2 MiB pages huge, the rest small (never a huge page more than the budget counts).
   */
  private allocate(len: number): Uint8Array {
    if (len < HUGE_MIN || this.align > HUGE_PAGE) return allocAlignedUninit(len, this.align)
    const divides = HUGE_PAGE % len === 0
    const [buf, ...spare] = allocHugePageBuffersUninit(len, divides ? HUGE_PAGE / len : 1, this.align, divides)
    // Only called when the free list of len is empty: the spare buffers are all of it.
    if (spare.length) {
      this.freeLists.set(len, spare)
      this.free += spare.length * len
    }
    return buf
  }

  /** Drops free buffers of the sizes `which` picks until lent + free is within the budget. */
  private dropFree(which: (size: number) => boolean): void {
    for (const [size, list] of this.freeLists) {
      if (this.lent + this.free <= this.budget) return
      if (!which(size)) continue
      while (list.length && this.lent + this.free > this.budget) {
        list.pop()
        this.free -= size
      }
      if (!list.length) this.freeLists.delete(size)
    }
  }
}
