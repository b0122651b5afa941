/**
 * Reading a file as it is on disk, for inspection: O_DIRECT, so a file written under
 * the page cache (a bitmap in device mode) is not seen through stale cached pages;
 * through the page cache where O_DIRECT is refused (some filesystems, or a device that
 * wants more alignment than a page).
 *
 * @internal
 * @module
 */
import { constants } from 'node:fs'
import { open, type FileHandle } from 'node:fs/promises'
import { MdBitmapError } from '../errors'
import { allocAligned } from './aligned'
import { fileError } from './file-error'

/** Offsets, lengths and buffers of direct reads are multiples of this. */
const DIRECT_ALIGN = 4096
/** The most one read(2) asks for. */
const PIECE = 4 * 2 ** 20

/** What {@link readFileStart} read. */
export interface FileStart {
  /** The file's first bytes: `length` of them, or fewer when the file is shorter. */
  data: Uint8Array
  /** The file's size when it was read. */
  fileSize: number
}

/**
 * Reads the first `length` bytes of the regular file `path` (fewer at its end), with
 * O_DIRECT where the filesystem allows it. Never writes. A path that is not a regular
 * file is `ENOT_REGULAR_FILE`.
 */
export async function readFileStart(path: string, length: number): Promise<FileStart> {
  try {
    return await readWith(path, length, true)
  } catch (e) {
    // EINVAL: O_DIRECT refused at open, or the device wants more alignment than a page.
    if ((e as MdBitmapError).code !== 'EINVAL') throw e
  }
  return readWith(path, length, false)
}

async function readWith(path: string, length: number, direct: boolean): Promise<FileStart> {
  let fh: FileHandle
  try {
    fh = await open(path, constants.O_RDONLY | (direct ? constants.O_DIRECT : 0))
  } catch (e) {
    throw fileError(e, `cannot open ${path}`)
  }
  try {
    const st = await fh.stat().catch((e) => {
      throw fileError(e, `cannot stat ${path}`)
    })
    if (!st.isFile()) throw new MdBitmapError('ENOT_REGULAR_FILE', `${path} is not a regular file`)
    const size = Math.ceil(length / DIRECT_ALIGN) * DIRECT_ALIGN
    const data = allocAligned(size, DIRECT_ALIGN)
    let done = 0
    while (done < length) {
      let n: number
      try {
        n = (await fh.read(data, done, Math.min(PIECE, size - done), done)).bytesRead
      } catch (e) {
        throw fileError(e, `cannot read ${path}`)
      }
      if (n === 0) break
      done += n
    }
    return { data: data.subarray(0, Math.min(done, length)), fileSize: st.size }
  } finally {
    await fh.close().catch(() => {})
  }
}
