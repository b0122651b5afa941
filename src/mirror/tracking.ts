/**
 * Changed-block tracking: named bitmaps beside the write-intent bitmap that record
 * every chunk written (write, discard, write-zeroes) since their last checkpoint, so
 * an incremental backup copies only what changed. Each is a bitmap file in md's
 * on-disk format (a {@link Bitmap}: same codec, pages, group commit and lock), with
 * the mirror's uuid and its chunk size or a power-of-two multiple of it.
 *
 * A tracking bitmap's life, and its bits':
 *
 * ```
 *   track(name, path) ── create the file (all clear), or adopt an existing one of this
 *     │                  mirror (uuid, size, chunk size checked; one whose event count
 *     │                  is older than the mirror's missed writes: loaded all set) ──
 *     │                  writes in flight get their bits, durably ── recorded in the
 *     ▼                  metadata ─► tracking
 *   tracking ── mirror close ─► closed, still recorded ── mirror open ─► tracking
 *     │ ▲
 *     │ └── checkpoint(name): the bits of chunks with no write in flight cleared, in
 *     │     one synchronous step; resolves with the ranges it cleared
 *     └── untrack(name) ── dropped from the metadata, the event count bumped (a later
 *         adoption of the file finds it stale: all set) ── its writes in flight end ──
 *         file closed, kept ─► gone
 *
 *   bit:  clear ── a write, discard or write-zeroes starts on the chunk ──► set
 *              (on stable storage before the data write is issued)
 *         set ── checkpoint, no write in flight on the chunk ──► clear
 *         set ── checkpoint, a write in flight on the chunk ──► set (stays)
 * ```
 *
 * Invariants:
 * - Every chunk written since the last checkpoint (or since track) has its bit set
 *   on stable storage, from before its data write was issued until the next
 *   checkpoint that finds no write in flight on it. Only a checkpoint clears: a
 *   tracking bitmap is kept "degraded" (`Bitmap.degraded`), so its daemon never clears
 *   a bit, and its counters say which chunks have writes in flight.
 * - A write in flight at a checkpoint keeps its bits: it may land after the backup
 *   read the chunk, so the next round copies the chunk again.
 * - Crash: nothing clears a bit but a checkpoint, and a checkpoint marks the file
 *   STALE before any cleared bit reaches the disk and unmarks it last; a stale file,
 *   or one whose event count is older than the mirror's (it missed writes: it was
 *   untracked, or kicked by a failed write), is loaded with every bit set. So after a
 *   crash every chunk that may have been written since the last checkpoint that
 *   ended on disk is set. A checkpoint that ended on disk but whose caller never got
 *   its ranges (a crash in between) cannot be told from one that did: a caller whose
 *   checkpoint did not resolve takes the next backup in full.
 * - Each in-flight write carries the list of tracking bitmaps it started on
 *   ({@link TrackedWrite}) and ends on exactly those: a bitmap tracked or untracked
 *   meanwhile never sees an unmatched end. Track joins the writes already in flight.
 *
 * The bits start in parallel with the write-intent bits (the data path awaits both),
 * so a write whose bits are already set waits for no I/O. The metadata lists the
 * tracking bitmaps ({@link TrackingRecord}); a reopened mirror opens and resumes them,
 * and fails to open if one cannot be opened (restore the file, or remove its entry
 * from the metadata: the next backup is then a full one).
 *
 * @module
 */
import { resolve } from 'node:path'
import { Bitmap, type ByteRange } from '../bitmap/bitmap'
import { MdBitmapError, toMdBitmapError } from '../errors'
import { statPath } from '../io/files'
import type { MirrorMetadata, TrackingRecord } from './metadata'
import type { MirrorState } from './state'

export type { TrackingRecord }

/** Options of {@link Mirror.track}. */
export interface TrackOptions {
  /** The tracking bitmap file: created if it does not exist, else adopted (it must be this mirror's). */
  path: string
  /** Bytes of data per bit: the mirror's chunk size (the default) or a power-of-two multiple of it. */
  chunkSize?: number
}

/** A tracking bitmap as {@link Mirror.tracked} reports it. */
export interface TrackedBitmapInfo extends TrackingRecord {
  /** Bytes of data per bit. */
  chunkSize: number
  /** Chunks whose bits are set: changed since the last checkpoint (or in flight). */
  dirtyChunks: number
}

/** How tracking bitmaps are opened: the mirror's own choices for its bitmap. */
export interface TrackingOpenOptions {
  /** `'file'` (default) or `'device'`, as the write-intent bitmap. */
  mode?: 'file' | 'device'
  /** Allow a filesystem that does not survive a reboot (tmpfs). */
  allowVolatile?: boolean
  /** How long an open waits for a lock still held for an exited owner (`Bitmap.open`'s `lockWaitMs`). */
  lockWaitMs?: number
}

/** Where tracking reports what no caller hears: a tracking bitmap's failed write. */
export type TrackingErrorSink = (error: MdBitmapError) => void

/** A name QEMU's tools can ask for: letters, digits, `.`, `_`, `-`; at most 128. */
const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/

/** One write, discard or write-zeroes in flight, and the tracking bitmaps it started on. */
export class TrackedWrite {
  /** The tracking bitmaps this write started on, and ends on. */
  readonly bitmaps: Bitmap[] = []
  /**
   * Resolves once every bit of this write is on stable storage, with the error if one
   * could not be set (never rejects: it is awaited after the write-intent bits).
   * Undefined: nothing is tracked.
   */
  durable: Promise<MdBitmapError | undefined> | undefined
  /** Called once the write ended (untrack waits for the writes that started on its bitmap). */
  ended: (() => void) | undefined
  constructor(
    readonly offset: number,
    readonly length: number,
  ) {}
}

/** The tracking bitmaps of one mirror (see the module comment). */
export class Tracking {
  private readonly bitmaps = new Map<string, Bitmap>()
  private readonly inFlight = new Set<TrackedWrite>()
  /** The checkpoint, track or untrack running per name: they run one at a time. */
  private readonly busy = new Map<string, Promise<unknown>>()
  private closed = false

  private constructor(
    private readonly meta: MirrorMetadata,
    private readonly options: TrackingOpenOptions,
  ) {}

  /** Opens the tracking bitmaps the metadata lists (none for a new mirror); on failure closes those opened. */
  static async open(meta: MirrorMetadata, options: TrackingOpenOptions): Promise<Tracking> {
    const tracking = new Tracking(meta, options)
    try {
      for (const r of meta.tracking ?? []) tracking.bitmaps.set(r.name, await tracking.openFile(r.name, r.path, undefined))
    } catch (e) {
      await tracking.close().catch(() => {})
      throw e
    }
    return tracking
  }

  /** Reports a tracking bitmap's failed write (set by the mirror at start). */
  onError: TrackingErrorSink = () => {}

  // -- the data path's hooks ------------------------------------------------------

  /**
   * A write, discard or write-zeroes of `[offset, offset + length)` starts: its bits
   * are set in every tracking bitmap (counted in flight at once); `durable` resolves
   * once they are on stable storage. Every startWrite is matched by {@link endWrite}.
   */
  startWrite(offset: number, length: number): TrackedWrite {
    const w = new TrackedWrite(offset, length)
    this.inFlight.add(w)
    if (this.bitmaps.size > 0) {
      const durable: Promise<void>[] = []
      for (const b of this.bitmaps.values()) durable.push(this.join(w, b))
      w.durable = Promise.all(durable).then(
        () => undefined,
        (e) => toMdBitmapError(e),
      )
    }
    return w
  }

  /** The write started by {@link startWrite} completed on every member (or failed). */
  endWrite(w: TrackedWrite): void {
    this.inFlight.delete(w)
    for (const b of w.bitmaps.splice(0)) {
      try {
        b.endWrite(w.offset, w.length)
      } catch (e) {
        this.onError(toMdBitmapError(e, { context: `tracking bitmap ${b.path}` }))
      }
    }
    w.ended?.()
  }

  /** Starts `w` on `b`: counted at once, durable when the promise resolves. */
  private join(w: TrackedWrite, b: Bitmap): Promise<void> {
    const started = b.startWrite(w.offset, w.length)
    w.bitmaps.push(b)
    return started.catch((e) => {
      // Not started: nothing to end on it.
      const i = w.bitmaps.indexOf(b)
      if (i >= 0) w.bitmaps.splice(i, 1)
      throw toMdBitmapError(e, { context: `tracking bitmap ${b.path}` })
    })
  }

  // -- track, checkpoint, untrack -------------------------------------------------

  /** The tracking bitmaps, in the order they were tracked. */
  list(): TrackedBitmapInfo[] {
    return (this.meta.tracking ?? []).flatMap((r) => {
      const b = this.bitmaps.get(r.name)
      return b ? [{ name: r.name, path: r.path, chunkSize: b.chunkSize, dirtyChunks: b.stats().dirty }] : []
    })
  }

  /** The ranges whose bits are set in tracking bitmap `name`: what changed since its last checkpoint. */
  changes(name: string): ByteRange[] {
    return this.get(name).dirtyChunks()
  }

  /** Starts tracking under `name` (see {@link Mirror.track}); `persist` records the metadata. */
  track(name: string, o: TrackOptions, persist: () => Promise<void>): Promise<TrackedBitmapInfo> {
    return this.serialized(name, async () => {
      this.checkOpen('track')
      if (typeof name !== 'string' || !NAME.test(name)) {
        throw new MdBitmapError('EINVAL', `tracking name ${JSON.stringify(name)}: 1 to 128 letters, digits, ".", "_" or "-", starting with a letter or digit`)
      }
      if (!o || typeof o.path !== 'string' || !o.path) throw new MdBitmapError('EINVAL', `track ${name}: a path for the tracking bitmap file is needed`)
      const path = resolve(o.path)
      if (this.bitmaps.has(name)) throw new MdBitmapError('ETRACK_EXISTS', `a tracking bitmap named "${name}" exists already (${this.recordOf(name).path}); untrack it first, or pick another name`)
      const same = (this.meta.tracking ?? []).find((r) => r.path === path)
      if (same || path === this.meta.bitmap) {
        throw new MdBitmapError('ETRACK_EXISTS', `${path} is already ${same ? `the tracking bitmap "${same.name}"` : "the mirror's write-intent bitmap"}; give the tracking bitmap a file of its own`)
      }
      const b = await this.openFile(name, path, o.chunkSize)
      try {
        await b.setEvents(this.meta.events)
        // The writes already in flight may land after a backup read their chunks.
        const durable = [...this.inFlight].map((w) => this.join(w, b).catch(() => {}))
        this.bitmaps.set(name, b)
        await Promise.all(durable)
        this.meta.tracking = [...(this.meta.tracking ?? []), { name, path }]
        await persist()
      } catch (e) {
        await this.drop(name, b)
        this.meta.tracking = (this.meta.tracking ?? []).filter((r) => r.name !== name)
        throw e
      }
      return this.list().find((i) => i.name === name)!
    })
  }

  /** Clears tracking bitmap `name` but for writes in flight; resolves with the ranges cleared (see {@link Mirror.checkpoint}). */
  checkpoint(name: string): Promise<ByteRange[]> {
    return this.serialized(name, async () => {
      this.checkOpen('checkpoint')
      return this.get(name).clearIdle()
    })
  }

  /** Stops tracking `name` (see {@link Mirror.untrack}); `persist` records the metadata with a bumped event count. */
  untrack(name: string, persist: () => Promise<void>): Promise<TrackingRecord> {
    return this.serialized(name, async () => {
      this.checkOpen('untrack')
      const b = this.get(name)
      const record = this.recordOf(name)
      this.bitmaps.delete(name)
      this.meta.tracking = (this.meta.tracking ?? []).filter((r) => r.name !== name)
      // A newer event count than the file's: adopted again later, it is taken as stale.
      this.meta.events++
      try {
        await persist()
      } finally {
        await this.drop(name, b)
      }
      return record
    })
  }

  /** Records the mirror's event count in every tracking bitmap (before the metadata: see `state.ts`). */
  async setEvents(events: bigint): Promise<void> {
    if (this.closed) return
    await Promise.all([...this.bitmaps.values()].filter((b) => !b.kicked).map((b) => b.setEvents(events).catch(() => {})))
  }

  /** Closes every tracking bitmap (the mirror's writes have all ended); rejects with the first error. */
  async close(): Promise<void> {
    if (this.closed) return
    this.closed = true
    await Promise.allSettled(this.busy.values())
    const errors: unknown[] = []
    for (const b of this.bitmaps.values()) await b.close().catch((e) => errors.push(e))
    this.bitmaps.clear()
    if (errors.length) throw toMdBitmapError(errors[0])
  }

  // -- helpers --------------------------------------------------------------------

  private get(name: string): Bitmap {
    const b = this.bitmaps.get(name)
    if (!b) {
      const names = [...this.bitmaps.keys()]
      throw new MdBitmapError('ETRACK_UNKNOWN', `no tracking bitmap named "${name}" (${names.length ? `tracked: ${names.join(', ')}` : 'none is tracked'}); start one with track`)
    }
    return b
  }

  private recordOf(name: string): TrackingRecord {
    return (this.meta.tracking ?? []).find((r) => r.name === name) ?? { name, path: this.get(name).path }
  }

  private checkOpen(what: string): void {
    if (this.closed) throw new MdBitmapError('ECLOSED', `${what}: the mirror is closed`)
  }

  /** Runs `run` after the track, checkpoint or untrack of `name` running now. */
  private serialized<T>(name: string, run: () => Promise<T>): Promise<T> {
    const p = (this.busy.get(name) ?? Promise.resolve()).then(run, run)
    const tail = p.catch(() => {})
    this.busy.set(name, tail)
    void tail.then(() => {
      if (this.busy.get(name) === tail) this.busy.delete(name)
    })
    return p
  }

  /**
   * Opens (or creates) the tracking bitmap file of `name` at `path`, checked against
   * the mirror: uuid (`EUUID`), size and chunk size (`ETRACK_GEOMETRY`). A file older
   * than the mirror (missed writes) or STALE is loaded with every bit set.
   */
  private async openFile(name: string, path: string, chunkSize: number | undefined): Promise<Bitmap> {
    const { meta } = this
    const cs = chunkSize ?? meta.chunkSize
    if (!Number.isSafeInteger(cs) || cs < meta.chunkSize || cs % meta.chunkSize !== 0 || (cs & (cs - 1)) !== 0) {
      throw new MdBitmapError('ETRACK_GEOMETRY', `track ${name}: chunk size ${cs} must be the mirror's (${meta.chunkSize}) or a power-of-two multiple of it`)
    }
    const context = `tracking bitmap "${name}" (${path})`
    let b: Bitmap
    try {
      b =
        (await statPath(path)) === null
          ? await Bitmap.create(path, { size: meta.size, chunkSize: cs, uuid: meta.uuid, mode: this.options.mode, allowVolatile: this.options.allowVolatile })
          : await Bitmap.open(path, { uuid: meta.uuid, events: meta.events, mode: this.options.mode, allowVolatile: this.options.allowVolatile, lockWaitMs: this.options.lockWaitMs })
    } catch (e) {
      throw toMdBitmapError(e, { context })
    }
    const fits = b.size === meta.size && (chunkSize === undefined ? b.chunkSize % meta.chunkSize === 0 && b.chunkSize >= meta.chunkSize : b.chunkSize === chunkSize)
    if (!fits) {
      await b.close().catch(() => {})
      throw new MdBitmapError(
        'ETRACK_GEOMETRY',
        `${context} covers ${b.size} bytes in ${b.chunkSize}-byte chunks; this mirror needs ${meta.size} bytes in ${chunkSize ? `${chunkSize}-byte` : `${meta.chunkSize}-byte (or a power-of-two multiple)`} chunks`,
      )
    }
    // Only a checkpoint clears its bits, and its counters count the writes in flight.
    b.degraded = true
    b.on('error', (e: MdBitmapError) => this.onError(toMdBitmapError(e, { context })))
    return b
  }

  /** Closes tracking bitmap `b` once every write that started on it ended. */
  private async drop(name: string, b: Bitmap): Promise<void> {
    if (this.bitmaps.get(name) === b) this.bitmaps.delete(name)
    const pending = [...this.inFlight].filter((w) => w.bitmaps.includes(b))
    await Promise.all(
      pending.map(
        (w) =>
          new Promise<void>((r) => {
            const before = w.ended
            w.ended = () => {
              before?.()
              r()
            }
          }),
      ),
    )
    await b.close().catch((e) => this.onError(toMdBitmapError(e, { context: `tracking bitmap "${name}" (${b.path})` })))
  }
}

/**
 * The bits of a write, discard or write-zeroes, before its data is issued: the
 * write-intent bits and the tracking bits started together, both durable when it
 * resolves (a range whose bits are all set and durable is started at once, with no
 * promise, when nothing is tracked). Gives the
 * write's {@link TrackedWrite}, which the caller ends ({@link Tracking.endWrite})
 * where it ends the write-intent bitmap's write; on failure nothing stays started.
 */
export function startWriteBits(state: Pick<MirrorState, 'bitmap' | 'tracking'>, offset: number, length: number, behind: boolean): TrackedWrite | Promise<TrackedWrite> {
  const tracked = state.tracking.startWrite(offset, length)
  let started: boolean
  try {
    // Counted at once when the bits are already set and durable (no I/O to wait for).
    started = !state.bitmap || state.bitmap.tryStartWrite(offset, length, behind)
  } catch (e) {
    state.tracking.endWrite(tracked)
    throw e
  }
  if (started && tracked.durable === undefined) return tracked
  return bitsDurable(state, tracked, started, behind)
}

/** The rest of {@link startWriteBits} when some bit must be waited for. */
async function bitsDurable(state: Pick<MirrorState, 'bitmap' | 'tracking'>, tracked: TrackedWrite, started: boolean, behind: boolean): Promise<TrackedWrite> {
  const { offset, length } = tracked
  try {
    if (!started) await state.bitmap!.startWrite(offset, length, behind)
  } catch (e) {
    state.tracking.endWrite(tracked)
    throw e
  }
  const err = await tracked.durable
  if (err) {
    state.bitmap?.endWrite(offset, length, false, behind)
    state.tracking.endWrite(tracked)
    throw err
  }
  return tracked
}
