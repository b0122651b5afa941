/**
 * Whole-file operations: creating a file fully written or sparse, reading a small file
 * whole, looking a path up, removing a file. Every error is an `MdBitmapError` with
 * a hint ({@link fileError}); a create that fails leaves nothing behind.
 *
 * Positional page I/O on a file that exists is the page store's (`page-store.ts`);
 * replacing a file atomically is `replace.ts`'s; folders are `folders.ts`'s.
 *
 * @internal
 * @module
 */
import { open, readFile, stat, unlink, type FileHandle } from 'node:fs/promises'
import { dirname } from 'node:path'
import { MdBitmapError } from '../errors'
import { fileError } from './file-error'
import { syncFolder } from './folders'

/** Options of {@link createWrittenFile}. */
export interface CreateWrittenFileOptions {
  /** Replace a file that exists. Default false: an existing file is an `EEXIST` error and is left alone. */
  overwrite?: boolean
}

/**
 * Creates `path` holding exactly `data`, every block allocated and written (no holes,
 * no unwritten extents), the file and its folder synced. Without `overwrite`, the
 * create is exclusive. If writing fails, the file is removed: nothing half-written is
 * left behind.
 */
export async function createWrittenFile(path: string, data: Uint8Array, options: CreateWrittenFileOptions = {}): Promise<void> {
  await createAndFill(path, options.overwrite ? 'w' : 'wx', async (fh) => {
    await fh.writeFile(data)
    await fh.sync()
  })
}

/**
 * Creates `path` exclusively as a sparse file of `size` bytes (reading as zeros,
 * nothing allocated), the file and its folder synced. An existing file is an `EEXIST`
 * error and is left alone; if sizing fails, the new file is removed.
 */
export async function createSparseFile(path: string, size: number): Promise<void> {
  await createAndFill(path, 'wx', async (fh) => {
    await fh.truncate(size)
    await fh.sync()
  })
}

async function createAndFill(path: string, flags: 'w' | 'wx', fill: (fh: FileHandle) => Promise<void>): Promise<void> {
  let fh: FileHandle
  try {
    fh = await open(path, flags)
  } catch (e) {
    throw fileError(e, `cannot create ${path}`)
  }
  try {
    try {
      await fill(fh)
    } catch (e) {
      await fh.close().catch(() => {})
      throw e
    }
    await fh.close()
    await syncFolder(dirname(path))
  } catch (e) {
    await unlink(path).catch(() => {})
    throw e instanceof MdBitmapError ? e : fileError(e, `cannot write ${path} (nothing was left behind)`)
  }
}

/** Reads a small file whole (a metadata file, say): its bytes. */
export async function readWholeFile(path: string): Promise<Buffer> {
  try {
    return await readFile(path)
  } catch (e) {
    throw fileError(e, `cannot read ${path}`)
  }
}

/** What {@link statPath} found at a path. */
export interface PathInfo {
  /** What is there; symbolic links are followed. */
  kind: 'file' | 'folder' | 'block-device' | 'other'
  /** Its size in bytes, for a file (a block device's size is the page store's to tell). */
  size: number
}

/** What is at `path` (symbolic links followed), or null when nothing is. */
export async function statPath(path: string): Promise<PathInfo | null> {
  try {
    const st = await stat(path)
    const kind = st.isFile() ? 'file' : st.isDirectory() ? 'folder' : st.isBlockDevice() ? 'block-device' : 'other'
    return { kind, size: st.size }
  } catch (e) {
    if ((e as { code?: unknown }).code === 'ENOENT') return null
    throw fileError(e, `cannot look up ${path}`)
  }
}

/** Removes the file at `path`; resolves `false` when there was none. */
export async function removeFile(path: string): Promise<boolean> {
  try {
    await unlink(path)
    return true
  } catch (e) {
    if ((e as { code?: unknown }).code === 'ENOENT') return false
    throw fileError(e, `cannot remove ${path}`)
  }
}
