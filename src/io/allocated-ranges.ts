/**
 * Where a file holds data, as `lseek(SEEK_DATA)`/`lseek(SEEK_HOLE)` see it: the
 * filesystem's own answer to "which bytes are data", the one sparse-aware readers
 * (cp, qemu, nbdcopy) act on. An unwritten (preallocated) extent is a hole; bytes not
 * yet written back are data. Filesystems without the two seeks, and block devices,
 * say everything is data.
 *
 * @internal
 * @module
 */
import type { AllocatedInfo } from '../native/binding'
import { binding, native } from '../native'

export type { AllocatedInfo, AllocatedRange } from '../native/binding'

/**
 * The data ranges of `length` bytes at `offset` of the file at `path` (clipped to the
 * range and to the file's size; the rest reads as zeroes), in one native call. With
 * `maxRanges`, at most that many: `end` says how far the answer reaches.
 */
export function allocatedRanges(path: string, offset: number, length: number, maxRanges?: number): Promise<AllocatedInfo> {
  return native(() => binding().allocatedRanges(path, offset, length, maxRanges))
}
