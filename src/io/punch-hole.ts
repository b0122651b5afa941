/**
 * Releasing a range of a member file or block device: afterwards it reads as zeroes,
 * and its storage is given back where the medium allows it.
 *
 * @internal
 * @module
 */
import { binding, native } from '../native'

/**
 * Makes `length` bytes at `offset` of the regular file or block device at `path` read
 * as zeroes: a hole punched in a file (`fallocate(PUNCH_HOLE | KEEP_SIZE)`, the size
 * kept), a zeroing that unmaps on a block device (`BLKZEROOUT` where the device cannot
 * unmap). Rejects with `EOPNOTSUPP` where the filesystem cannot punch holes.
 */
export function punchHole(path: string, offset: number, length: number): Promise<void> {
  return native(() => binding().punchHole(path, offset, length))
}
