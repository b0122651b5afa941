/**
 * Folders: syncing one (so the files created, renamed or removed in it stay so after a
 * crash), and the temporary folders the demo works in.
 *
 * @internal
 * @module
 */
import { mkdtempSync, rmSync } from 'node:fs'
import { open, type FileHandle } from 'node:fs/promises'
import { join } from 'node:path'
import { fileError } from './file-error'

/** Makes a folder's entries (files created, renamed or removed in it) durable: fsync of the folder. */
export async function syncFolder(dir: string): Promise<void> {
  let fh: FileHandle
  try {
    fh = await open(dir, 'r')
  } catch (e) {
    throw fileError(e, `cannot open the folder ${dir} to sync it`)
  }
  try {
    await fh.sync()
  } catch (e) {
    throw fileError(e, `cannot sync the folder ${dir}`)
  } finally {
    await fh.close().catch(() => {})
  }
}

/**
 * Makes a new, empty folder `PREFIXxxxxxx` in `parent` and returns its path
 * (synchronous: done once, at startup).
 */
export function makeTempFolder(parent: string, prefix: string): string {
  try {
    return mkdtempSync(join(parent, prefix))
  } catch (e) {
    throw fileError(e, `cannot make a folder in ${parent}`)
  }
}

/**
 * Removes the folder `dir` and everything in it; nothing there is fine. Synchronous,
 * so it can run in a signal handler just before the process exits.
 */
export function removeFolder(dir: string): void {
  try {
    rmSync(dir, { recursive: true, force: true })
  } catch (e) {
    throw fileError(e, `cannot remove ${dir}`)
  }
}
