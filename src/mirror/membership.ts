/**
 * Membership: a member failing, leaving, coming back and joining.
 *
 * ```
 *   in-sync ──fail──► faulty ──reAdd──► recovering ──resync──► in-sync
 *   in-sync / faulty ──removeMember──► removed ──reAdd──► recovering
 *   addMember ──► a new slot, recovering (full recovery)
 * ```
 *
 * - Failing (a read, write, flush or copy failed): the slot is faulty and the mirror
 *   degraded at once, synchronously, before any endWrite of the write that found the
 *   failure can run, so that write ends NEEDED and no bit is cleared from then on. The
 *   failure is recorded in the metadata before the write that found it settles, so a
 *   crash cannot make a failed member a resync source. Concurrent failures of one slot
 *   share one record.
 * - Recovering: marked durably before the member takes any write (the whole range
 *   NEEDED for a full recovery, or a bitmap recovery of the dirty chunks), so a crash
 *   from then on resumes the recovery; the resync that completes it (run by the caller)
 *   makes the member in sync.
 * - A re-added member recovers from the bitmap (only the dirty chunks) if its event
 *   count is not older than the bitmap's events_cleared (no bit it needs was cleared
 *   since it left) and no full recovery of it was pending; otherwise every chunk.
 *
 * @module
 */
import { resolve } from 'node:path'
import { MdBitmapError, toMdBitmapError } from '../errors'
import { FileMember, type Member, type OpenMember } from '../member'
import { Slot, type MirrorState } from './state'
import type { MemberOptions } from './types'

/** Whether a member path is a URL (a remote disk), which is not resolved nor created here. */
export const isUrl = (p: string) => /^[a-z][a-z0-9+.-]*:\/\//i.test(p)

/** A member path as the metadata records it: URLs as given, local paths absolute. */
export function memberPath(p: string): string {
  return isUrl(p) ? p : resolve(p)
}

/** Opens a member and checks that it holds the mirror's `size` bytes. */
export async function openChecked(openMember: OpenMember, path: string, writeMostly: boolean, index: number, size: number): Promise<Member> {
  const member = await openMember({ path, writeMostly, index })
  if (member.size < size) {
    await member.close().catch(() => {})
    throw new MdBitmapError('EMIRROR_MEMBER', `member ${path} holds ${member.size} bytes, less than the mirror's ${size}; grow it (truncate -s) or pick a larger one`)
  }
  return member
}

/**
 * Marks a member faulty: degraded at once (synchronously, before any endWrite can
 * follow), and on disk before the promise resolves. Resolves to the error of the
 * metadata write if that failed; never rejects.
 */
export function failMember(state: MirrorState, slot: Slot, e: unknown): Promise<MdBitmapError | undefined> {
  if (slot.failing) return slot.failing
  if (!slot.active) return Promise.resolve(undefined)
  const err = toMdBitmapError(e)
  slot.record.state = 'faulty'
  slot.record.error = { code: err.code, message: err.message }
  state.memberFailures++
  state.meta.events++
  state.updateDegraded()
  slot.failing = state.persist().then(
    () => undefined,
    (pe) => {
      const me = new MdBitmapError('EMIRROR_METADATA', `member ${slot.record.path} failed (${err.message}) and the failure could not be recorded: ${toMdBitmapError(pe).message}`, { cause: pe })
      state.events.error(me)
      return me
    },
  )
  void slot.failing.then(() => {
    slot.failing = undefined
  })
  // Told once the state above is complete; the sink emits on a later tick, so a listener
  // that throws cannot leave the member half-failed or unwind the caller's I/O.
  state.events.memberFaulty({ index: state.slots.indexOf(slot), path: slot.record.path, error: err })
  return slot.failing
}

/** Takes a member out (see {@link Mirror.removeMember}). */
export async function removeMember(state: MirrorState, index: number, forget: boolean): Promise<void> {
  const slot = state.slotAt(index)
  if (state.syncAction) throw new MdBitmapError('EMIRROR_BUSY', 'a resync, recovery or check is running; wait for it (or abort it) before removing a member')
  if (slot.inSync && state.slots.filter((s) => s.inSync).length === 1) {
    throw new MdBitmapError('EMIRROR_LAST_MEMBER', `member ${index} (${slot.record.path}) is the last one in sync; add another first`)
  }
  const member = slot.member
  slot.record.state = 'removed'
  if (forget) {
    state.slots.splice(index, 1)
    state.meta.members.splice(index, 1)
  }
  slot.member = undefined
  state.meta.events++
  state.updateDegraded()
  await state.persist()
  await slot.order.idle()
  await member?.close().catch(() => {})
  state.computeAlignment()
}

/**
 * Brings a faulty or removed member back (at `newPath` if given) as recovering, and
 * says which recovery it needs; the caller runs the resync that completes it.
 */
export async function readmitMember(state: MirrorState, index: number, newPath: string | undefined): Promise<'bitmap' | 'full'> {
  const slot = state.slotAt(index)
  if (slot.record.state !== 'faulty' && slot.record.state !== 'removed') {
    throw new MdBitmapError('EMIRROR_MEMBER', `member ${index} (${slot.record.path}) is ${slot.record.state}; only a faulty or removed member can be re-added`)
  }
  await slot.failing
  const path = newPath === undefined ? slot.record.path : memberPath(newPath)
  const old = slot.member
  slot.member = undefined
  await slot.order.idle()
  await old?.close().catch(() => {})
  const member = await openChecked(state.openMember, path, slot.record.writeMostly, index, state.meta.size)
  const bm = state.bitmap
  const partial = bm !== null && !bm.kicked && slot.record.events >= bm.stats().eventsCleared && !slot.record.fullRecovery
  await startRecovery(state, slot, member, path, !partial)
  return partial ? 'bitmap' : 'full'
}

/** Adds a new member slot (a local path that does not exist is created sparse) as recovering, for a full recovery. */
export async function admitMember(state: MirrorState, m: MemberOptions): Promise<void> {
  const path = memberPath(m.path)
  if (state.slots.some((s) => s.record.path === path && s.record.state !== 'removed')) {
    throw new MdBitmapError('EMIRROR_MEMBER', `${path} is already a member`)
  }
  if (!isUrl(path)) await FileMember.ensure(path, state.meta.size)
  const index = state.slots.length
  const member = await openChecked(state.openMember, path, m.writeMostly === true, index, state.meta.size)
  const slot = new Slot({ path, writeMostly: m.writeMostly === true, state: 'removed', events: 0n })
  state.slots.push(slot)
  state.meta.members.push(slot.record)
  await startRecovery(state, slot, member, path, true)
}

async function startRecovery(state: MirrorState, slot: Slot, member: Member, path: string, full: boolean): Promise<void> {
  try {
    // Marked durably before the member takes writes: a crash from here on resumes the recovery.
    if (full) {
      if (state.bitmap) await state.bitmap.markNeeded(0, state.meta.size)
      else {
        state.meta.resyncFrom = 0
        state.resyncFromResets++
      }
    }
  } catch (e) {
    await member.close().catch(() => {})
    throw e
  }
  slot.record.path = path
  slot.record.state = 'recovering'
  slot.record.fullRecovery = full || undefined
  delete slot.record.error
  slot.member = member
  // From here on new writes include the member; the recovery's list of chunks is built
  // only once every write that started without it has ended (member-epochs.ts).
  const epoch = state.memberEpochs.advance()
  state.meta.events++
  state.updateDegraded()
  state.computeAlignment()
  await state.persist()
  await state.memberEpochs.drainedBefore(epoch)
}
