/**
 * Atomic, durable replacement of a small file: the new contents go to a temporary file
 * beside it, which is synced, renamed over the old one, and the folder synced. A crash
 * at any point leaves either the old file or the new one, never a mix, and at most a
 * stray temporary file (`.NAME.PID.tmp`), never the target half-written.
 *
 * @internal
 * @module
 */
import { open, rename, unlink } from 'node:fs/promises'
import { basename, dirname, join } from 'node:path'
import { MdBitmapError } from '../errors'
import { fileError } from './file-error'
import { syncFolder } from './folders'

/** The temporary file {@link replaceFile} writes before renaming it over `path`. */
function replacementPath(path: string): string {
  return join(dirname(path), `.${basename(path)}.${process.pid}.tmp`)
}

/**
 * Replaces (or creates) `path` with `data`, atomically and durably. On failure the old
 * file is untouched and the temporary file is removed.
 */
export async function replaceFile(path: string, data: Uint8Array | string): Promise<void> {
  const tmp = replacementPath(path)
  try {
    const fh = await open(tmp, 'w')
    try {
      await fh.writeFile(data)
      await fh.sync()
    } catch (e) {
      await fh.close().catch(() => {})
      throw e
    }
    await fh.close()
    await rename(tmp, path)
    await syncFolder(dirname(path))
  } catch (e) {
    await unlink(tmp).catch(() => {})
    throw e instanceof MdBitmapError ? e : fileError(e, `cannot replace ${path}`)
  }
}
