/**
 * Growing a file in place to a larger size with every new byte written as zeros (no
 * hole, no unwritten extent), then synced: how a bitmap file that Linux md or mdadm
 * laid out (256 bytes plus the bits, no page padding) becomes whole pages.
 *
 * @internal
 * @module
 */
import { open } from 'node:fs/promises'
import { MdBitmapError } from '../errors'
import { fileError } from './file-error'

const PIECE = 65536

/**
 * Extends `path` from its current size to `size` bytes by writing zeros (never by
 * truncate, which would leave a hole), then fdatasyncs it. Resolves to the size it
 * had; a file already `size` bytes or longer is left alone.
 */
export async function extendWritten(path: string, size: number): Promise<number> {
  let fh
  try {
    fh = await open(path, 'r+')
  } catch (e) {
    throw fileError(e, `cannot open ${path} to extend it`)
  }
  try {
    const from = (await fh.stat()).size
    if (from >= size) return from
    const zeros = Buffer.alloc(Math.min(PIECE, size - from))
    for (let at = from; at < size; ) {
      const { bytesWritten } = await fh.write(zeros, 0, Math.min(zeros.length, size - at), at)
      if (bytesWritten <= 0) throw new MdBitmapError('EIO', `${path}: a write of zeros at ${at} wrote nothing`)
      at += bytesWritten
    }
    await fh.sync()
    return from
  } catch (e) {
    throw e instanceof MdBitmapError ? e : fileError(e, `cannot extend ${path} to ${size} bytes`)
  } finally {
    await fh.close().catch(() => {})
  }
}
