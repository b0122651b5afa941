/**
 * The per-chunk write counters of a write-intent bitmap, and their state machine.
 *
 * Each chunk has a 16-bit counter:
 *
 * ```
 *   bit 15   NEEDED   the chunk must be copied by the next resync
 *   bit 14   RESYNC   a resync of the chunk is in progress
 *   bits 0-13 count   0 .. COUNTER_MAX (0x3fff)
 * ```
 *
 * The count is not a plain count of writes. 0 and 1 are the two idle states of a
 * chunk on its way to a clear bit, and a chunk in use always counts from 2:
 *
 * ```
 *                        startWrite (bit set in the image; page written before
 *                        the caller may issue data writes)
 *        +------------------------------------------------------+
 *        |                                                      v
 *   [0: bit clear] <--- daemon --- [1: bit set, idle] <--- daemon --- [2: bit set, idle]
 *        ^   bit cleared in the            |                          ^   |
 *        |   image, page written           | startWrite               |   | startWrite
 *        |   lazily (superblock first)     +------------> 3 <---------+   v
 *                                                         ^   ...   2 + n writers
 *                                              endWrite   |             in flight
 *                                                         +-------------+
 * ```
 *
 * - `startWrite`: count 0 → the bit must be set (the caller sets it in the page
 *   image and makes the page durable) and count becomes 2; count 1 → 2 (the bit is
 *   still set on disk, no I/O); then count += 1. At COUNTER_MAX the writer waits,
 *   the count never wraps.
 * - `endWrite`: count -= 1. A failed write, or any write while the mirror is
 *   degraded, sets NEEDED. When the whole counter is ≤ 2 the chunk becomes a
 *   candidate for clearing.
 * - Daemon pass: a candidate at 2 goes to 1; at 1 it goes to 0 and its bit is
 *   cleared. So a bit is cleared only after its chunk stayed idle through two passes,
 *   which spares a page write for chunks written again soon. Because the comparisons
 *   are on the whole 16-bit value, a chunk with NEEDED or RESYNC never decays, and the
 *   daemon clears nothing while the mirror is degraded.
 * - Load from disk: every set bit becomes 2 | NEEDED, so the next resync copies it.
 * - Clear idle (a changed-block tracking checkpoint, never the daemon): a chunk with
 *   no write in flight (count < 3) goes straight to 0 with its bit cleared, flags
 *   dropped; a chunk with writes in flight keeps its count and its bit.
 * - Sync: `startSync` answers whether a chunk must be copied (NEEDED or RESYNC); if
 *   NEEDED and not degraded it trades NEEDED for RESYNC. `endSync` drops RESYNC; an
 *   aborted sync puts NEEDED back; a completed one leaves the chunk a candidate.
 *
 * This module holds the counters only; {@link Bitmap} does the bits and the I/O.
 *
 * @module
 */
import { MdBitmapError } from '../errors'

/** Counter bit: the chunk must be resynced. */
export const NEEDED = 0x8000
/** Counter bit: a resync of the chunk is in progress. */
export const RESYNC = 0x4000
/** The largest count; a writer waits rather than wrap past it. */
export const COUNTER_MAX = 0x3fff

/** What {@link Counters.startWrite} asks of its caller. */
export type StartResult =
  /** Counted; the chunk's bit is already set (on disk, or on its way there). */
  | 'counted'
  /** Counted, and the chunk was clean: set its bit and make the page durable. */
  | 'set-bit'
  /** The chunk is at COUNTER_MAX: nothing changed, wait for an endWrite and retry. */
  | 'full'

/** What a daemon pass did to one chunk. */
export type DaemonResult = 'none' | 'decayed' | 'cleared'

export class Counters {
  /** One counter per chunk. */
  private readonly values: Uint16Array
  /** Chunks whose counter is 1 or 2 with no flag: what the daemon looks at. */
  private readonly candidates = new Set<number>()

  constructor(readonly chunks: number) {
    this.values = new Uint16Array(chunks)
  }

  get(chunk: number): number {
    return this.values[chunk]
  }

  count(chunk: number): number {
    return this.values[chunk] & COUNTER_MAX
  }

  startWrite(chunk: number): StartResult {
    const v = this.values[chunk]
    if ((v & COUNTER_MAX) === COUNTER_MAX) return 'full'
    let result: StartResult = 'counted'
    let next = v
    if (v === 0) {
      result = 'set-bit'
      next = 2
    } else if (v === 1) {
      next = 2
    }
    this.values[chunk] = next + 1
    this.candidates.delete(chunk)
    return result
  }

  /** Returns whether the chunk was at COUNTER_MAX (so waiting writers may retry). */
  endWrite(chunk: number, success: boolean, degraded: boolean): boolean {
    let v = this.values[chunk]
    if ((v & COUNTER_MAX) < 3) {
      // Below 3 nothing is in flight: 0-2 are the idle states.
      throw new MdBitmapError('EINVAL', `endWrite on chunk ${chunk} without a matching startWrite`)
    }
    const wasFull = (v & COUNTER_MAX) === COUNTER_MAX
    if (!success || degraded) v |= NEEDED
    v -= 1
    this.values[chunk] = v
    if (v <= 2) this.candidates.add(chunk)
    return wasFull
  }

  /**
   * One daemon step for one chunk. `mayClear` is false while the mirror is degraded
   * or a superblock update must reach the disk first; then a chunk at 1 waits.
   */
  daemonStep(chunk: number, mayClear: boolean): DaemonResult {
    const v = this.values[chunk]
    if (v === 1 && mayClear) {
      this.values[chunk] = 0
      this.candidates.delete(chunk)
      return 'cleared'
    }
    if (v === 2) {
      this.values[chunk] = 1
      return 'decayed'
    }
    if (v === 0 || v > 2) this.candidates.delete(chunk)
    return 'none'
  }

  get hasCandidates(): boolean {
    return this.candidates.size > 0
  }

  /** The chunks a daemon pass should look at, in order. */
  candidateChunks(): number[] {
    return [...this.candidates].sort((a, b) => a - b)
  }

  /** A chunk whose bit is set on disk at load: it must be resynced. */
  loadDirty(chunk: number): void {
    this.values[chunk] = 2 | NEEDED
    this.candidates.delete(chunk)
  }

  /**
   * A checkpoint's clear: a chunk with no write in flight goes to 0 (flags dropped)
   * and true is returned (its bit must be cleared); a chunk with writes in flight is
   * left alone.
   */
  clearIdle(chunk: number): boolean {
    if ((this.values[chunk] & COUNTER_MAX) >= 3) return false
    this.values[chunk] = 0
    this.candidates.delete(chunk)
    return true
  }

  /** Marks a chunk for resync (its bit must be, or be made, set). */
  markNeeded(chunk: number): void {
    const v = this.values[chunk]
    this.values[chunk] = ((v & COUNTER_MAX) < 2 ? 2 | (v & ~COUNTER_MAX) : v) | NEEDED
    this.candidates.delete(chunk)
  }

  /** Whether the chunk needs copying; if NEEDED (and not degraded) it becomes RESYNC. */
  startSync(chunk: number, degraded: boolean): boolean {
    const v = this.values[chunk]
    if (v & RESYNC) return true
    if (v & NEEDED) {
      if (!degraded) this.values[chunk] = (v | RESYNC) & ~NEEDED
      return true
    }
    return false
  }

  /** Ends a chunk's resync: aborted → NEEDED again; completed → a candidate for clearing. */
  endSync(chunk: number, aborted: boolean): void {
    let v = this.values[chunk]
    if (!(v & RESYNC)) return
    v &= ~RESYNC
    if (aborted && !(v & NEEDED)) v |= NEEDED
    this.values[chunk] = v
    if (v <= 2) this.candidates.add(chunk)
  }
}
