/**
 * A write-intent bitmap in a file, in the on-disk format of Linux md: one bit per
 * chunk of the data it covers, set (durably) before any write to the chunk is issued,
 * cleared lazily once every write to it completed and it stayed idle.
 *
 * The counters' state machine is described in `counters.ts`, the daemon in
 * `daemon.ts`, the page attributes in `pages.ts`.
 *
 * @module
 */
import { EventEmitter } from 'node:events'
import { randomBytes } from 'node:crypto'
import { dirname } from 'node:path'
import { COUNTER_MAX, Counters, NEEDED, RESYNC } from './counters'
import { Daemon, type DaemonTarget } from './daemon'
import { MdBitmapError, toMdBitmapError } from '../errors'
import { PAGE_SIZE, PageImage } from './pages'
import { type IoEngine, type IoReaper, PageStore, type StoreMode } from '../io/page-store'
import { allocAligned } from '../io/aligned'
import { check } from '../io/file-check'
import { createWrittenFile, removeFile } from '../io/files'
import { extendWritten } from '../io/extend'
import { FileLock, liftImmutable } from '../io/lock'
import { mdArrayUsingBitmap } from '../io/md-arrays'
import { readFileStart } from '../io/uncached-read'
import { volatileFilesystem } from '../io/volatile'
import {
  SUPERBLOCK_SIZE,
  STATE_STALE,
  bitVersion,
  chunkCount,
  clearBit,
  decode,
  dirtyCount,
  encode,
  getBit,
  pagedFileSize,
  parseUuid,
  setBit,
  type Superblock,
} from './superblock'

/** Options of {@link Bitmap.create}. */
export interface BitmapCreateOptions {
  /** Bytes of data the bitmap covers: a positive multiple of 512. */
  size: number
  /** Bytes of data per bit: a power of two, at least 512. */
  chunkSize: number
  /** Seconds between daemon passes (1 to 86400). Default 5. */
  daemonSleep?: number
  /** Most write-behind writes outstanding at once (0 to 16383; 0 = off). Default 0. */
  writeBehind?: number
  /** The array's identity: 16 bytes or 32 hex digits. Default: random. */
  uuid?: Uint8Array | string
  /** `'file'` (default) or `'device'`; see {@link PageStore.open}. */
  mode?: 'file' | 'device'
  /** Allow a filesystem that does not survive a reboot (tmpfs). Default false. */
  allowVolatile?: boolean
  /** Replace an existing file. Default false: an existing file is an `EEXIST` error. */
  overwrite?: boolean
}

/** Options of {@link Bitmap.open}. */
export interface BitmapOpenOptions {
  /** `'file'` (default) or `'device'`; see {@link PageStore.open}. */
  mode?: 'file' | 'device'
  /** The uuid the bitmap must carry (`EUUID` otherwise). */
  uuid?: Uint8Array | string
  /**
   * The mirror's event count. A bitmap whose events are older is stale: it missed
   * changes, so every chunk is marked for resync.
   */
  events?: bigint
  /** Allow a filesystem that does not survive a reboot (tmpfs). Default false. */
  allowVolatile?: boolean
  /**
   * Milliseconds to wait for a lock still held for a process that has exited: the
   * kernel releases a killed owner's lock once its writes in flight have landed, which
   * on a slow or throttled device takes seconds. Default 2000; past it the open fails
   * `ELOCKED`. A lock held by a live process fails `ELOCKED` at once, whatever this says.
   */
  lockWaitMs?: number
}

/** A byte range of the data. */
export interface ByteRange {
  /** Where the range starts, in bytes from the start of the data. */
  offset: number
  /** Its length in bytes. */
  length: number
}

/** What {@link Bitmap.stats} reports. */
export interface BitmapStats {
  /** Chunks the bitmap covers: one bit each. */
  chunks: number
  /** Bytes of data per chunk. */
  chunkSize: number
  /** Chunks whose bit is set in the page image. */
  dirty: number
  /** Page writes issued since open. */
  pagesWritten: number
  /** Write-behind writes outstanding now. */
  behindWrites: number
  /** The most write-behind writes seen outstanding at once. */
  behindWritesHighWater: number
  /** The write-behind limit from the superblock (0 = write-behind off). */
  maxWriteBehind: number
  /** How the bitmap file is written: `'direct'`, `'buffered'` or `'device'`. */
  mode: StoreMode
  /** The I/O engine the bitmap's page writes use: `'uring'`, `'aio'` or `'threads'` ({@link PageStore.engine}). */
  engine: IoEngine
  /** Why that engine and not a better one (or that `MD_BITMAP_IO_ENGINE` forced it); null when it is the best. */
  engineReason: string | null
  /** Whether the kernel's completion work for them waits until the thread reaps ({@link PageStore.deferredCompletions}). */
  deferredCompletions: boolean
  /** How their completions reach the JavaScript thread: `'loop'` or `'thread'` ({@link PageStore.reaper}). */
  reaper: IoReaper
  /** Set once a write to the bitmap failed: the bitmap is no longer used. */
  kicked: boolean
  /** The superblock's event count. */
  events: bigint
  /** The event count when bits were last cleared. */
  eventsCleared: bigint
}

/**
 * What {@link Bitmap.open} had to do to a file before using it ({@link Bitmap.opened}).
 * Both happen only while the open holds the file's lock, so nobody else uses it.
 */
export interface BitmapOpenReport {
  /**
   * The file was left immutable by a device-mode writer that did not close (killed):
   * `'taken-over'` when this open is in device mode (it pins the file itself, and
   * unpins it at close), `'lifted'` in file mode (the flag is cleared). Null when the
   * file was not immutable.
   */
  pin: 'taken-over' | 'lifted' | null
  /**
   * The file was laid out by Linux md or mdadm (256 bytes plus the bits, not whole
   * pages) and was extended with zeros, written and synced, to whole pages before any
   * page write: `from` and `to` are its sizes in bytes. Null when it was whole pages.
   */
  extended: {
    /** The file's size as found, in bytes. */
    from: number
    /** Its size now: whole pages. */
    to: number
  } | null
}

/** The events a {@link Bitmap} emits, with the arguments their listeners get. */
export interface BitmapEvents {
  /**
   * A write to the bitmap failed: the bitmap is kicked (marked STALE, no longer used)
   * and a mirror goes on without it. Emitted once, on a later tick than the failed
   * write's completion (a listener that throws cannot unwind it), and only while an
   * `'error'` listener is attached; the error is kept in {@link Bitmap.error} and
   * `close()` rejects with it either way.
   */
  error: [error: MdBitmapError]
}

/**
 * What tests reach past the public API; see `testing.ts`.
 *
 * @internal
 */
export interface BitmapInternals {
  /** The counter of the chunk holding `offset` (count | RESYNC | NEEDED). */
  counter(offset: number): number
  /** Runs one daemon pass now (or joins the one running); resolves with how many chunks changed. */
  daemonPass(): Promise<number>
}

/**
 * The key of a bitmap's test access; see `testing.ts`.
 *
 * @internal
 */
export const bitmapInternals = Symbol('md-bitmap: Bitmap internals')

function volatileError(path: string, fsType: string): MdBitmapError {
  return new MdBitmapError(
    'EVOLATILE',
    `${path} is on ${fsType}, which does not survive a reboot: after a crash the bitmap would be gone and nothing would say which chunks to resync; put it on a disk filesystem (or pass allowVolatile: true for tests)`,
  )
}
const SECTOR = 512

/**
 * A write-intent bitmap file.
 *
 * Events: see {@link BitmapEvents} (`'error'`: a write to the bitmap failed; it has
 * been kicked).
 *
 * @example
 * ```ts
 * const bitmap = await Bitmap.create('/var/lib/vm/disk.bitmap', {
 *   size: 10 * 2 ** 30, chunkSize: 64 * 2 ** 20,
 * })
 * await bitmap.startWrite(offset, data.length)    // bits durable
 * await writeTheDataEverywhere(data, offset)
 * bitmap.endWrite(offset, data.length)
 * await bitmap.close()
 * ```
 */
export class Bitmap extends EventEmitter {
  private readonly counters: Counters
  private readonly pages: PageImage
  private readonly daemon: Daemon
  private readonly bits: Uint8Array
  private readonly bitVersion: 3 | 4
  private unplugging: Promise<void> | undefined
  private fullWaiters: (() => void)[] = []
  private syncCheckpoint = 0
  private closed = false
  /** events_cleared changed: the superblock must be written before any bit may be cleared. */
  private superblockDirty = false
  private _degraded = false
  private _error: MdBitmapError | undefined
  private _behind = 0
  private _behindHigh = 0
  /**
   * Called by the daemon before a pass that may clear bits; must not reject. A mirror
   * makes its members' completed writes durable here, so no bit is cleared over data
   * still in a volatile device cache.
   */
  beforeClear: (() => Promise<void>) | undefined

  private constructor(
    /** The bitmap file's path. */
    readonly path: string,
    private readonly store: PageStore,
    image: Uint8Array,
    private sb: Superblock,
    /** True when the bitmap was found stale at open: every chunk was marked for resync. */
    readonly wasStale: boolean,
    private readonly mirrorEvents: bigint | undefined,
    /** The exclusive lock on the file, held from open to close. */
    private readonly lock: FileLock,
    /** What the open had to do to the file first: lift a dead writer's pin, extend an mdadm-made file. */
    readonly opened: BitmapOpenReport,
  ) {
    super()
    this.bits = image.subarray(SUPERBLOCK_SIZE)
    this.bitVersion = bitVersion(sb)
    this.counters = new Counters(chunkCount(sb))
    this.pages = new PageImage(store, image, (e) => this.kick(e))
    this.daemon = new Daemon(this.daemonTarget(), (e) => this.kick(e))
  }

  /** Creates a new bitmap file, fully written (no holes, no unwritten extents), and opens it. */
  static async create(path: string, options: BitmapCreateOptions): Promise<Bitmap> {
    const { size, chunkSize } = options
    if (!Number.isSafeInteger(size) || size <= 0 || size % SECTOR !== 0) {
      throw new MdBitmapError('EINVAL', `size must be a positive multiple of 512 bytes, got ${size}`)
    }
    if (!options.allowVolatile) {
      const fsType = volatileFilesystem(dirname(path))
      if (fsType) throw volatileError(path, fsType)
    }
    const uuid = options.uuid === undefined ? randomBytes(16) : parseUuid(options.uuid)
    const header = encode({
      uuid,
      syncSize: size / SECTOR,
      chunkSize,
      daemonSleep: options.daemonSleep ?? 5,
      writeBehind: options.writeBehind ?? 0,
    })
    const file = new Uint8Array(pagedFileSize({ syncSize: size / SECTOR, chunkSize }, PAGE_SIZE))
    file.set(header)
    // Replacing a file rewrites it in place: not while someone holds it.
    const held = options.overwrite ? await lockIfExists(path) : undefined
    try {
      await createWrittenFile(path, file, { overwrite: options.overwrite })
    } catch (e) {
      held?.release()
      if ((e as MdBitmapError).code !== 'EEXIST') throw e
      throw new MdBitmapError('EEXIST', `${path} exists; open it with Bitmap.open, or pass overwrite: true to replace it`, { cause: e })
    }
    try {
      return await Bitmap.openHeld(path, { mode: options.mode, allowVolatile: options.allowVolatile }, held)
    } catch (e) {
      // Another open that took the file meanwhile owns it now.
      if ((e as MdBitmapError).code !== 'ELOCKED') await removeFile(path).catch(() => {})
      throw e
    }
  }

  /**
   * Opens an existing bitmap file. Every set bit is loaded as needing resync.
   *
   * One owner at a time: the open holds an exclusive lock on the file until
   * {@link Bitmap.close}; a second open, from another process or this one, fails at once
   * with `ELOCKED` naming the holder's pid (a holder that dies releases it). Holding the
   * lock, the open repairs what a dead holder or another tool left, and says so in
   * {@link Bitmap.opened}: an immutable flag left by a killed device-mode writer is taken
   * over or lifted, and a file laid out by Linux md or mdadm (256 bytes plus the bits) is
   * extended to whole pages. A file the md driver uses as an active array's bitmap is
   * refused (`EBUSY`).
   */
  static async open(path: string, options: BitmapOpenOptions = {}): Promise<Bitmap> {
    return Bitmap.openHeld(path, options, undefined)
  }

  /** {@link Bitmap.open}, with the file's lock taken here unless `held` is given; the lock is released if the open fails. */
  private static async openHeld(path: string, options: BitmapOpenOptions, held: FileLock | undefined): Promise<Bitmap> {
    const lock = held ?? (await FileLock.acquire(path, { hint: 'close it there first, or stop that process (a process that dies releases it)', waitMs: options.lockWaitMs }))
    try {
      return await Bitmap.openLocked(path, options, lock, await prepareLocked(path, options))
    } catch (e) {
      lock.release()
      throw e
    }
  }

  /** Opens the page store of a file whose lock is held, reads and loads the bitmap. */
  private static async openLocked(path: string, options: BitmapOpenOptions, lock: FileLock, opened: BitmapOpenReport): Promise<Bitmap> {
    const report = await check(path)
    const fsType = volatileFilesystem(report)
    if (fsType && !options.allowVolatile) throw volatileError(path, fsType)
    // dsync: a page write completes only once it is on stable storage, past any
    // volatile device cache; only then may the data writes it guards be issued.
    const store = await PageStore.open(path, { mode: options.mode === 'device' ? 'on-device' : 'in-place', dsync: true })
    try {
      if (store.size < SUPERBLOCK_SIZE || store.size % store.alignment !== 0) {
        throw new MdBitmapError(
          'ESHORTFILE',
          `${path} is ${store.size} bytes: a bitmap file holds a 256-byte superblock and is a whole number of ${store.alignment}-byte blocks; recreate it with Bitmap.create`,
        )
      }
      const image = allocAligned(store.size, store.alignment)
      await store.read(image, 0)
      const sb = decode(image, { uuid: options.uuid, fileSize: store.size })
      const stale = (sb.state & STATE_STALE) !== 0 || (options.events !== undefined && sb.events < options.events)
      const bitmap = new Bitmap(path, store, image, sb, stale, options.events, lock, opened)
      await bitmap.load()
      return bitmap
    } catch (e) {
      await store.close().catch(() => {})
      throw e
    }
  }

  private async load(): Promise<void> {
    const chunks = this.counters.chunks
    if (this.wasStale) {
      // Out of date: it may lack bits for writes it never saw. Every chunk is dirty,
      // on disk too, before STALE is dropped from the superblock.
      for (let c = 0; c < chunks; c++) {
        if (!setBit(this.bits, c, this.bitVersion)) this.pages.markNeedWrite(this.pageOf(c))
        this.counters.loadDirty(c)
      }
      if (this.mirrorEvents !== undefined && this.mirrorEvents > this.sb.events) this.sb.events = this.mirrorEvents
      await this.pages.flushNeedWrite()
      this.sb.state &= ~STATE_STALE
      await this.syncSuperblock()
    } else {
      for (let c = 0; c < chunks; c++) if (getBit(this.bits, c, this.bitVersion)) this.counters.loadDirty(c)
    }
    this.throwIfError()
    this.daemon.start(this.sb.daemonSleep)
  }

  // -- events -------------------------------------------------------------------------

  /**
   * Calls `listener` at every `event`. A bitmap emits one event:
   *
   * - `'error'` ({@link MdBitmapError}): a write to the bitmap failed; the bitmap is
   *   kicked (marked STALE, no longer used) and a mirror goes on without it. Emitted
   *   on a later tick, only while an `'error'` listener is attached; the error stays in
   *   {@link Bitmap.error} and `close()` rejects with it either way.
   *
   * See {@link BitmapEvents} for each event in full.
   */
  override on<E extends keyof BitmapEvents>(event: E, listener: (...args: BitmapEvents[E]) => void): this {
    return super.on(event, listener as (...args: unknown[]) => void)
  }

  /** Like {@link Bitmap.on}, but calls `listener` once, at the next `event`. */
  override once<E extends keyof BitmapEvents>(event: E, listener: (...args: BitmapEvents[E]) => void): this {
    return super.once(event, listener as (...args: unknown[]) => void)
  }

  /** Removes a listener added with {@link Bitmap.on} or {@link Bitmap.once}. */
  override off<E extends keyof BitmapEvents>(event: E, listener: (...args: BitmapEvents[E]) => void): this {
    return super.off(event, listener as (...args: unknown[]) => void)
  }

  // -- geometry -------------------------------------------------------------------

  /** Bytes of data covered. */
  get size(): number {
    return this.sb.syncSize * SECTOR
  }
  /** Bytes of data per chunk (per bit). */
  get chunkSize(): number {
    return this.sb.chunkSize
  }
  /** Chunks covered: ⌈size / chunkSize⌉. */
  get chunks(): number {
    return this.counters.chunks
  }
  /** The array's UUID, 16 bytes in file order (a copy). */
  get uuid(): Uint8Array {
    return this.sb.uuid.slice()
  }
  /** The superblock as it stands in memory (a copy). */
  get superblock(): Superblock {
    return { ...this.sb, uuid: this.sb.uuid.slice() }
  }
  /** Write-behind limit from the superblock (0 = write-behind off). */
  get maxWriteBehind(): number {
    return this.sb.writeBehind
  }
  /** Write-behind writes outstanding now (started with `behind` and not yet ended). */
  get behindWrites(): number {
    return this._behind
  }
  /** The most write-behind writes seen outstanding at once since open. */
  get behindWritesHighWater(): number {
    return this._behindHigh
  }
  /** The write error that kicked this bitmap, if one did. */
  get error(): MdBitmapError | undefined {
    return this._error
  }

  private pageOf(chunk: number): number {
    // The bit's byte within the file; version 3 keeps a chunk's bit within its 8-byte word.
    return PageImage.pageOf(SUPERBLOCK_SIZE + Math.floor(chunk / 8))
  }

  private chunkRange(what: string, offset: number, length: number): [number, number] {
    if (this.closed) throw new MdBitmapError('ECLOSED', `${what} on ${this.path}: the bitmap is closed`)
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length <= 0 || offset % SECTOR || length % SECTOR) {
      throw new MdBitmapError('EINVAL', `${what}: offset ${offset} and length ${length} must be non-negative multiples of 512 (length > 0)`)
    }
    if (offset + length > this.size) {
      throw new MdBitmapError('EOUT_OF_RANGE', `${what}: ${offset}+${length} goes past the ${this.size} bytes the bitmap covers`)
    }
    return [Math.floor(offset / this.sb.chunkSize), Math.floor((offset + length - 1) / this.sb.chunkSize)]
  }

  // -- the write path -----------------------------------------------------------------

  /**
   * Announces a write of `length` bytes at `offset`. Resolves once the bits covering
   * the range are on stable storage: only then may the data writes be issued. All
   * startWrites of one tick share one batch of page writes; a range whose bits are
   * already set resolves with no I/O. `behind` counts it as a write-behind write.
   */
  async startWrite(offset: number, length: number, behind = false): Promise<void> {
    const [first, last] = this.chunkRange('startWrite', offset, length)
    const touched = new Set<number>()
    for (let c = first; c <= last; c++) {
      while (this.counters.startWrite(c) === 'full') {
        await new Promise<void>((resolve) => this.fullWaiters.push(resolve))
        // Closed meanwhile: the chunks counted so far stay dirty, which only costs a resync.
        if (this.closed) throw new MdBitmapError('ECLOSED', `startWrite on ${this.path}: the bitmap was closed while this write waited at COUNTER_MAX`)
      }
      const page = this.pageOf(c)
      if (!getBit(this.bits, c, this.bitVersion)) {
        setBit(this.bits, c, this.bitVersion)
        this.pages.markDirty(page)
      }
      touched.add(page)
    }
    if (behind) this.countBehind()
    if (this._error) return // kicked: the mirror goes on without a bitmap
    for (const p of touched) {
      if (this.pages.isDirty(p)) {
        await this.unplug()
        break
      }
    }
    // A bit set by an earlier caller may still be on its way to the disk.
    for (const p of touched) await this.pages.settled(p)
  }

  /**
   * {@link startWrite} with no wait, for the common case of a chunk already in use:
   * when every chunk of the range has its bit set in a page that is on stable storage
   * (the page neither DIRTY nor being written) and no chunk's counter is at
   * COUNTER_MAX, counts the write exactly as startWrite does and returns true: the data
   * writes may be issued at once. Otherwise changes nothing and returns false; the
   * caller then calls startWrite (which also handles a kicked bitmap).
   */
  tryStartWrite(offset: number, length: number, behind = false): boolean {
    const [first, last] = this.chunkRange('startWrite', offset, length)
    if (this._error) return false
    for (let c = first; c <= last; c++) {
      if (!getBit(this.bits, c, this.bitVersion) || this.counters.count(c) === COUNTER_MAX) return false
      const page = this.pageOf(c)
      if (this.pages.isDirty(page) || !this.pages.isSettled(page)) return false
    }
    // Not 'full' (checked above), and the bit is set: 'counted', no page to write.
    for (let c = first; c <= last; c++) this.counters.startWrite(c)
    if (behind) this.countBehind()
    return true
  }

  /** A behind write started: counted, with its high-water mark. */
  private countBehind(): void {
    this._behind++
    if (this._behind > this._behindHigh) this._behindHigh = this._behind
  }

  /** Group commit: every DIRTY page of this tick in one batch, written and waited for. */
  private unplug(): Promise<void> {
    this.unplugging ??= new Promise<void>((resolve) => setImmediate(resolve)).then(() => {
      this.unplugging = undefined
      return this.pages.flushDirty()
    })
    return this.unplugging
  }

  /**
   * The write announced by {@link startWrite} completed on every member (or failed:
   * `success = false` marks its chunks for resync).
   */
  endWrite(offset: number, length: number, success = true, behind = false): void {
    const [first, last] = this.chunkRange('endWrite', offset, length)
    // Check the whole range first, so a misuse changes nothing.
    for (let c = first; c <= last; c++) {
      if (this.counters.count(c) < 3) {
        throw new MdBitmapError('EINVAL', `endWrite(${offset}, ${length}): chunk ${c} has no write in flight; every endWrite must match a startWrite`)
      }
    }
    if (behind && this._behind === 0) throw new MdBitmapError('EINVAL', 'endWrite(behind) without a matching behind startWrite')
    let wake = false
    for (let c = first; c <= last; c++) wake = this.counters.endWrite(c, success, this._degraded) || wake
    if (behind) this._behind--
    if (success && !this._degraded && this.sb.eventsCleared < this.sb.events) {
      this.sb.eventsCleared = this.sb.events
      this.superblockDirty = true
    }
    if (wake) for (const w of this.fullWaiters.splice(0)) w()
  }

  // -- degraded mode and events ---------------------------------------------------

  /** While degraded no bit is cleared and every write ends NEEDED. */
  get degraded(): boolean {
    return this._degraded
  }
  /** Set by the mirror while a member is failed or missing, cleared once it is whole. */
  set degraded(v: boolean) {
    this._degraded = v
  }

  /** The superblock's event count. */
  get events(): bigint {
    return this.sb.events
  }
  /** Records the mirror's event count in the superblock, durably. */
  async setEvents(events: bigint): Promise<void> {
    this.sb.events = events
    if (this.sb.eventsCleared > events) this.sb.eventsCleared = events
    await this.syncSuperblock()
    this.throwIfError()
  }

  // -- resync -------------------------------------------------------------------------

  private chunkAt(what: string, offset: number): number {
    return this.chunkRange(what, offset, SECTOR)[0]
  }

  /**
   * Whether the chunk holding `offset` must be copied by a resync (NEEDED or already
   * in resync). A NEEDED chunk is marked RESYNC unless the mirror is degraded.
   * `degraded` overrides {@link Bitmap.degraded} for this call: a recovery passes whether the
   * mirror stays degraded once its targets are in sync (the kernel's still_degraded),
   * so a chunk copied to every member that lacks it is no longer NEEDED.
   */
  startSync(offset: number, degraded = this._degraded): boolean {
    const c = this.chunkAt('startSync', offset)
    const r = this.counters.startSync(c, degraded)
    // A chunk below the checkpoint in resync again: the next condEndSync must reach it.
    if (c < this.syncCheckpoint && this.counters.get(c) & RESYNC) this.syncCheckpoint = c
    return r
  }

  /** Ends the resync of the chunk holding `offset`; `aborted` marks it NEEDED again. */
  endSync(offset: number, aborted: boolean): void {
    this.counters.endSync(this.chunkAt('endSync', offset), aborted)
  }

  /** Ends every resync in progress (completed). */
  closeSync(): void {
    for (let c = 0; c < this.chunks; c++) this.counters.endSync(c, false)
    this.syncCheckpoint = 0
  }

  /**
   * Checkpoints a resync that has reached `offset`: every chunk wholly below it that
   * is still in resync is ended (completed), so the daemon may clear it.
   */
  condEndSync(offset: number): void {
    const upto = Math.min(Math.floor(offset / this.sb.chunkSize), this.chunks)
    for (let c = this.syncCheckpoint; c < upto; c++) this.counters.endSync(c, false)
    this.syncCheckpoint = Math.max(this.syncCheckpoint, upto)
  }

  /** Whether the chunk holding `offset` is NEEDED or in resync. */
  chunkNeedsResync(offset: number): boolean {
    return (this.counters.get(this.chunkAt('chunkNeedsResync', offset)) & (NEEDED | RESYNC)) !== 0
  }

  // -- reports ------------------------------------------------------------------------

  /** The byte ranges whose bits are set: what a resync or an incremental backup must copy. */
  dirtyChunks(): ByteRange[] {
    const out: ByteRange[] = []
    for (let c = 0; c < this.chunks; c++) if (getBit(this.bits, c, this.bitVersion)) this.appendChunk(out, c)
    return out
  }

  /** Appends chunk `c`'s byte range to `out` (ranges in order), merged with the last one when adjacent. */
  private appendChunk(out: ByteRange[], c: number): void {
    const offset = c * this.sb.chunkSize
    const length = Math.min(this.sb.chunkSize, this.size - offset)
    const prev = out[out.length - 1]
    if (prev && prev.offset + prev.length === offset) prev.length += length
    else out.push({ offset, length })
  }

  /** A snapshot of the bitmap's geometry, dirty chunks and write-behind counts. */
  stats(): BitmapStats {
    return {
      chunks: this.chunks,
      chunkSize: this.sb.chunkSize,
      dirty: dirtyCount(this.bits, this.chunks, this.bitVersion),
      pagesWritten: this.pages.pagesWritten,
      behindWrites: this._behind,
      behindWritesHighWater: this._behindHigh,
      maxWriteBehind: this.sb.writeBehind,
      mode: this.store.mode,
      engine: this.store.engine,
      engineReason: this.store.engineReason,
      deferredCompletions: this.store.deferredCompletions,
      reaper: this.store.reaper,
      kicked: this._error !== undefined,
      events: this.sb.events,
      eventsCleared: this.sb.eventsCleared,
    }
  }

  /**
   * Marks a range for resync, durably: its bits are set and written before this
   * resolves, and its chunks are NEEDED (a full recovery marks the whole device).
   */
  async markNeeded(offset: number, length: number): Promise<void> {
    const [first, last] = this.chunkRange('markNeeded', offset, length)
    for (let c = first; c <= last; c++) {
      this.counters.markNeeded(c)
      if (!setBit(this.bits, c, this.bitVersion)) this.pages.markNeedWrite(this.pageOf(c))
    }
    if (this._error) return
    await this.pages.flushNeedWrite()
    this.throwIfError()
  }

  /**
   * Clears, durably, the bit of every chunk that has no write in flight, and resolves
   * with the byte ranges whose bits it cleared: the checkpoint of a changed-block
   * tracking bitmap (`mirror/tracking.ts`), which the daemon never clears. A chunk
   * with a write started and not yet ended keeps its bit. The clear itself is one
   * synchronous step, so no write slips between the ranges reported and the bits
   * cleared. On disk: the superblock is marked STALE before any cleared bit can reach
   * a page, and unmarked once every page is written, so a crash in between leaves a
   * bitmap the next open takes as all set, never a half-cleared one.
   */
  async clearIdle(): Promise<ByteRange[]> {
    if (this.closed) throw new MdBitmapError('ECLOSED', `clearIdle on ${this.path}: the bitmap is closed`)
    this.throwIfError()
    this.sb.state |= STATE_STALE
    await this.syncSuperblock()
    this.throwIfError()
    const out: ByteRange[] = []
    for (let c = 0; c < this.chunks; c++) {
      if (!getBit(this.bits, c, this.bitVersion) || !this.counters.clearIdle(c)) continue
      clearBit(this.bits, c, this.bitVersion)
      this.pages.markNeedWrite(this.pageOf(c))
      this.appendChunk(out, c)
    }
    await this.pages.flushNeedWrite()
    this.throwIfError()
    this.sb.state &= ~STATE_STALE
    await this.syncSuperblock()
    this.throwIfError()
    return out
  }

  /** The chunks that are NEEDED or in resync, in order: what a resync must visit. */
  neededChunks(): number[] {
    const out: number[] = []
    for (let c = 0; c < this.chunks; c++) if (this.counters.get(c) & (NEEDED | RESYNC)) out.push(c)
    return out
  }

  /** Whether a write error stopped the bitmap (see the `'error'` event). */
  get kicked(): boolean {
    return this._error !== undefined
  }

  // -- the daemon ---------------------------------------------------------------------

  /** What the daemon works on: this bitmap, seen through an object nobody else holds. */
  private daemonTarget(): DaemonTarget {
    const bitmap = this
    return {
      get superblockDirty() {
        return bitmap.superblockDirty
      },
      get mayClear() {
        return !bitmap._degraded && bitmap._error === undefined && !bitmap.closed
      },
      get hasCandidates() {
        return bitmap.counters.hasCandidates
      },
      get beforeClear() {
        return bitmap.beforeClear
      },
      syncSuperblock: () => bitmap.syncSuperblock(),
      stepCandidates: (mayClear) => bitmap.stepCandidates(mayClear),
      writeClearedPages: () => bitmap.pages.flushNeedWrite(),
    }
  }

  /** Writes the superblock (page 0 with the current header) and waits for it. */
  private async syncSuperblock(): Promise<void> {
    this.superblockDirty = false
    this.pages.image.set(encode(this.sb), 0)
    await this.pages.write(0)
  }

  /** Steps every candidate chunk once, clearing bits in the image; returns how many changed. */
  private stepCandidates(mayClear: boolean): number {
    let changed = 0
    for (const c of this.counters.candidateChunks()) {
      const r = this.counters.daemonStep(c, mayClear)
      if (r === 'none') continue
      changed++
      if (r === 'cleared' && clearBit(this.bits, c, this.bitVersion)) this.pages.markNeedWrite(this.pageOf(c))
    }
    return changed
  }

  /** @internal Test access (see `testing.ts`): not part of the API. */
  [bitmapInternals](): BitmapInternals {
    return {
      counter: (offset) => this.counters.get(this.chunkAt('counter', offset)),
      daemonPass: () => this.daemon.pass(),
    }
  }

  /**
   * Runs daemon passes until every idle chunk's bit is cleared (as far as allowed) and
   * writes the superblock.
   */
  async settle(): Promise<void> {
    await this.daemon.drain()
    await this.syncSuperblock()
    await this.pages.settledAll()
    await this.store.sync().catch((e) => this.kick(e))
    this.throwIfError()
  }

  // -- errors -------------------------------------------------------------------------

  /**
   * A write to the bitmap failed. Stop relying on it: mark it STALE on disk (if that
   * still works) so the next open resyncs everything, and report the error. The
   * mirror keeps running; startWrite no longer waits for I/O.
   */
  private kick(e: unknown): void {
    if (this._error) return
    const err = toMdBitmapError(e)
    this._error = new MdBitmapError(
      err.code,
      `bitmap ${this.path} failed a write and is no longer used (${err.message}); the next open will resync every chunk`,
      { cause: err, errno: err.errno },
    )
    this.daemon.stop()
    this.sb.state |= STATE_STALE
    // Through the image and page 0's chain (as every superblock write), so every later
    // write of page 0 carries STALE too and no earlier snapshot lands after it.
    void this.syncSuperblock()
    // On a later tick: kick runs inside a failed page write's completion, where a
    // listener's throw would reject that page's chain of writes with it: the waiting
    // startWrites, later writes of the page and close() all rejected with the
    // listener's error (bitmap-device.spec.ts, the throwing-listener test).
    const kicked = this._error
    process.nextTick(() => {
      if (this.listenerCount('error') > 0) this.emit('error', kicked)
    })
  }

  private throwIfError(): void {
    if (this._error) throw this._error
  }

  /**
   * Flushes, waits for every pending write, and leaves a consistent file. Rejects
   * with the bitmap's write error if one ever happened (after closing all the same).
   */
  async close(): Promise<void> {
    if (this.closed) return
    this.daemon.stop()
    try {
      if (!this._error) await this.settle()
    } finally {
      this.closed = true
      for (const w of this.fullWaiters.splice(0)) w()
      await this.pages.settledAll()
      await this.store.close().catch((e) => this.kick(e))
      this.lock.release()
    }
    this.throwIfError()
  }
}

/**
 * What an open holding the file's lock does before opening its store: refuse a file
 * the md driver uses, take over or lift a dead device-mode writer's pin, extend an
 * mdadm-made file to whole pages.
 */
async function prepareLocked(path: string, options: BitmapOpenOptions): Promise<BitmapOpenReport> {
  const array = await mdArrayUsingBitmap(path)
  if (array) {
    throw new MdBitmapError('EBUSY', `${path} is the bitmap of the active md array ${array} (see /proc/mdstat): the kernel owns it; stop the array (mdadm --stop /dev/${array}) before opening it here`)
  }
  const lifted = liftImmutable(path)
  return {
    pin: lifted ? (options.mode === 'device' ? 'taken-over' : 'lifted') : null,
    extended: await extendToPages(path),
  }
}

/** The lock on `path` if the file exists (ENOENT: nothing to lock), else throws as {@link FileLock.acquire}. */
async function lockIfExists(path: string): Promise<FileLock | undefined> {
  try {
    return await FileLock.acquire(path, { hint: 'close it there before replacing it' })
  } catch (e) {
    if ((e as MdBitmapError).code === 'ENOENT') return undefined
    throw e
  }
}

/**
 * Extends a bitmap file laid out by Linux md or mdadm (256 bytes plus the bits, no
 * page padding) to whole pages, zeros written and synced; the kernel reads a longer
 * file the same. Says what it did; a file of whole pages is left alone. A file that
 * is no bitmap, or lacks some of its bits, is refused by the superblock's checks.
 */
async function extendToPages(path: string): Promise<BitmapOpenReport['extended']> {
  const { data, fileSize } = await readFileStart(path, SUPERBLOCK_SIZE)
  if (fileSize % PAGE_SIZE === 0) return null
  const sb = decode(data, { fileSize })
  const to = pagedFileSize(sb, PAGE_SIZE)
  if (fileSize >= to) return null
  await extendWritten(path, to)
  return { from: fileSize, to }
}
