/**
 * Unix socket files: whether one is at a path, removing one a dead listener left, and
 * listening on one that only its owner may reach (mode 0600, set by the umask at bind
 * time, so no other user can connect between bind and chmod).
 *
 * @internal
 * @module
 */
import { chmodSync, lstatSync, unlinkSync } from 'node:fs'
import type { Server } from 'node:net'
import { MdBitmapError } from '../errors'
import { fileError } from './file-error'

/** Whether a Unix socket is at `path` (not following symbolic links). */
export function isSocket(path: string): boolean {
  try {
    return lstatSync(path).isSocket()
  } catch {
    return false
  }
}

/** Removes the socket at `path` if one is there; anything else is left alone. */
export function removeSocket(path: string): void {
  if (!isSocket(path)) return
  try {
    unlinkSync(path)
  } catch (e) {
    if ((e as { code?: unknown }).code !== 'ENOENT') throw fileError(e, `cannot remove the socket ${path}`)
  }
}

/** Listens on the Unix socket `path` with owner-only permissions (0600); rejects if it cannot. */
export async function listenOwnerOnly(server: Server, path: string): Promise<void> {
  // Linux limits a socket path to 107 bytes.
  if (Buffer.byteLength(path) > 107) throw new MdBitmapError('ENAMETOOLONG', `the socket path ${path} is longer than the 107 bytes a Unix socket allows; move the mirror's metadata to a shorter path`)
  await new Promise<void>((resolve, reject) => {
    const onError = (e: Error) => reject(fileError(e, `cannot listen on ${path}`))
    server.once('error', onError)
    // bind() runs inside listen(), synchronously: the umask covers it and nothing else.
    const old = process.umask(0o177)
    try {
      server.listen(path, () => {
        server.off('error', onError)
        resolve()
      })
    } finally {
      process.umask(old)
    }
  })
  chmodSync(path, 0o600)
}
