/**
 * The resync engine: copies the chunks that need it from a source member to the other
 * active members, and completes recovering members.
 *
 * A run, one at a time (a second call is `EMIRROR_BUSY`; reAdd and addMember wait for
 * the running one, then run their own):
 *
 * ```
 *   resync() ──► running: for each chunk on the list, in order
 *                  lock the chunk's barrier (new writes wait; writes inside drain)
 *                  startSync ── still needed? NEEDED → RESYNC (kept NEEDED while some
 *                               member outside this run still lacks it)
 *                  copy ─────── 1 MiB pieces, 4 at once: read source, write targets
 *                  endSync(failed) ── a failed copy puts NEEDED back
 *                  unlock; checkpoint (below); progress
 *            ├── every chunk visited, no member failed meanwhile ──► completing:
 *            │     flush the targets; recovering targets → in-sync; event count + 1;
 *            │     persist; if no longer degraded, end the chunks still NEEDED from
 *            │     the degraded time (identical everywhere now) ──► resolves
 *            ├── every chunk visited, a member failed meanwhile ──► resolves, nothing
 *            │     completed (the failed member's chunks stay NEEDED)
 *            └── aborted (signal, close), source lost, error ──► stopped: checkpoint,
 *                  rejects; what was not copied stays marked, so the next run resumes
 * ```
 *
 * - The list: with a bitmap, the chunks NEEDED or in RESYNC when the run starts; without
 *   one, every chunk from `resyncFrom` on (none if it is null).
 * - The source: the first in-sync member that is not write-mostly, else the first in
 *   sync. If it fails a read it becomes faulty and the next in-sync member takes over,
 *   unless that would put a write-mostly member (which may lag) in a fast source's
 *   place: then the run stops with `EMIRROR_FAILED`.
 * - The targets: the members active when the run starts, other than the source, as long
 *   as they stay active. A member re-added during the run missed the chunks already
 *   copied, so it does not join; its own recovery follows.
 *
 * Checkpointing invariant: what the disk says still needs copying is never less than
 * what does. With a bitmap, the checkpoint is the bits themselves: a resync never
 * clears a bit. A copied chunk's counter only becomes a candidate (endSync, or
 * condEndSync for every chunk below the position reached), and the daemon clears its
 * bit after flushing the members, two idle passes later; a failed copy is NEEDED
 * again. A run that stops, or a crash, leaves every chunk not yet copied with its bit
 * set, so the next run resumes from the bits. Without a bitmap, the metadata's
 * `resyncFrom` is the checkpoint: every chunk below it is on every target and durable.
 * It is advanced only after the targets were flushed, about every 5 seconds and once
 * when a run stops, and set to null when a run completes. An unclean shutdown sets it
 * back to 0 at open: writes went on below it and nothing says where, so a crash without
 * a bitmap means a full resync.
 *
 * @module
 */
import { MdBitmapError } from '../errors'
import { allocAligned } from '../io/aligned'
import { flushSlots } from './data-path'
import { failMember } from './membership'
import type { MirrorState, Slot } from './state'
import type { ResyncOptions, ResyncReport } from './types'

const COPY_PIECE = 2 ** 20
const COPY_DEPTH = 4
/** Without a bitmap: least milliseconds between two `resyncFrom` checkpoints. */
const CHECKPOINT_INTERVAL_MS = 5000

/** Starts a resync unless one is running (see {@link Mirror.resync}). */
export function startResync(state: MirrorState, options: ResyncOptions): Promise<ResyncReport> {
  try {
    state.checkOpen('resync')
  } catch (e) {
    return Promise.reject(e)
  }
  if (state.resyncing) return Promise.reject(new MdBitmapError('EMIRROR_BUSY', 'a resync or recovery is already running; wait for it, or abort it with its signal'))
  const abort = new AbortController()
  state.resyncAbort = abort
  const signal = options.signal ? AbortSignal.any([options.signal, abort.signal]) : abort.signal
  state.resyncing = run(state, { ...options, signal }).finally(() => {
    state.resyncing = undefined
    state.resyncAbort = undefined
  })
  return state.resyncing
}

/** Waits for any running resync (whatever its outcome), then starts one: a recovery's. */
export async function resyncAfterOthers(state: MirrorState, options: ResyncOptions): Promise<ResyncReport> {
  while (state.resyncing) await state.resyncing.catch(() => {})
  return startResync(state, options)
}

async function run(state: MirrorState, o: ResyncOptions & { signal: AbortSignal }): Promise<ResyncReport> {
  const t0 = performance.now()
  const { meta, slots, barrier } = state
  const generation = state.memberFailures
  const cs = meta.chunkSize
  const nChunks = Math.ceil(meta.size / cs)
  const chunkLen = (c: number) => Math.min(cs, meta.size - c * cs)
  let source = state.sourceSlot()
  if (!source) throw state.failedError('resync')
  // The members active now; one re-added meanwhile missed the chunks already copied,
  // so it waits for a resync of its own (reAdd runs one) rather than join this one.
  const initial = slots.filter((s) => s.active && s !== source)
  const targets = () => initial.filter((s) => s.active && s !== source)
  const report: ResyncReport = {
    chunksCopied: 0,
    chunks: [],
    bytesCopied: 0,
    chunksTotal: 0,
    durationMs: 0,
    source: slots.indexOf(source),
    targets: targets().map((s) => slots.indexOf(s)),
    recovered: [],
  }
  const bm = state.bitmap
  const list = bm ? bm.neededChunks() : meta.resyncFrom === null ? [] : range(Math.floor(meta.resyncFrom / cs), nChunks)
  report.chunksTotal = list.length
  const bytesTotal = list.reduce((n, c) => n + chunkLen(c), 0)
  let done = 0
  let lastProgress = 0
  const interval = o.progressIntervalMs ?? 200
  const progress = (force: boolean) => {
    const now = performance.now()
    if (!o.onProgress || (!force && now - lastProgress < interval)) return
    lastProgress = now
    const elapsedMs = now - t0
    o.onProgress({ chunksDone: done, chunksTotal: list.length, bytesCopied: report.bytesCopied, bytesTotal, rate: elapsedMs > 0 ? (report.bytesCopied * 1000) / elapsedMs : 0, elapsedMs })
  }
  let lastCheckpoint = performance.now()
  /** Without a bitmap: every chunk below this was copied (where an aborted resync resumes). */
  let copiedUpTo = meta.resyncFrom ?? 0
  try {
    if (targets().length > 0) {
      for (const c of list) {
        if (o.signal.aborted) throw aborted(o.signal)
        if (targets().length === 0) break
        await barrier.lockSync(c)
        let failed = false
        try {
          // Degraded even once the targets have this chunk? Then it stays NEEDED for the missing members.
          const stillDegraded = slots.some((s) => s.record.state !== 'in-sync' && !targets().includes(s))
          const need = bm ? bm.startSync(c * cs, stillDegraded) : true
          if (need) {
            for (;;) {
              const r = await copyChunk(state, c * cs, chunkLen(c), source, targets(), o.signal)
              if (r === 'source-failed') {
                // Another in-sync member can serve, unless only a write-mostly one (which may lag) is left.
                const next = state.sourceSlot()
                if (!next || (next.record.writeMostly && !source.record.writeMostly)) {
                  failed = true
                  throw new MdBitmapError('EMIRROR_FAILED', `resync stopped at chunk ${c}: the source member ${source.record.path} failed a read and no member in sync can replace it`)
                }
                source = next
                continue
              }
              failed = r !== 'ok'
              break
            }
            if (!failed) {
              report.chunksCopied++
              report.chunks.push(c)
              report.bytesCopied += chunkLen(c)
            }
            bm?.endSync(c * cs, failed)
          }
        } catch (e) {
          bm?.endSync(c * cs, true)
          throw e
        } finally {
          barrier.unlockSync(c)
        }
        done++
        copiedUpTo = (c + 1) * cs
        bm?.condEndSync((c + 1) * cs)
        if (!bm && performance.now() - lastCheckpoint > CHECKPOINT_INTERVAL_MS) {
          lastCheckpoint = performance.now()
          // The copies must be durable before the checkpoint says they were made.
          await flushSlots(state, targets())
          meta.resyncFrom = (c + 1) * cs
          await state.persist()
        }
        progress(false)
      }
    }
  } catch (e) {
    if (!bm && meta.resyncFrom !== null) {
      await flushSlots(state, targets())
      meta.resyncFrom = Math.max(meta.resyncFrom, copiedUpTo)
      await state.persist().catch(() => {})
    }
    throw e
  } finally {
    bm?.closeSync()
  }
  // Complete: only if every target took every chunk (no member failed meanwhile),
  // durably: a recovered member may become the next resync's source.
  if (state.memberFailures === generation && targets().length > 0) await flushSlots(state, targets())
  if (state.memberFailures === generation && targets().length > 0) {
    for (const s of targets()) {
      if (s.record.state === 'recovering') {
        s.record.state = 'in-sync'
        delete s.record.fullRecovery
        report.recovered.push(slots.indexOf(s))
      }
    }
    if (!bm) meta.resyncFrom = null
    meta.events++
    state.updateDegraded()
    await state.persist()
    // Chunks left NEEDED by the degraded time (copied, or written to every member
    // since) are now identical everywhere: end them so the daemon may clear them.
    if (bm && !bm.degraded && state.memberFailures === generation) {
      for (const c of bm.neededChunks()) {
        await barrier.lockSync(c)
        try {
          if (bm.startSync(c * cs)) bm.endSync(c * cs, false)
        } finally {
          barrier.unlockSync(c)
        }
      }
    }
  }
  progress(true)
  report.durationMs = performance.now() - t0
  return report
}

type CopyResult = 'ok' | 'target-failed' | 'source-failed' | 'aborted'

/** Copies one chunk, in pieces, several at once; target failures fail those members. */
async function copyChunk(state: MirrorState, offset: number, len: number, source: Slot, targets: Slot[], signal: AbortSignal): Promise<CopyResult> {
  let result = 'ok' as CopyResult
  const pieces: number[] = []
  for (let o = 0; o < len; o += COPY_PIECE) pieces.push(o)
  const worker = async () => {
    const buf = allocAligned(Math.min(COPY_PIECE, len), state.alignment)
    for (let p = pieces.shift(); p !== undefined; p = pieces.shift()) {
      if (result !== 'ok' && result !== 'target-failed') return
      if (signal.aborted) {
        result = 'aborted'
        return
      }
      const n = Math.min(COPY_PIECE, len - p)
      const view = buf.subarray(0, n)
      try {
        await source.member!.read(view, offset + p)
      } catch (e) {
        await failMember(state, source, e)
        result = 'source-failed'
        return
      }
      await Promise.all(
        targets.filter((t) => t.active).map((t) =>
          t.member!.write(view, offset + p).catch(async (e) => {
            await failMember(state, t, e)
            if (result === 'ok') result = 'target-failed'
          }),
        ),
      )
    }
  }
  await Promise.all(Array.from({ length: Math.min(COPY_DEPTH, pieces.length) }, worker))
  if ((result as CopyResult) === 'aborted') throw aborted(signal)
  return result
}

function aborted(signal: AbortSignal): MdBitmapError {
  return new MdBitmapError('EABORTED', 'resync aborted; what was not copied stays marked, so the next resync resumes it', { cause: signal.reason })
}

function range(from: number, to: number): number[] {
  return Array.from({ length: Math.max(0, to - from) }, (_, i) => from + i)
}
