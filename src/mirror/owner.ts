/**
 * One owner at a time: the lock a mirror holds from create or open to close, and
 * where its owner can be reached (its control socket).
 *
 * The lock is a flock on `METADATA.lock` beside the metadata (the metadata itself is
 * replaced by rename at every update, so a lock on it would not outlive the first
 * update), taken before the metadata is read; the bitmap file is locked too, by
 * {@link Bitmap.open}. A second open fails `ELOCKED` at once, naming the holder's pid
 * and, when it listens on one, its control socket. The lock file is removed at close
 * (while still held, so no opener can lock a file that is gone). A holder killed with
 * SIGKILL leaves the lock file and maybe its socket, but not the lock: the next open
 * takes it once the dead holder's writes in flight have landed (waiting up to
 * `lockWaitMs`, see io/lock.ts) and removes the stale socket.
 *
 * @module
 */
import { FileLock } from '../io/lock'
import { isSocket, removeSocket } from '../io/unix-socket'
import { toMdBitmapError, type MdBitmapError } from '../errors'

/** The lock file of the mirror whose metadata is `metadataPath`. */
export function lockPathFor(metadataPath: string): string {
  return `${metadataPath}.lock`
}

/** The control socket of the mirror whose metadata is `metadataPath` (beside it). */
export function controlSocketPathFor(metadataPath: string): string {
  return `${metadataPath.replace(/\.json$/, '')}.sock`
}

/**
 * Takes the mirror's lock, or rejects with `ELOCKED` naming the holder's pid and its
 * control socket if it has one (a lock still held for an exited owner is waited for up to
 * `waitMs`, as {@link FileLock.acquire} says). Holding the lock, removes a control socket a dead
 * holder left behind.
 */
export async function lockMirror(metadataPath: string, waitMs?: number): Promise<FileLock> {
  const socket = controlSocketPathFor(metadataPath)
  let lock: FileLock
  try {
    lock = await FileLock.acquire(lockPathFor(metadataPath), { create: true, waitMs })
  } catch (e) {
    const err = e as MdBitmapError
    if (err.code !== 'ELOCKED') throw e
    const listening = isSocket(socket)
    throw toMdBitmapError(err, {
      context: `the mirror of ${metadataPath} is open elsewhere`,
      hint: listening
        ? `its control socket is ${socket}: \`md-bitmap mirror detail|fail|remove|re-add|add|check|track|checkpoint|untrack\` act on it there; stop that process to open the mirror here`
        : 'close the mirror there, or stop that process, to open it here (a process that dies releases it)',
    })
  }
  try {
    removeSocket(socket)
  } catch (e) {
    lock.release()
    throw e
  }
  return lock
}
