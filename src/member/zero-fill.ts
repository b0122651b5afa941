/**
 * Zeroes written through a member's `write`: how a range is zeroed on a member that
 * has no cheaper way (no `discard`/`writeZeroes`, or a medium that cannot punch holes).
 *
 * @module
 */
import { allocAligned } from '../io/aligned'
import type { Member } from './types'

/** Bytes of zeroes per write. */
const PIECE = 2 ** 20
/** Writes in flight at once. */
const DEPTH = 4

/** Writes zeroes over `[offset, offset + length)` of `member`, in 1 MiB writes, a few at once. */
export async function zeroFill(member: Member, offset: number, length: number): Promise<void> {
  const align = Math.max(512, member.alignment)
  const piece = Math.min(PIECE - (PIECE % align), length)
  const zeroes = allocAligned(piece, Math.max(4096, align))
  let next = 0
  const worker = async () => {
    while (next < length) {
      const at = next
      next += piece
      await member.write(zeroes.subarray(0, Math.min(piece, length - at)), offset + at)
    }
  }
  await Promise.all(Array.from({ length: Math.min(DEPTH, Math.ceil(length / piece)) }, worker))
}
