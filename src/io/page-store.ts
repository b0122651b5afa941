/**
 * A page store: positional, aligned page I/O on one existing file, done by the native
 * core off the JavaScript thread.
 *
 * @module
 */
import type { NativeStore, SpinStats } from '../native/binding'
import { MdBitmapError, toMdBitmapError } from '../errors'
import { binding, native } from '../native'

export type { SpinStats }

/** How a page store reaches the disk. */
export type StoreMode = 'direct' | 'buffered' | 'device'

/**
 * The I/O engine a page store's reads and writes use: `'uring'` (io_uring),
 * `'aio'` (Linux AIO) or `'threads'` (a few I/O threads). Chosen when the first store
 * of a JavaScript thread opens, best first, unless `MD_BITMAP_IO_ENGINE` forces one.
 */
export type IoEngine = 'uring' | 'aio' | 'threads'

/**
 * How a page store's completions reach its JavaScript thread: `'loop'` (the engine's
 * eventfd polled by the thread's own libuv event loop) or `'thread'` (one completion
 * thread handing them over through one threadsafe function, where the runtime gives no
 * libuv loop, or when `MD_BITMAP_IO_REAPER=thread` forces it).
 */
export type IoReaper = 'loop' | 'thread'

/** What {@link PageStore.open} is asked to open: how the file's pages reach the disk. */
export type StoreRequest = 'in-place' | 'on-device' | 'plain'

/** Options of {@link PageStore.open}. */
export interface PageStoreOptions {
  /**
   * `'in-place'` (default): a whole regular file (no hole, no unsafe extent, so a write
   * never allocates) written in place through its filesystem, with O_DIRECT where the
   * filesystem allows it. `'on-device'`: a whole regular file whose blocks are written
   * straight on the block device under the filesystem (needs root; refused where
   * unsafe, see {@link check}). `'plain'`: any regular file (holes allowed: the
   * filesystem fills them on write) or a whole block device (opened exclusively), with
   * direct I/O where the filesystem allows it.
   */
  mode?: StoreRequest
  /**
   * Make every write durable when it completes (O_DSYNC: the device's volatile cache
   * is flushed, or the write is FUA). Default false: durability waits for {@link PageStore.sync}.
   */
  dsync?: boolean
}

/** What {@link PageStore.writeThrough} counts, since the store was opened. */
export interface WriteThroughStats {
  /** Writes issued O_DSYNC, the caller having synced after each single write before. */
  writesThrough: number
  /** Syncs that resolved without an fdatasync: every write was durable already. */
  syncsSkipped: number
}

/**
 * Positional, aligned page I/O on one existing, fully allocated file. Many writes may
 * be in flight at once; {@link PageStore.waitIdle} waits for all of them. The first
 * write error is kept ({@link PageStore.error}) and reported again by
 * {@link PageStore.close}, so it is never lost.
 *
 * @example
 * ```ts
 * const store = await PageStore.open('/var/lib/vm/disk.bitmap')
 * const page = allocAligned(4096, store.alignment)
 * page.fill(0xff)
 * await store.write(page, 0)
 * await store.sync()
 * await store.close()
 * ```
 */
export class PageStore {
  /** The one native wait for idleness in progress, shared by concurrent {@link waitIdle} calls. */
  private idle: Promise<boolean> | undefined

  private constructor(private readonly inner: NativeStore) {}

  /** Opens a page store on an existing file. */
  static async open(path: string, options: PageStoreOptions = {}): Promise<PageStore> {
    const mode = options.mode ?? 'in-place'
    return new PageStore(await native(() => binding().openStore(path, mode, options.dsync ?? false)))
  }

  /** `'direct'`, `'buffered'` (where direct I/O is refused or meaningless; see {@link reason}) or `'device'`. */
  get mode(): StoreMode {
    return this.inner.mode
  }
  /** Why the store is buffered, when it is. */
  get reason(): string | null {
    return this.inner.reason
  }
  /** The I/O engine this store's reads and writes use (see {@link IoEngine}). */
  get engine(): IoEngine {
    return this.inner.engine
  }
  /** Why the store uses {@link engine} rather than a better one, or that it was forced; null when it is the best. */
  get engineReason(): string | null {
    return this.inner.engineReason
  }
  /**
   * Whether the kernel's completion work for this store's I/O waits until the thread
   * reaps (`'uring'` on Linux 6.1 and later: io_uring's `DEFER_TASKRUN`), so a finished
   * I/O does not interrupt the thread while it runs JavaScript. False under `'aio'` and
   * `'threads'`, for a store whose I/O runs on the I/O threads, and where the kernel
   * refused the mode (an older kernel: io_uring then works without it).
   */
  get deferredCompletions(): boolean {
    return this.inner.deferredCompletions
  }
  /** How this store's completions reach the JavaScript thread (see {@link IoReaper}). */
  get reaper(): IoReaper {
    return this.inner.reaper
  }
  /** Why the reaper is `'thread'`, or that `'loop'` was forced; null for the default. */
  get reaperReason(): string | null {
    return this.inner.reaperReason
  }
  /** The file's size in bytes; a store never changes it. */
  get size(): number {
    return this.inner.size
  }
  /** Offsets, lengths and buffer addresses must be multiples of this (except in buffered mode). */
  get alignment(): number {
    return this.inner.alignment
  }
  /** Where {@link alignment} came from. */
  get alignmentSource(): 'statx' | 'block-device' | 'default' {
    return this.inner.alignmentSource
  }
  /** The block device written in device mode, else null. */
  get device(): string | null {
    return this.inner.device
  }

  /**
   * Write-through's counts since open, or null where the store has none (buffered and
   * device mode, a `dsync` store, or `MD_BITMAP_WRITE_THROUGH=0`). A caller that syncs
   * after every single write gets its next writes issued O_DSYNC, each durable when it
   * completes, and a {@link sync} that finds every write durable already resolves
   * without an fdatasync: one round trip per durable write instead of two and a kernel
   * worker's. A second write before the next sync turns it off again.
   */
  get writeThrough(): WriteThroughStats | null {
    return this.inner.writeThrough
  }

  /**
   * The spin before this thread's event loop sleeps, for every store of the thread.
   * With at least 8 I/Os in the kernel, each completion starting the next I/O (the
   * wake-up before settled some and submitted no more), the loop waits for the next
   * completion up to `MD_BITMAP_IO_SPIN_US` microseconds (default 200, at most 1000;
   * 0 turns it off) before it sleeps, reading only memory the kernel shares (io_uring;
   * no spin under `'aio'`, `'threads'` or the `'thread'` reaper). A spin that finds
   * nothing makes the next waits sleep at once, twice as many after each such spin in
   * a row (up to 64). No other callback of the loop runs during a spin, so it delays
   * timers and sockets by at most the limit.
   */
  get spin(): SpinStats {
    return this.inner.spin
  }

  /** Writes `data` at `offset`; the buffer must not change until the promise settles. */
  write(data: Uint8Array, offset: number): Promise<void> {
    // The hot path: the native promise itself (the addon rejects with MdBitmapError, see binding()).
    try {
      return this.inner.write(data, offset)
    } catch (e) {
      return Promise.reject(typed(e))
    }
  }
  /** Reads `target.length` bytes at `offset` into `target`. */
  read(target: Uint8Array, offset: number): Promise<void> {
    try {
      return this.inner.read(target, offset)
    } catch (e) {
      return Promise.reject(typed(e))
    }
  }
  /** fdatasync: completed writes become durable (at once when they are already: see {@link writeThrough}). */
  sync(): Promise<void> {
    return native(() => this.inner.sync())
  }
  /**
   * Resolves `true` once no write is in flight (at once if none is), or `false` if
   * `timeoutMs` passes first. No thread waits: the completion of the last write
   * resolves it.
   */
  waitIdle(timeoutMs?: number): Promise<boolean> {
    if (this.inner.pending() === 0) return Promise.resolve(true)
    const idle = (this.idle ??= native(() => this.inner.waitIdle()).finally(() => (this.idle = undefined)))
    if (timeoutMs === undefined || !Number.isFinite(timeoutMs) || timeoutMs < 0) return idle
    return new Promise<boolean>((resolve, reject) => {
      const timer = setTimeout(() => resolve(false), timeoutMs)
      idle.then(
        (v) => (clearTimeout(timer), resolve(v)),
        (e) => (clearTimeout(timer), reject(e)),
      )
    })
  }
  /** Writes in flight now. */
  get pending(): number {
    return this.inner.pending()
  }
  /** The first write error this store saw, or null. */
  error(): MdBitmapError | null {
    const e = this.inner.error()
    return e ? toMdBitmapError(e) : null
  }
  /** Waits for pending writes, syncs and releases the file; rejects with the sticky error if any write failed. */
  close(): Promise<void> {
    return native(() => this.inner.close())
  }
}

/** A native failure as the {@link MdBitmapError} that {@link native} would make of it. */
function typed(e: unknown): MdBitmapError {
  return toMdBitmapError(e, { fallback: 'EINTERNAL' })
}

