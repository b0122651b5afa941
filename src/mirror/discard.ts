/**
 * Discard and write-zeroes: a range of the mirror made to read as zeroes on every
 * member, with the members' storage given back where they can (a guest's `fstrim`
 * through `md-bitmap serve` shrinks the member files).
 *
 * It is a write whose data is zeroes, and keeps the write's promise:
 *
 * ```
 *   discard / writeZeroes (offset, length)
 *     │ enter the flush fence (a flush called from now on waits for it)
 *     │ enter the chunks' barrier (waits while a resync copies or a check compares one)
 *     │ bitmap.startWrite ─ bits set and durable before any member is touched (the
 *     │                     tracking bitmaps' too: tracking.ts)
 *     │ every active member, in its write order (after its overlapping writes in
 *     │ flight, behind ones included): discard / writeZeroes if it has them, else
 *     │ zeroes written through write; a member that fails becomes faulty
 *     │ wait for all (never behind: nothing to copy, and every member must read zeroes)
 *     └── bitmap.endWrite(success = every member did it) ─ leave barrier and fence
 * ```
 *
 * Afterwards every member reads zeroes in the range, so they stay identical; a member
 * that failed is faulty, and the chunks stay marked for it. It resolves when a member
 * that may acknowledge a write did it (as a write), and rejects `EMIRROR_WRITE` if none
 * did. Durable after {@link Mirror.flush}, as writes are.
 *
 * @module
 */
import { MdBitmapError, toMdBitmapError } from '../errors'
import { zeroFill, type Member } from '../member'
import { failMember } from './membership'
import type { MirrorState } from './state'
import { startWriteBits } from './tracking'

/** How the range is zeroed on members that can do it cheaply. */
export type ZeroKind = 'discard' | 'writeZeroes'

/** Zeroes `[offset, offset + length)` on every active member (see {@link Mirror.discard}, {@link Mirror.writeZeroes}). */
export async function zeroRange(state: MirrorState, kind: ZeroKind, offset: number, length: number): Promise<void> {
  state.checkOpen(kind)
  state.checkRange(kind, offset, length)
  const generation = state.flushFence.enter()
  try {
    const cs = state.meta.chunkSize
    const first = Math.floor(offset / cs)
    const last = Math.floor((offset + length - 1) / cs)
    await state.barrier.enterWrite(first, last)
    const active = state.slots.filter((s) => s.active)
    const epoch = state.memberEpochs.join()
    const fastInSync = active.filter((s) => s.inSync && !s.record.writeMostly)
    const ackers = new Set(fastInSync.length ? fastInSync : active.filter((s) => s.inSync))
    try {
      state.checkOpen(kind)
      if (ackers.size === 0) throw state.failedError(kind)
      const tracked = await startWriteBits(state, offset, length, false)
      const outcomes = await Promise.all(
        active.map((slot) =>
          slot.order.run(offset, length, () => zeroMember(slot.member!, kind, offset, length)).then(
            () => ({ slot, err: undefined as MdBitmapError | undefined }),
            async (e) => ({ slot, err: (await failMember(state, slot, e)) ?? toMdBitmapError(e) }),
          ),
        ),
      )
      const everyMember = outcomes.every((o) => o.err === undefined)
      try {
        state.bitmap?.endWrite(offset, length, everyMember, false)
      } catch (e) {
        state.events.error(toMdBitmapError(e))
      }
      state.tracking.endWrite(tracked)
      const metaErr = outcomes.find((o) => o.err?.code === 'EMIRROR_METADATA')
      if (metaErr) throw metaErr.err
      if (!outcomes.some((o) => ackers.has(o.slot) && o.err === undefined)) {
        const errs = outcomes.filter((o) => ackers.has(o.slot)).map((o) => `${o.slot.record.path}: ${o.err?.message}`)
        throw new MdBitmapError('EMIRROR_WRITE', `${kind} of ${length} bytes at ${offset} reached no member that may acknowledge it (${errs.join('; ')}); the chunks are marked for resync`, {
          cause: outcomes[0]?.err,
        })
      }
    } finally {
      state.barrier.exitWrite(first, last)
      state.memberEpochs.leave(epoch)
    }
  } finally {
    state.flushFence.leave(generation)
  }
}

/** One member's share: its own discard / writeZeroes, or zeroes through write. */
function zeroMember(member: Member, kind: ZeroKind, offset: number, length: number): Promise<void> {
  const op = kind === 'discard' ? member.discard : member.writeZeroes
  return op ? op.call(member, offset, length) : zeroFill(member, offset, length)
}
