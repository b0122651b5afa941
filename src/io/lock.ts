/**
 * One owner at a time: an exclusive lock on a file (flock, `LOCK_EX | LOCK_NB`, by the
 * native core) held from open to close, and what only the lock's holder may do to a
 * file a dead holder left behind (lift its immutable flag).
 *
 * ```
 *   FileLock.acquire(path) ──┬─ free ──► held ── release() ──► free
 *                            ├─ held elsewhere (another process, or this one through
 *                            │  another open) ──► ELOCKED at once, naming the holder's pid
 *                            └─ held for a process that has exited ──► waiting: tried
 *                               again every 5 ms on a timer (the event loop runs on)
 *                               ──┬─ free within the wait (2 s, or the caller's
 *                                 │  `lockWaitMs`) ──► held
 *                                 └─ still held ──► ELOCKED, saying so
 *   held ── the process dies (kill -9 included) ──► free: the kernel drops the lock
 *           with the process's descriptors (once the dead process's I/O in flight has
 *           completed: the I/O engine pins the lock), so crash recovery needs no
 *           manual step
 * ```
 *
 * The lock is advisory: it binds md-bitmap's own opens (bitmaps, mirrors), not other
 * programs.
 *
 * @internal
 * @module
 */
import type { NativeFileLock } from '../native/binding'
import { MdBitmapError, toMdBitmapError } from '../errors'
import { binding } from '../native'

/**
 * How long {@link FileLock.acquire} waits by default for the lock of a holder that has
 * exited: the kernel keeps it until that process's writes in flight have completed,
 * which takes milliseconds, or seconds on a slow or throttled device (where a caller
 * passes a longer `lockWaitMs`).
 */
const DEFAULT_LOCK_WAIT_MS = 2000
const EXITED_HOLDER_RETRY_MS = 5

/** An exclusive lock on one file, held until {@link FileLock.release} or the process's death. */
export class FileLock {
  private constructor(
    /** The locked file. */
    readonly path: string,
    private inner: NativeFileLock | undefined,
  ) {}

  /**
   * Takes the lock on `path`, or rejects `ELOCKED` when another process, or another
   * open in this one, holds it (the message names the holder's pid; `hint` says what
   * to do). A lock still held for a process that has exited is waited for, up to
   * `waitMs` (default {@link DEFAULT_LOCK_WAIT_MS}), without blocking the event loop.
   * With `create`, a missing file is created (mode 0600).
   */
  static async acquire(path: string, options: { create?: boolean; hint?: string; waitMs?: number } = {}): Promise<FileLock> {
    const refuse = (err: MdBitmapError) => (err.code === 'ELOCKED' && options.hint ? toMdBitmapError(err, { hint: options.hint }) : err)
    const waitMs = lockWaitMs(options.waitMs)
    const until = performance.now() + waitMs
    for (;;) {
      let inner: NativeFileLock | null
      try {
        inner = binding().lockFile(path, options.create ?? false)
      } catch (e) {
        throw refuse(toMdBitmapError(e, { fallback: 'EINTERNAL' }))
      }
      if (inner) return new FileLock(path, inner)
      if (performance.now() >= until) {
        throw refuse(
          new MdBitmapError(
            'ELOCKED',
            `${path} is in use: locked by a process that has exited (or one this process cannot see); the kernel releases an exited process's lock once its last writes have completed (waited ${waitMs} ms; open with a longer lockWaitMs to wait longer)`,
          ),
        )
      }
      await new Promise((resolve) => setTimeout(resolve, EXITED_HOLDER_RETRY_MS))
    }
  }

  /** Whether the lock is still held by this object. */
  get held(): boolean {
    return this.inner !== undefined
  }

  /** Releases the lock (idempotent); with `unlink`, removes the file first, while still holding it. */
  release(options: { unlink?: boolean } = {}): void {
    const inner = this.inner
    this.inner = undefined
    try {
      inner?.release(options.unlink ?? false)
    } catch (e) {
      throw toMdBitmapError(e, { context: `cannot release the lock on ${this.path}` })
    }
  }
}

/**
 * A caller's `lockWaitMs`, checked: undefined is the default, else a finite number of
 * milliseconds, at least 0 (`EINVAL` otherwise).
 */
function lockWaitMs(value: number | undefined): number {
  if (value === undefined) return DEFAULT_LOCK_WAIT_MS
  if (typeof value !== 'number' || !Number.isFinite(value) || value < 0) {
    throw new MdBitmapError('EINVAL', `lockWaitMs must be a finite number of milliseconds, at least 0, got ${typeof value === 'string' ? JSON.stringify(value) : String(value)}`)
  }
  return value
}

/**
 * Clears `path`'s immutable flag if a device-mode writer that died left it set; says
 * whether it did. Call only while holding the file's {@link FileLock}: the holder
 * knows nobody else uses the file.
 */
export function liftImmutable(path: string): boolean {
  try {
    return binding().clearImmutable(path)
  } catch (e) {
    throw toMdBitmapError(e, { fallback: 'EINTERNAL' })
  }
}
