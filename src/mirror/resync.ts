/**
 * The resync engine: copies the chunks that need it from a source member to the other
 * active members, and completes recovering members.
 *
 * A run, one at a time (a second call is `EMIRROR_BUSY`; reAdd and addMember wait for
 * the running one, then run their own):
 *
 * ```
 *   resync() ──► running: up to `inFlight` chunks at once (default 4), started in the
 *                list's order, each on its own:
 *                  lock the chunk's barrier (new writes wait; writes inside drain)
 *                  startSync ── still needed? NEEDED → RESYNC (kept NEEDED while some
 *                               member outside this run still lacks it)
 *                  copy ─────── pieces of up to 1 MiB, one after another: read
 *                               source, write targets; at most inFlight × 1 MiB
 *                               (8 MiB at most) of pieces in flight over the whole
 *                               run, in buffers the run reuses (io/buffer-pool.ts)
 *                  endSync(failed) ── a failed copy puts NEEDED back
 *                  unlock; visited; checkpoint (below); progress
 *                the next chunk of the list starts as soon as one is visited
 *            ├── every chunk visited, no member failed meanwhile ──► completing:
 *            │     flush the targets; recovering targets → in-sync; event count + 1;
 *            │     persist; if no longer degraded, end the chunks still NEEDED from
 *            │     the degraded time (identical everywhere now) ──► resolves
 *            ├── every chunk visited, a member failed meanwhile ──► resolves, nothing
 *            │     completed (the failed member's chunks stay NEEDED)
 *            └── aborted (signal, close), source lost, error ──► stopping: no chunk
 *                  starts any more; the chunks in flight end (an aborted one stops
 *                  before its next piece, or after a read without writing it, and is
 *                  NEEDED again; one whose copy completed is visited) ──► stopped:
 *                  checkpoint, rejects with the first error; what was not copied stays
 *                  marked, so the next run resumes
 * ```
 *
 * Chunks in flight complete in any order (a slow piece, a held write, a chunk waiting
 * at its barrier for a write). Progress counts every visited chunk when it is visited;
 * the report lists the chunks copied in ascending order. Failing over to another
 * source is shared: the first chunk to see the source fail picks the next one, the
 * others in flight retry from it.
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
 * what does. The position reached is the end of the longest prefix of the list whose
 * chunks were all visited: with chunks completing out of order, a chunk visited past
 * one still in flight (or not yet started) does not move it; it moves once the chunks
 * below are visited too. With a bitmap, the checkpoint is the bits themselves: a
 * resync never clears a bit. A copied chunk's counter only becomes a candidate
 * (its own endSync, or condEndSync for every chunk below the position reached, which
 * is why that position never passes a chunk in flight: condEndSync would end its
 * RESYNC while it is being copied), and the daemon clears its bit after flushing the
 * members, two idle passes later; a failed copy is NEEDED again. A run that stops, or
 * a crash, leaves every chunk not yet copied with its bit set, so the next run resumes
 * from the bits. Without a bitmap, the metadata's `resyncFrom` is the checkpoint:
 * every chunk below it is on every target and durable. It is advanced to the position
 * reached, only after the targets were flushed, about every 5 seconds and once when a
 * run stops, and set to null when a run completes; chunks visited past the position
 * are copied again by the next run. A recovery that starts during a run (a member
 * re-added or added, which sets `resyncFrom` back to 0 for its full copy) takes the
 * checkpoint over: the running resync neither advances nor clears it from then on. An unclean shutdown sets it back to 0 at open:
 * writes went on below it and nothing says where, so a crash without a bitmap means a
 * full resync.
 *
 * @module
 */
import { MdBitmapError } from '../errors'
import { BufferPool } from '../io/buffer-pool'
import { flushSlots } from './data-path'
import { failMember } from './membership'
import { progressReporter } from './progress'
import type { MirrorState, Slot } from './state'
import type { ResyncOptions, ResyncReport } from './types'

/** The largest piece: a read of the source and a write of each target (the size dd is measured with). */
const COPY_PIECE = 2 ** 20
/**
 * Pieces of one chunk copied at once. One: the chunks in flight give the parallelism.
 * Measured with `bench:mirror --only resync` (docs/benchmarks.md, "Resync: pieces in
 * flight"): with 4 chunks in flight, 1 piece each ran at 0.87–1.34 of dd (median of
 * rounds, 5 runs) and 4 pieces each at 0.65–0.89 (4 runs), interleaved on a quiet machine.
 */
const PIECES_IN_FLIGHT = 1
/**
 * Most bytes of pieces in flight over a whole run, however many chunks are: 8 chunks'
 * worth. Below that, each chunk in flight brings its {@link PIECES_IN_FLIGHT}.
 */
const MAX_PIECE_BYTES_IN_FLIGHT = 8 * PIECES_IN_FLIGHT * COPY_PIECE
/** Chunks copied at once unless {@link ResyncOptions.inFlight} says otherwise. */
export const DEFAULT_RESYNC_IN_FLIGHT = 4
/** Without a bitmap: least milliseconds between two `resyncFrom` checkpoints. */
const CHECKPOINT_INTERVAL_MS = 5000

/** Starts a resync unless one is running (see {@link Mirror.resync}). */
export function startResync(state: MirrorState, options: ResyncOptions): Promise<ResyncReport> {
  try {
    state.checkOpen('resync')
  } catch (e) {
    return Promise.reject(e)
  }
  if (state.syncAction) return Promise.reject(new MdBitmapError('EMIRROR_BUSY', 'a resync, recovery or check is already running; wait for it, or abort it with its signal'))
  const inFlight = options.inFlight ?? DEFAULT_RESYNC_IN_FLIGHT
  if (!Number.isSafeInteger(inFlight) || inFlight < 1) return Promise.reject(new MdBitmapError('EINVAL', `inFlight must be a positive integer (chunks copied at once), got ${inFlight}`))
  return state.startSyncAction(options.signal, (signal) => run(state, { ...options, signal, inFlight }))
}

/** Waits for any running resync (whatever its outcome), then starts one: a recovery's. */
export async function resyncAfterOthers(state: MirrorState, options: ResyncOptions): Promise<ResyncReport> {
  while (state.syncAction) await state.syncAction.catch(() => {})
  return startResync(state, options)
}

async function run(state: MirrorState, o: ResyncOptions & { signal: AbortSignal; inFlight: number }): Promise<ResyncReport> {
  const t0 = performance.now()
  const { meta, slots, barrier } = state
  const generation = state.memberFailures
  const cs = meta.chunkSize
  const nChunks = Math.ceil(meta.size / cs)
  const chunkLen = (c: number) => Math.min(cs, meta.size - c * cs)
  const first = state.sourceSlot()
  if (!first) throw state.failedError('resync')
  let source: Slot = first
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
  const progress = progressReporter(o.onProgress, o.progressIntervalMs ?? 200, t0, (elapsedMs) => ({
    chunksDone: done,
    chunksTotal: list.length,
    bytesCopied: report.bytesCopied,
    bytesTotal,
    rate: elapsedMs > 0 ? (report.bytesCopied * 1000) / elapsedMs : 0,
    elapsedMs,
  }))
  let lastCheckpoint = performance.now()
  // Without a bitmap: a recovery started meanwhile set resyncFrom back to 0; the checkpoint is then its.
  const resets = state.resyncFromResets
  const ownsCheckpoint = () => state.resyncFromResets === resets
  let checkpointing: Promise<void> | undefined
  /** Every chunk of the list below this was visited: the checkpoint (where an aborted resync resumes without a bitmap). */
  let copiedUpTo = meta.resyncFrom ?? 0
  /** Which list positions were visited, and the first one that was not (the frontier). */
  const visited = new Uint8Array(list.length)
  let frontier = 0
  let nextPosition = 0
  const pieces = new PieceSlots(Math.min(o.inFlight * PIECES_IN_FLIGHT * COPY_PIECE, MAX_PIECE_BYTES_IN_FLIGHT))
  let stopped: { error: unknown } | undefined

  /** Copies chunk `c` under its barrier: startSync, the copy (another source if the source fails), endSync; whether it was copied. */
  const visit = async (c: number): Promise<boolean> => {
    await barrier.lockSync(c)
    let failed = false
    try {
      // Degraded even once the targets have this chunk? Then it stays NEEDED for the missing members.
      const stillDegraded = slots.some((s) => s.record.state !== 'in-sync' && !targets().includes(s))
      const need = bm ? bm.startSync(c * cs, stillDegraded) : true
      if (!need) return false
      for (;;) {
        const from = source
        const r = await copyChunk(state, c * cs, chunkLen(c), from, targets(), o.signal, pieces)
        if (r === 'source-failed') {
          // Another chunk in flight may have replaced the source already.
          if (source !== from) continue
          // Another in-sync member can serve, unless only a write-mostly one (which may lag) is left.
          const next = state.sourceSlot()
          if (!next || (next.record.writeMostly && !from.record.writeMostly)) {
            failed = true
            throw new MdBitmapError('EMIRROR_FAILED', `resync stopped at chunk ${c}: the source member ${from.record.path} failed a read and no member in sync can replace it`)
          }
          source = next
          continue
        }
        failed = r !== 'ok'
        break
      }
      bm?.endSync(c * cs, failed)
      return !failed
    } catch (e) {
      bm?.endSync(c * cs, true)
      throw e
    } finally {
      barrier.unlockSync(c)
    }
  }

  /** Takes the list's chunks in order, one at a time, until none is left or the run stops. */
  const worker = async (): Promise<void> => {
    try {
      while (!stopped && nextPosition < list.length) {
        if (o.signal.aborted) throw aborted(o.signal)
        if (targets().length === 0) return
        const position = nextPosition++
        const c = list[position]
        const copied = await visit(c)
        // Counted together, in one step: progress sees bytes and chunks of the same visits.
        done++
        if (copied) {
          report.chunksCopied++
          report.chunks.push(c)
          report.bytesCopied += chunkLen(c)
        }
        visited[position] = 1
        while (frontier < list.length && visited[frontier]) frontier++
        // Only past a prefix of visited chunks: a chunk still in flight below holds it back.
        if (frontier > 0) copiedUpTo = Math.max(copiedUpTo, (list[frontier - 1] + 1) * cs)
        bm?.condEndSync(copiedUpTo)
        if (!bm && !checkpointing && performance.now() - lastCheckpoint > CHECKPOINT_INTERVAL_MS) {
          lastCheckpoint = performance.now()
          checkpointing = checkpoint(copiedUpTo).finally(() => (checkpointing = undefined))
          await checkpointing
        }
        progress(false)
      }
    } catch (e) {
      stopped ??= { error: e }
    }
  }

  /** Without a bitmap: records that every chunk below `upTo` was copied, once the copies are durable. */
  const checkpoint = async (upTo: number): Promise<void> => {
    await flushSlots(state, targets())
    if (!ownsCheckpoint()) return
    meta.resyncFrom = Math.max(meta.resyncFrom ?? 0, upTo)
    await state.persist()
  }

  try {
    if (targets().length > 0) await Promise.all(Array.from({ length: Math.min(o.inFlight, list.length) }, worker))
    if (stopped) throw stopped.error
  } catch (e) {
    if (!bm && meta.resyncFrom !== null && ownsCheckpoint()) {
      await flushSlots(state, targets())
      meta.resyncFrom = Math.max(meta.resyncFrom, copiedUpTo)
      await state.persist().catch(() => {})
    }
    throw e
  } finally {
    bm?.closeSync()
  }
  report.chunks.sort((a, b) => a - b)
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
    if (!bm && ownsCheckpoint()) meta.resyncFrom = null
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

/**
 * A run's pieces: at most `budget` bytes of them in flight at once, whichever chunks
 * they belong to (first come, first served), each in a buffer lent by the run's pool
 * and given back once its read and writes settled.
 */
class PieceSlots {
  readonly pool: BufferPool
  private free: number
  private readonly waiting: { bytes: number; go: () => void }[] = []

  constructor(budget: number) {
    this.pool = new BufferPool(budget)
    this.free = budget
  }

  async acquire(bytes: number): Promise<void> {
    if (this.waiting.length === 0 && this.free >= bytes) this.free -= bytes
    else await new Promise<void>((go) => this.waiting.push({ bytes, go }))
  }

  release(bytes: number): void {
    this.free += bytes
    while (this.waiting.length && this.free >= this.waiting[0].bytes) {
      const next = this.waiting.shift()!
      this.free -= next.bytes
      next.go()
    }
  }
}

/** Copies one chunk, in pieces, several at once; target failures fail those members. */
async function copyChunk(state: MirrorState, offset: number, len: number, source: Slot, targets: Slot[], signal: AbortSignal, slots: PieceSlots): Promise<CopyResult> {
  let result = 'ok' as CopyResult
  const pieces: number[] = []
  for (let o = 0; o < len; o += COPY_PIECE) pieces.push(o)
  /** Copies the piece at `p`; false once the chunk's copy stops (failed or aborted). */
  const copyPiece = async (p: number, buf: Uint8Array): Promise<boolean> => {
    try {
      // Failed meanwhile (another chunk in flight saw it): the run picks another source.
      if (!source.inSync) throw new MdBitmapError('EMIRROR_FAILED', `the source member ${source.record.path} failed`)
      await source.member!.read(buf, offset + p)
    } catch (e) {
      await failMember(state, source, e)
      result = 'source-failed'
      return false
    }
    // Aborted while reading: write nothing more (the chunk stays marked).
    if (signal.aborted) {
      result = 'aborted'
      return false
    }
    await Promise.all(
      targets.filter((t) => t.active).map((t) =>
        t.member!.write(buf, offset + p).catch(async (e) => {
          await failMember(state, t, e)
          if (result === 'ok') result = 'target-failed'
        }),
      ),
    )
    return true
  }
  const worker = async () => {
    for (let p = pieces.shift(); p !== undefined; p = pieces.shift()) {
      const n = Math.min(COPY_PIECE, len - p)
      await slots.acquire(n)
      // Its read and every write of it settled before the buffer goes back: no I/O references it.
      const buf = slots.pool.take(n, state.alignment)
      try {
        if (result !== 'ok' && result !== 'target-failed') return
        if (signal.aborted) {
          result = 'aborted'
          return
        }
        if (!(await copyPiece(p, buf))) return
      } finally {
        slots.pool.give(buf)
        slots.release(n)
      }
    }
  }
  await Promise.all(Array.from({ length: Math.min(PIECES_IN_FLIGHT, pieces.length) }, worker))
  if ((result as CopyResult) === 'aborted') throw aborted(signal)
  return result
}

function aborted(signal: AbortSignal): MdBitmapError {
  return new MdBitmapError('EABORTED', 'resync aborted; what was not copied stays marked, so the next resync resumes it', { cause: signal.reason })
}

function range(from: number, to: number): number[] {
  return Array.from({ length: Math.max(0, to - from) }, (_, i) => from + i)
}
