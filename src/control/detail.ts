/**
 * What `md-bitmap mirror detail` shows of a mirror, as `mdadm --detail` and
 * /proc/mdstat show an array: identity, geometry, event count, state, dirty chunks,
 * the progress of a resync, recovery or check, and every member.
 *
 * A mirror held open with a bitmap also shows the I/O engine its bitmap uses.
 *
 * The state, first that applies: `recovering` (a resync is running and some member is
 * recovering), `resyncing` (a resync is running), `degraded` (some member is not in
 * sync), `active` (some chunk is dirty or a write is in flight), `clean`.
 *
 * A mirror held open is described live ({@link describeMirror}); one nobody holds,
 * from its files, without opening it ({@link describeStored}): `mirror detail` changes
 * nothing, as `mdadm --detail` and `--examine` change nothing.
 *
 * @internal
 * @module
 */
import type { MirrorMetadata } from '../mirror/metadata'
import type { Mirror } from '../mirror/mirror'
import type { MemberState } from '../mirror/types'

/** A mirror's state as `mirror detail` names it. */
export type MirrorDetailState = 'clean' | 'active' | 'degraded' | 'resyncing' | 'recovering'

/** The progress of a long operation, as `mirror detail` shows it. */
export interface OperationProgress {
  /** What runs: a resync, a member's recovery (re-add, add), or a check (repair). */
  action: 'resync' | 'recovery' | 'check' | 'repair'
  /** Chunks visited so far, and in all. */
  chunksDone: number
  chunksTotal: number
  /** Bytes handled so far (copied, or compared by a check), and in all. */
  bytesDone: number
  bytesTotal: number
  /** Bytes per second so far. */
  rate: number
  /** Seconds left at that rate, or null before a rate is known. */
  etaSeconds: number | null
}

/** `mirror detail --json`. */
export interface MirrorDetail {
  uuid: string
  size: number
  chunkSize: number
  events: number
  state: MirrorDetailState
  dirtyChunks: number
  members: { index: number; path: string; state: MemberState; writeMostly: boolean; events: number }[]
  progress?: OperationProgress
  /** The I/O engine of a mirror held open with a bitmap, and why (null: the best one); absent otherwise. */
  engine?: { name: string; reason: string | null }
  /** The changed-block tracking bitmaps (absent when there are none). */
  tracking?: TrackingDetail[]
}

/**
 * A changed-block tracking bitmap: its name and file, and (where its file could be
 * read) its chunk size and the chunks changed since its last checkpoint.
 */
export interface TrackingDetail {
  name: string
  path: string
  chunkSize?: number
  dirtyChunks?: number
}

/** The state, by the rules at the top of this file. */
function stateOf(o: { running: boolean; members: { state: MemberState }[]; dirtyChunks: number; busy: boolean }): MirrorDetailState {
  if (o.running) return o.members.some((m) => m.state === 'recovering') ? 'recovering' : 'resyncing'
  if (o.members.some((m) => m.state !== 'in-sync')) return 'degraded'
  return o.dirtyChunks > 0 || o.busy ? 'active' : 'clean'
}

/** The detail of an open mirror; `progress` is the long operation running on it, if any. */
export function describeMirror(mirror: Mirror, progress?: OperationProgress): MirrorDetail {
  const members = mirror.members
  const dirtyChunks = mirror.bitmap ? mirror.bitmap.stats().dirty : mirror.needsResync ? Math.ceil(mirror.size / mirror.chunkSize) : 0
  const detail: MirrorDetail = {
    uuid: mirror.uuid,
    size: mirror.size,
    chunkSize: mirror.chunkSize,
    events: Number(mirror.events),
    state: stateOf({ running: mirror.resyncRunning, members, dirtyChunks, busy: members.some((m) => m.writesInFlight > 0) }),
    dirtyChunks,
    members: members.map((m) => ({ index: m.index, path: m.path, state: m.state, writeMostly: m.writeMostly, events: Number(m.events) })),
  }
  if (progress) detail.progress = progress
  const { engine, engineReason } = mirror.stats()
  if (engine) detail.engine = { name: engine, reason: engineReason }
  const tracked = mirror.tracked()
  if (tracked.length) detail.tracking = tracked.map(({ name, path, chunkSize, dirtyChunks }) => ({ name, path, chunkSize, dirtyChunks }))
  return detail
}

/**
 * The detail of a mirror nobody holds, from its files alone (as `mdadm --examine`
 * reads superblocks): its metadata, and `dirtyChunks` as its bitmap says (every chunk
 * when the bitmap is stale, or when a mirror without one needs a resync). Nothing
 * runs on it, so the state is degraded, active (some chunk to resync) or clean.
 */
export function describeStored(meta: MirrorMetadata, dirtyChunks: number, tracking: TrackingDetail[] = []): MirrorDetail {
  return {
    uuid: meta.uuid,
    size: meta.size,
    chunkSize: meta.chunkSize,
    events: Number(meta.events),
    state: stateOf({ running: false, members: meta.members, dirtyChunks, busy: false }),
    dirtyChunks,
    members: meta.members.map((m, index) => ({ index, path: m.path, state: m.state, writeMostly: m.writeMostly, events: Number(m.events) })),
    ...(tracking.length ? { tracking } : {}),
  }
}

/** Progress in the shape of {@link OperationProgress}, from a resync's or a check's progress report. */
export function operationProgress(action: OperationProgress['action'], p: Record<string, unknown>): OperationProgress {
  const num = (...keys: string[]) => {
    for (const k of keys) if (typeof p[k] === 'number') return p[k] as number
    return 0
  }
  const bytesDone = num('bytesCopied', 'bytesChecked', 'bytesDone')
  const bytesTotal = num('bytesTotal')
  const rate = num('rate')
  return {
    action,
    chunksDone: num('chunksDone'),
    chunksTotal: num('chunksTotal'),
    bytesDone,
    bytesTotal,
    rate,
    etaSeconds: rate > 0 ? Math.max(0, Math.round((bytesTotal - bytesDone) / rate)) : null,
  }
}
