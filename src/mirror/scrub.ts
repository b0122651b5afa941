/**
 * The scrub: md's `check` and `repair` sync actions. Every chunk is read from every
 * member in sync (write-mostly ones included) and compared with the resync source;
 * with `repair`, each chunk that differs is copied from the source to the others.
 *
 * A run, one sync action at a time (it takes the slot a resync takes: while it runs, a
 * resync or removeMember is `EMIRROR_BUSY`, reAdd and addMember wait for it, and close
 * aborts it; a check asked for while a resync runs is `EMIRROR_BUSY`):
 *
 * ```
 *   check() ──► running: for each chunk, in order
 *                 throttle (maxRate) ── sleeps between chunks, never inside the barrier
 *                 lock the chunk's barrier (new writes wait; writes inside drain, and a
 *                 │   write leaves only once every member had it, behind writes to
 *                 │   write-mostly members included: nothing in flight can differ)
 *                 compare ── 1 MiB pieces: every member in sync reads the piece, each
 *                 │   512-byte sector that differs from the source's is a mismatch
 *                 │   (counted once however many members differ there)
 *                 repair? ── the chunk's bit set and durable (startWrite), the source's
 *                 │   pieces written to the members that differ, endWrite
 *                 unlock; progress
 *           ├── every chunk visited ──► repaired members fdatasynced ──► resolves
 *           └── aborted (signal, close), fewer than two members left in sync, error
 *                 ──► repaired members fdatasynced ──► rejects (EABORTED, EMIRROR_MEMBER, …)
 * ```
 *
 * - Members: those in sync when each chunk is compared. Faulty, removed and recovering
 *   members are not read: they lack data by definition, and a resync or reAdd, not a
 *   check, is what brings them back. With fewer than two members in sync there is
 *   nothing to compare: `EMIRROR_MEMBER`.
 * - A member that fails a read or a repair write becomes faulty (as in the data path)
 *   and the check goes on with the others; if the source fails, the next member in
 *   sync becomes the source.
 * - Chunks marked for resync (after a crash, or while degraded) may differ for good
 *   reasons and are reported like any other: resync first for a meaningful count.
 * - A repaired chunk is marked in the bitmap while it is written, so a crash in the
 *   middle leaves it for the next resync, which copies it from the same source.
 *
 * @module
 */
import { MdBitmapError } from '../errors'
import { allocAligned } from '../io/aligned'
import { flushSlots } from './data-path'
import { failMember } from './membership'
import { progressReporter } from './progress'
import type { MirrorState, Slot } from './state'
import type { CheckOptions, CheckReport } from './types'

/** Bytes compared at once per member. */
const PIECE = 2 ** 20
/** md counts mismatches in 512-byte sectors (`mismatch_cnt`). */
const SECTOR = 512

/** Starts a check unless a resync, recovery or check is running (see {@link Mirror.check}). */
export function startCheck(state: MirrorState, options: CheckOptions): Promise<CheckReport> {
  try {
    state.checkOpen('check')
    if (options.maxRate !== undefined && !(options.maxRate > 0)) throw new MdBitmapError('EINVAL', `maxRate must be a number of bytes per second above 0, got ${options.maxRate}`)
  } catch (e) {
    return Promise.reject(e)
  }
  // The mirror's one sync action: resync, reAdd, addMember, removeMember and close honour it.
  return state.startSyncAction(options.signal, (signal) => run(state, { ...options, signal }))
}

async function run(state: MirrorState, o: CheckOptions & { signal: AbortSignal }): Promise<CheckReport> {
  const t0 = performance.now()
  const { meta, slots, barrier } = state
  const cs = meta.chunkSize
  const nChunks = Math.ceil(meta.size / cs)
  const chunkLen = (c: number) => Math.min(cs, meta.size - c * cs)
  const compared = () => slots.filter((s) => s.inSync)
  if (compared().length < 2) throw tooFew(state)
  const report: CheckReport = {
    mismatchSectors: 0,
    mismatchedChunks: [],
    chunksChecked: 0,
    chunksTotal: nChunks,
    bytesChecked: 0,
    bytesRead: 0,
    repaired: 0,
    members: compared().map((s) => slots.indexOf(s)),
    source: slots.indexOf(state.sourceSlot()!),
    durationMs: 0,
  }
  const repairedSlots = new Set<Slot>()
  const progress = progressReporter(o.onProgress, o.progressIntervalMs ?? 200, t0, (elapsedMs) => ({
    chunksDone: report.chunksChecked,
    chunksTotal: nChunks,
    bytesChecked: report.bytesChecked,
    bytesTotal: meta.size,
    bytesRead: report.bytesRead,
    mismatchSectors: report.mismatchSectors,
    rate: elapsedMs > 0 ? (report.bytesChecked * 1000) / elapsedMs : 0,
    elapsedMs,
  }))
  const bufs = new Map<Slot, Uint8Array>()
  const bufOf = (s: Slot) => {
    let b = bufs.get(s)
    if (!b) bufs.set(s, (b = allocAligned(Math.min(PIECE, cs), state.alignment)))
    return b
  }
  try {
    for (let c = 0; c < nChunks; c++) {
      if (o.signal.aborted) throw aborted(o.signal)
      if (o.maxRate) await throttle(report.bytesChecked, o.maxRate, t0, o.signal)
      if (compared().length < 2) throw tooFew(state)
      await barrier.lockSync(c)
      try {
        if (o.signal.aborted) throw aborted(o.signal)
        state.checkOpen('check')
        const sectors = await checkChunk(state, c * cs, chunkLen(c), o.repair === true, bufOf, report, repairedSlots)
        if (sectors > 0) {
          report.mismatchSectors += sectors
          report.mismatchedChunks.push(c)
        }
      } finally {
        barrier.unlockSync(c)
      }
      report.chunksChecked++
      report.bytesChecked += chunkLen(c)
      progress(false)
    }
  } finally {
    // Repairs are durable before the caller hears of them (or of the error that stopped the run).
    if (repairedSlots.size) await flushSlots(state, [...repairedSlots])
  }
  report.durationMs = performance.now() - t0
  progress(true)
  return report
}

/**
 * Compares one chunk (under its barrier) piece by piece, and repairs it if asked.
 * Returns the sectors that differ.
 */
async function checkChunk(
  state: MirrorState,
  offset: number,
  len: number,
  repair: boolean,
  bufOf: (s: Slot) => Uint8Array,
  report: CheckReport,
  repairedSlots: Set<Slot>,
): Promise<number> {
  let sectors = 0
  let marked = false
  let repairFailed = false
  let done = false
  try {
    for (let p = 0; p < len; p += PIECE) {
      const n = Math.min(PIECE, len - p)
      const read = await readPiece(state, offset + p, n, bufOf, report)
      if (!read) throw tooFew(state)
      const { source, others } = read
      const src = Buffer.from(bufOf(source).buffer, bufOf(source).byteOffset, n)
      const differing = others.filter((s) => !src.equals(Buffer.from(bufOf(s).buffer, bufOf(s).byteOffset, n)))
      if (differing.length === 0) continue
      for (let at = 0; at < n; at += SECTOR) {
        const a = src.subarray(at, at + SECTOR)
        if (differing.some((s) => !a.equals(Buffer.from(bufOf(s).buffer, bufOf(s).byteOffset + at, Math.min(SECTOR, n - at))))) sectors++
      }
      if (!repair) continue
      if (!marked && state.bitmap) {
        await state.bitmap.startWrite(offset, len, false)
        marked = true
      }
      const data = bufOf(source).subarray(0, n)
      await Promise.all(
        differing.map((s) =>
          s.member!.write(data, offset + p).then(
            () => void repairedSlots.add(s),
            async (e) => {
              repairFailed = true
              await failMember(state, s, e)
            },
          ),
        ),
      )
    }
    done = true
  } finally {
    // Ends NEEDED (the bit stays for a resync) unless every repair write of the chunk succeeded.
    if (marked) state.bitmap!.endWrite(offset, len, done && !repairFailed, false)
  }
  if (sectors > 0 && repair) report.repaired++
  return sectors
}

/**
 * Reads one piece from every member in sync into its buffer; a member whose read
 * fails becomes faulty and is left out. Returns the source (the first in-sync member
 * that is not write-mostly, else the first in sync) and the others, or undefined when
 * fewer than two are left.
 */
async function readPiece(state: MirrorState, offset: number, n: number, bufOf: (s: Slot) => Uint8Array, report: CheckReport): Promise<{ source: Slot; others: Slot[] } | undefined> {
  const members = state.slots.filter((s) => s.inSync)
  const ok = await Promise.all(
    members.map(async (s) => {
      try {
        // Under the barrier no write to this chunk is in flight; this is belt and braces.
        if (s.record.writeMostly) await s.order.drained(offset, n)
        await s.member!.read(bufOf(s).subarray(0, n), offset)
        report.bytesRead += n
        return true
      } catch (e) {
        await failMember(state, s, e)
        return false
      }
    }),
  )
  const good = members.filter((_, i) => ok[i] && members[i].inSync)
  const source = good.find((s) => !s.record.writeMostly) ?? good[0]
  if (good.length < 2 || !source) return undefined
  return { source, others: good.filter((s) => s !== source) }
}

/** Sleeps until `done` bytes are within `maxRate` bytes per second since `t0`, or the signal aborts. */
async function throttle(done: number, maxRate: number, t0: number, signal: AbortSignal): Promise<void> {
  const wait = (done * 1000) / maxRate - (performance.now() - t0)
  if (wait <= 0) return
  await new Promise<void>((resolve) => {
    const timer = setTimeout(finish, wait)
    function finish() {
      clearTimeout(timer)
      signal.removeEventListener('abort', finish)
      resolve()
    }
    signal.addEventListener('abort', finish, { once: true })
  })
  if (signal.aborted) throw aborted(signal)
}

function tooFew(state: MirrorState): MdBitmapError {
  const states = state.slots.map((s, i) => `member ${i}: ${s.record.state}`).join(', ')
  return new MdBitmapError('EMIRROR_MEMBER', `check needs at least two members in sync to compare (${states}); re-add or resync the others first`)
}

function aborted(signal: AbortSignal): MdBitmapError {
  return new MdBitmapError('EABORTED', 'check aborted; run it again to check the whole mirror', { cause: signal.reason })
}
