/**
 * One owner at a time: an exclusive lock on a file (flock, `LOCK_EX | LOCK_NB`, by the
 * native core) held from open to close, and what only the lock's holder may do to a
 * file a dead holder left behind (lift its immutable flag).
 *
 * ```
 *   FileLock.acquire(path) ──┬─ free ──► held ── release() ──► free
 *                            └─ held elsewhere (another process, or this one through
 *                               another open) ──► ELOCKED at once, naming the holder's pid
 *   held ── the process dies (kill -9 included) ──► free: the kernel drops the lock
 *           with the process's descriptors, so crash recovery needs no manual step
 * ```
 *
 * The lock is advisory: it binds md-bitmap's own opens (bitmaps, mirrors), not other
 * programs.
 *
 * @internal
 * @module
 */
import type { NativeFileLock } from '../native/binding'
import { toMdBitmapError } from '../errors'
import { binding } from '../native'

/** An exclusive lock on one file, held until {@link FileLock.release} or the process's death. */
export class FileLock {
  private constructor(
    /** The locked file. */
    readonly path: string,
    private inner: NativeFileLock | undefined,
  ) {}

  /**
   * Takes the lock on `path` or throws at once: `ELOCKED` when another process, or
   * another open in this one, holds it (the message names the holder's pid; `hint`
   * says what to do). With `create`, a missing file is created (mode 0600).
   */
  static acquire(path: string, options: { create?: boolean; hint?: string } = {}): FileLock {
    try {
      return new FileLock(path, binding().lockFile(path, options.create ?? false))
    } catch (e) {
      const err = toMdBitmapError(e, { fallback: 'EINTERNAL' })
      throw err.code === 'ELOCKED' && options.hint ? toMdBitmapError(err, { hint: options.hint }) : err
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
