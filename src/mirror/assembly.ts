/**
 * Assembly: putting a mirror together (create, open), starting it, and taking it apart
 * (close, or releasing what a failed create or open had opened).
 *
 * ```
 *   create: check the options ── open every member (missing local files are created
 *           sparse) ── create the bitmap ── build the metadata; unless every member was
 *           created here (all zeros) or assumeClean, mark every chunk for resync ─┐
 *   open:   read the metadata ── open the bitmap (older than the metadata: stale, full ├─► parts
 *           resync) ── open the members in sync or recovering (one that fails to open │
 *           is faulty: degraded, not stopped) ── at least one in sync ── no bitmap and │
 *           an unclean shutdown: a full resync is due ── open the tracking bitmaps ────┘
 *   start:  event count + 1, clean = false, degraded told to the bitmap, the bitmap's
 *           hooks set (member flush before a clear; kicked → 'error'), persisted ─► running
 *   close:  closing (no new request) ── abort the resync ── wait for every write, behind
 *           ones too ── flush the members (the final flush) ── close the bitmap and the
 *           tracking bitmaps ── clean = nothing failed ── persist ── close the members ─► closed
 * ```
 *
 * The final flush decides whether the shutdown is clean: a member whose flush
 * (fdatasync) fails does not hold its data durably, so it is failed there as any failed
 * I/O fails a member (faulty, recorded, `'member-faulty'`; the mirror degraded, so the
 * bitmap closes without clearing a bit), the shutdown is recorded unclean, and close
 * goes on through every step, then rejects with that member's error. A clean mark is
 * written only when every member's flush succeeded and nothing else failed.
 *
 * Every step from create or open to close holds the mirror's lock (`owner.ts`): one
 * owner at a time, and a second open fails `ELOCKED` at once, before reading anything.
 * Anything that fails before the mirror runs closes what was opened (releaseAll),
 * releases the lock and rejects; nothing half-open is left behind. Close goes through
 * every step even after one failed, releases the lock last, and rejects with the
 * first error.
 *
 * @module
 */
import { randomBytes } from 'node:crypto'
import { statPath } from '../io/files'
import type { FileLock } from '../io/lock'
import { resolve } from 'node:path'
import { Bitmap } from '../bitmap/bitmap'
import { parseUuid } from '../bitmap/superblock'
import { MdBitmapError, toMdBitmapError } from '../errors'
import { FileMember, openFileMember } from '../member'
import { flushBeforeClear } from './data-path'
import { failMember, isUrl, memberPath, openChecked } from './membership'
import { metadataPathFor, readMetadata, type MirrorMetadata } from './metadata'
import { lockMirror } from './owner'
import { Slot, type MirrorParts, type MirrorState } from './state'
import { Tracking } from './tracking'
import type { MirrorCreateOptions, MirrorOpenOptions } from './types'

const DEFAULT_BEHIND_MEMORY = 64 * 2 ** 20

/** Creates a mirror's bitmap, metadata (in memory) and missing member files, and opens them (see {@link Mirror.create}). */
export async function createParts(o: MirrorCreateOptions): Promise<MirrorParts> {
  const { size, chunkSize } = o
  if (!Number.isSafeInteger(size) || size <= 0 || size % 512 !== 0) throw new MdBitmapError('EINVAL', `size must be a positive multiple of 512 bytes, got ${size}`)
  if (!Number.isSafeInteger(chunkSize) || chunkSize < 4096 || (chunkSize & (chunkSize - 1)) !== 0) {
    throw new MdBitmapError('EINVAL', `chunkSize must be a power of two of at least 4096 bytes, got ${chunkSize}`)
  }
  if (!Array.isArray(o.members) || o.members.length === 0) throw new MdBitmapError('EINVAL', 'a mirror needs at least one member')
  const behindMemoryLimit = o.behindMemoryLimit ?? DEFAULT_BEHIND_MEMORY
  if (!Number.isSafeInteger(behindMemoryLimit) || behindMemoryLimit < 0) throw new MdBitmapError('EINVAL', `behindMemoryLimit must be a non-negative integer, got ${behindMemoryLimit}`)
  const bitmapPath = o.bitmap === null ? null : resolve(o.bitmap)
  if (bitmapPath === null && !o.metadata) throw new MdBitmapError('EINVAL', 'a mirror without a bitmap needs a metadata path (metadata option)')
  const metadataPath = resolve(o.metadata ?? metadataPathFor(bitmapPath!))
  const openMember = o.openMember ?? openFileMember
  const paths = o.members.map((m) => memberPath(m.path))
  if (new Set(paths).size !== paths.length) throw new MdBitmapError('EINVAL', `a member is listed twice: ${paths.join(', ')}`)
  const lock = await lockMirror(metadataPath)

  const slots: Slot[] = []
  let bitmap: Bitmap | null = null
  try {
    if (!o.overwrite && (await statPath(metadataPath)) !== null) {
      throw new MdBitmapError('EEXIST', `${metadataPath} exists: a mirror was already created here; open it with Mirror.open, or pass overwrite: true`)
    }
    let allCreated = true
    for (const [index, path] of paths.entries()) {
      // Local paths that do not exist are created (sparse, zeros); URLs are the opener's business.
      allCreated = (!isUrl(path) && (await FileMember.ensure(path, size))) && allCreated
      const writeMostly = o.members[index].writeMostly === true
      const slot = new Slot({ path, writeMostly, state: 'in-sync', events: 0n })
      slots.push(slot)
      slot.member = await openChecked(openMember, path, writeMostly, index, size)
    }
    if (bitmapPath) {
      bitmap = await Bitmap.create(bitmapPath, {
        size,
        chunkSize,
        daemonSleep: o.daemonSleep,
        writeBehind: o.writeBehind,
        uuid: o.uuid,
        mode: o.bitmapMode,
        allowVolatile: o.allowVolatile,
        overwrite: o.overwrite,
      })
    }
    const uuid = Buffer.from(bitmap ? bitmap.uuid : o.uuid === undefined ? randomBytes(16) : parseUuid(o.uuid)).toString('hex')
    const meta: MirrorMetadata = {
      uuid,
      size,
      chunkSize,
      events: 0n,
      clean: false,
      bitmap: bitmapPath,
      behindMemoryLimit,
      resyncFrom: null,
      members: slots.map((s) => s.record),
    }
    // Members that already held data may differ: the first resync makes them equal.
    if (!allCreated && !o.assumeClean) {
      if (bitmap) await bitmap.markNeeded(0, size)
      else meta.resyncFrom = 0
    }
    const tracking = await Tracking.open(meta, { mode: o.bitmapMode, allowVolatile: o.allowVolatile })
    return { metadataPath, meta, bitmap, slots, openMember, tracking, lock }
  } catch (e) {
    await releaseAll(bitmap, slots, lock)
    throw e
  }
}

/** Reassembles a mirror from its metadata: the bitmap and every member in sync or recovering (see {@link Mirror.open}). */
export async function openParts(o: MirrorOpenOptions): Promise<MirrorParts> {
  if (!o.bitmap && !o.metadata) throw new MdBitmapError('EINVAL', 'Mirror.open needs the bitmap path (or the metadata path of a mirror without a bitmap)')
  const metadataPath = resolve(o.metadata ?? metadataPathFor(o.bitmap!))
  const lock = await lockMirror(metadataPath, o.lockWaitMs)
  const openMember = o.openMember ?? openFileMember
  let slots: Slot[] = []
  let bitmap: Bitmap | null = null
  try {
    const meta = await readMetadata(metadataPath)
    const bitmapPath = meta.bitmap === null ? null : resolve(o.bitmap ?? meta.bitmap)
    slots = meta.members.map((r) => new Slot(r))
    if (bitmapPath) {
      // events: a bitmap older than the mirror missed changes and is taken as stale.
      bitmap = await Bitmap.open(bitmapPath, { uuid: meta.uuid, events: meta.events, mode: o.bitmapMode, allowVolatile: o.allowVolatile, lockWaitMs: o.lockWaitMs })
      if (bitmap.size !== meta.size || bitmap.chunkSize !== meta.chunkSize) {
        throw new MdBitmapError(
          'EMIRROR_METADATA',
          `${bitmapPath} covers ${bitmap.size} bytes in ${bitmap.chunkSize}-byte chunks but ${metadataPath} says ${meta.size} in ${meta.chunkSize}; they belong to different mirrors`,
        )
      }
    }
    for (const [index, slot] of slots.entries()) {
      if (slot.record.state !== 'in-sync' && slot.record.state !== 'recovering') continue
      try {
        slot.member = await openChecked(openMember, slot.record.path, slot.record.writeMostly, index, meta.size)
      } catch (e) {
        // A missing member degrades the mirror; it does not stop it.
        const err = toMdBitmapError(e)
        slot.record.state = 'faulty'
        slot.record.error = { code: err.code, message: err.message }
      }
    }
    if (!slots.some((s) => s.inSync)) {
      const why = meta.members.map((m, i) => `member ${i} ${m.path}: ${m.state}${m.error ? ` (${m.error.message})` : ''}`).join('; ')
      throw new MdBitmapError('EMIRROR_FAILED', `no member of the mirror in ${metadataPath} is in sync and available: ${why}`)
    }
    // Without a bitmap, an unclean shutdown may have left any chunk different, below a
    // resync checkpoint too (writes went on there): the resync starts over.
    if (!meta.clean && !bitmap) meta.resyncFrom = 0
    // The tracking bitmaps resume (last: nothing else can fail after them).
    const tracking = await Tracking.open(meta, { mode: o.bitmapMode, allowVolatile: o.allowVolatile, lockWaitMs: o.lockWaitMs })
    return { metadataPath, meta, bitmap, slots, openMember, tracking, lock }
  } catch (e) {
    await releaseAll(bitmap, slots, lock)
    throw e
  }
}

/** Starts an assembled mirror; on failure closes its parts and rejects. */
export async function start(state: MirrorState): Promise<void> {
  try {
    state.meta.events++
    state.meta.clean = false
    state.updateDegraded()
    const bitmap = state.bitmap
    if (bitmap) {
      bitmap.beforeClear = () => flushBeforeClear(state)
      bitmap.on('error', (e: MdBitmapError) => {
        // The bitmap stopped: record a newer event count than it holds, so the next
        // open finds it stale and resyncs everything, even if STALE never reached it.
        state.meta.events++
        void state.persist().catch(() => {})
        state.events.error(e)
      })
    }
    // A tracking bitmap that failed a write: a newer event count than it holds, so
    // the next open takes it as stale (every bit set).
    state.tracking.onError = (e) => {
      state.meta.events++
      void state.persist().catch(() => {})
      state.events.error(e)
    }
    await state.persist()
  } catch (e) {
    await state.tracking.close().catch(() => {})
    await releaseAll(state.bitmap, state.slots, state.lock)
    throw e
  }
}

/** Closes a running mirror (see {@link Mirror.close}). */
export async function close(state: MirrorState): Promise<void> {
  if (state.closing) return
  state.closing = true
  state.syncAbort?.abort()
  await state.syncAction?.catch(() => {})
  await state.barrier.idle()
  const errors: unknown[] = []
  await finalFlush(state, errors)
  if (state.bitmap) {
    await state.bitmap.close().catch((e) => errors.push(e))
    state.bitmapClosed = true
  }
  await state.tracking.close().catch((e) => errors.push(e))
  state.meta.clean = errors.length === 0
  await state.persist().catch((e) => errors.push(e))
  for (const s of state.slots) {
    const m = s.member
    s.member = undefined
    await m?.close().catch((e) => errors.push(e))
  }
  state.lock.release({ unlink: true })
  if (errors.length) throw toMdBitmapError(errors[0])
}

/**
 * Syncs every active member one last time. A member whose flush fails is failed (it is
 * degraded at once, so no bit is cleared after this) and its error, naming it, goes to
 * `errors`, with the error of recording the failure if that failed too.
 */
async function finalFlush(state: MirrorState, errors: unknown[]): Promise<void> {
  const active = state.slots.filter((s) => s.active)
  await Promise.all(
    active.map((s) =>
      s.member!.flush().catch(async (e) => {
        errors.push(
          toMdBitmapError(e, {
            context: `close: member ${state.slots.indexOf(s)} (${s.record.path}) failed its final flush, so its data is not durable; it is now faulty and the shutdown is recorded unclean`,
            hint: 're-add it (reAdd) to recover it',
          }),
        )
        const recordErr = await failMember(state, s, e)
        if (recordErr) errors.push(recordErr)
      }),
    ),
  )
}

/** Closes what a failed create or open had opened; their own errors are beside the point. */
async function releaseAll(bitmap: Bitmap | null, slots: Slot[], lock: FileLock): Promise<void> {
  await bitmap?.close().catch(() => {})
  for (const s of slots) await s.member?.close().catch(() => {})
  lock.release({ unlink: true })
}
