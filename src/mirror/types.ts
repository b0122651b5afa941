/**
 * The mirror's public option, report and event types: what {@link Mirror} takes and
 * gives back. No behaviour lives here.
 *
 * @module
 */
import type { MdBitmapError } from '../errors'
import type { IoEngine } from '../io/page-store'
import type { OpenMember } from '../member'
import type { MemberState } from './metadata'

export type { MemberState } from './metadata'

/** A member as given to {@link Mirror.create} or {@link Mirror.addMember}. */
export interface MemberOptions {
  /** A file or block device path (or whatever {@link MirrorCreateOptions.openMember} understands). */
  path: string
  /** Read only when no other member can serve; written behind when write-behind is on. */
  writeMostly?: boolean
}

/** Options of {@link Mirror.create}. */
export interface MirrorCreateOptions {
  /** The bitmap file to create, or null for a mirror without a bitmap (every crash means a full resync). */
  bitmap: string | null
  /** The metadata file. Default: the bitmap's path with `.mirror.json` appended; required without a bitmap. */
  metadata?: string
  /** The members, in slot order: local files or block devices (created sparse when missing), or what `openMember` opens. */
  members: MemberOptions[]
  /** Bytes of data mirrored: a multiple of every member's alignment. */
  size: number
  /** Bytes per bitmap bit, and the unit of resync: a power of two, at least 4096. */
  chunkSize: number
  /** Most write-behind writes in flight at once (0 to 16383; 0 = off). Default 0. */
  writeBehind?: number
  /** Seconds between bitmap daemon passes. Default 5. */
  daemonSleep?: number
  /** Most bytes of write-behind copies held at once; past it writes are synchronous. Default 64 MiB. */
  behindMemoryLimit?: number
  /** The mirror's identity (16 bytes or 32 hex digits). Default: random. */
  uuid?: Uint8Array | string
  /**
   * Members that already hold data are taken as identical without a first full resync.
   * Default false: unless every member file was created here (all zeros), every chunk
   * is marked for the first {@link Mirror.resync}.
   */
  assumeClean?: boolean
  /** Opens members of other kinds (remote disks). Default: local files and block devices. */
  openMember?: OpenMember
  /** Where the bitmap is written: `'file'` (default) or `'device'`. */
  bitmapMode?: 'file' | 'device'
  /** Allow the bitmap on a filesystem that does not survive a reboot (tmpfs). */
  allowVolatile?: boolean
  /** Replace an existing bitmap and metadata. Default false (`EEXIST`). */
  overwrite?: boolean
  /**
   * Listen on a control socket while the mirror is open, through which the
   * `md-bitmap mirror detail|fail|remove|re-add|add|check|track|checkpoint|untrack` commands act on this running
   * mirror (without it they fail `ELOCKED`, since the mirror is held here): `true` for
   * the default path beside the metadata (`METADATA` without `.json`, plus `.sock`:
   * `disk.bitmap.mirror.sock`), or a path. The socket is a Unix socket with owner-only
   * permissions (0600): only this user (and root) can reach it. It is removed at
   * {@link Mirror.close}. Default: none.
   */
  control?: boolean | string
}

/** Options of {@link Mirror.open}. */
export interface MirrorOpenOptions {
  /** The bitmap file; its metadata is found beside it. */
  bitmap?: string
  /** The metadata file, if not beside the bitmap (and for a mirror without a bitmap). */
  metadata?: string
  /** Opens members of other kinds (remote disks). Default: local files and block devices. */
  openMember?: OpenMember
  /** Where the bitmap is written: `'file'` (default) or `'device'`. */
  bitmapMode?: 'file' | 'device'
  /** Allow the bitmap on a filesystem that does not survive a reboot (tmpfs). */
  allowVolatile?: boolean
  /**
   * Milliseconds to wait for the locks of an owner that was killed (the mirror's, its
   * bitmap's and its tracking bitmaps'): the kernel releases them once that process's
   * writes in flight have landed, which on a slow or throttled device takes seconds.
   * Default 2000; past it the open fails `ELOCKED` ("locked by a process that has
   * exited"). A mirror open in a live process fails `ELOCKED` at once, whatever this says.
   */
  lockWaitMs?: number
  /**
   * Listen on a control socket while the mirror is open, through which the
   * `md-bitmap mirror detail|fail|remove|re-add|add|check|track|checkpoint|untrack` commands act on this running
   * mirror (without it they fail `ELOCKED`, since the mirror is held here): `true` for
   * the default path beside the metadata (`METADATA` without `.json`, plus `.sock`:
   * `disk.bitmap.mirror.sock`), or a path. The socket is a Unix socket with owner-only
   * permissions (0600): only this user (and root) can reach it. It is removed at
   * {@link Mirror.close}. Default: none.
   */
  control?: boolean | string
}

/** A member as {@link Mirror.members} shows it. */
export interface MemberInfo {
  /** The member's slot in the mirror. */
  index: number
  /** Its path (or URL). */
  path: string
  /** Whether it is write-mostly: read only when no other member can serve. */
  writeMostly: boolean
  /** `'in-sync'`, `'faulty'`, `'recovering'` or `'removed'`. */
  state: MemberState
  /** The mirror's event count when the member was last in sync. */
  events: bigint
  /** Why the member is faulty. */
  error?: {
    /** The error code, e.g. `EIO`. */
    code: string
    /** What failed, in words. */
    message: string
  }
  /** Writes in flight on this member now. */
  writesInFlight: number
}

/** What {@link Mirror.stats} reports. */
export interface MirrorStats {
  /** Writes acknowledged since open. */
  writes: number
  /** Reads served since open. */
  reads: number
  /** Writes made behind (acknowledged before the write-mostly members had them). */
  behindWrites: number
  /** Behind writes in flight now. */
  behindInFlight: number
  /** The most behind writes in flight at once since open. */
  behindHighWater: number
  /** Bytes held in write-behind copies now. */
  behindBytes: number
  /** The most bytes held in write-behind copies at once since open. */
  behindBytesHighWater: number
  /** Writes that could have been behind but were synchronous: at the writeBehind limit, or past the memory budget. */
  behindFallbacks: {
    /** Synchronous because the bitmap's writeBehind limit was reached. */
    limit: number
    /** Synchronous because the copy would have passed behindMemoryLimit. */
    memory: number
  }
  /** Member failures seen since open. */
  memberFailures: number
  /** Some member is not in sync (see {@link Mirror.degraded}). */
  degraded: boolean
  /** The mirror's event count. */
  events: bigint
  /**
   * The I/O engine of the mirror's bitmap (as the bitmap's `stats()` reports it; file members
   * opened on the same thread share it), or null for a mirror without a bitmap.
   */
  engine: IoEngine | null
  /** Why that engine and not a better one, or that it was forced; null when it is the best or there is no bitmap. */
  engineReason: string | null
}

/** A resync's progress, given to {@link ResyncOptions.onProgress}. */
export interface ResyncProgress {
  /** Chunks visited so far. */
  chunksDone: number
  /** Chunks this resync visits in all. */
  chunksTotal: number
  /** Bytes copied so far. */
  bytesCopied: number
  /** Bytes of the chunks this resync visits. */
  bytesTotal: number
  /** Bytes copied per second so far. */
  rate: number
  /** Milliseconds since the resync started. */
  elapsedMs: number
}

/** Options of {@link Mirror.resync}. */
export interface ResyncOptions {
  /**
   * Called with the progress as chunks are copied, at most every {@link ResyncOptions.progressIntervalMs}, and once at the end.
   * If it throws, the resync stops there (as an abort would: what was not copied stays marked) and rejects with what it threw.
   */
  onProgress?: (p: ResyncProgress) => void
  /** Aborts the resync; the chunks not yet copied stay marked, so a later resync resumes. */
  signal?: AbortSignal
  /** Least milliseconds between two progress calls (the last call always comes). Default 200. */
  progressIntervalMs?: number
  /**
   * Chunks copied at once, each under its own chunk barrier (writes to a chunk being
   * copied wait; writes elsewhere go on). Each chunk is copied in pieces of up to 1 MiB,
   * one after another, so `inFlight` is also how many pieces are in flight (8 MiB at
   * most). Chunks
   * start in order but may complete out of order; the checkpoint a resync resumes from
   * only moves past chunks that all completed. A positive integer; default 4. 1 copies
   * one chunk at a time.
   */
  inFlight?: number
}

/** What a resync did. */
export interface ResyncReport {
  /** How many chunks were copied. */
  chunksCopied: number
  /** The indices of the chunks copied, in ascending order (chunks in flight may complete in any order). */
  chunks: number[]
  /** Bytes of the chunks copied (counted once, however many targets). */
  bytesCopied: number
  /** Chunks the resync had to visit. */
  chunksTotal: number
  /** How long the resync took, in milliseconds. */
  durationMs: number
  /** The slot of the member the resync started copying from. */
  source: number
  /** The slots of the members copied to. */
  targets: number[]
  /** Members that were recovering and are now in sync. */
  recovered: number[]
  /** For a recovery: whether only the dirty chunks were copied or all of them. */
  recovery?: 'bitmap' | 'full'
}

/** A check's progress, given to {@link CheckOptions.onProgress}. */
export interface CheckProgress {
  /** Chunks compared so far. */
  chunksDone: number
  /** Chunks of the mirror in all. */
  chunksTotal: number
  /** Bytes of the mirror compared so far. */
  bytesChecked: number
  /** Bytes of the mirror (every one is compared). */
  bytesTotal: number
  /** Bytes read so far, from every member together. */
  bytesRead: number
  /** 512-byte sectors found different so far. */
  mismatchSectors: number
  /** Bytes of the mirror compared per second so far. */
  rate: number
  /** Milliseconds since the check started. */
  elapsedMs: number
}

/** Options of {@link Mirror.check}. */
export interface CheckOptions {
  /** Copy every chunk that differs from the resync source to the members that differ (md's `repair`). Default false (md's `check`). */
  repair?: boolean
  /**
   * Called with the progress as chunks are compared, at most every {@link CheckOptions.progressIntervalMs}, and once at the end.
   * If it throws, the check stops there (repairs made so far are synced) and rejects with what it threw.
   */
  onProgress?: (p: CheckProgress) => void
  /** Aborts the check: it rejects with `EABORTED` (what was repaired so far is kept, and synced). */
  signal?: AbortSignal
  /**
   * Most bytes of the mirror compared per second (each is read from every member in
   * sync), so that a check can run under production load. Default: no limit.
   */
  maxRate?: number
  /** Least milliseconds between two progress calls (the last call always comes). Default 200. */
  progressIntervalMs?: number
}

/** What a check found (and, with `repair`, did). */
export interface CheckReport {
  /**
   * 512-byte sectors in which some member differs from the resync source, as md's
   * `mismatch_cnt` counts them (a sector counts once however many members differ).
   */
  mismatchSectors: number
  /** The indexes of the chunks that differ, ascending (chunk `i` covers bytes `i × chunkSize` up to the next chunk). */
  mismatchedChunks: number[]
  /** Chunks compared (all of them, unless the check was stopped). */
  chunksChecked: number
  /** Chunks of the mirror. */
  chunksTotal: number
  /** Bytes of the mirror compared. */
  bytesChecked: number
  /** Bytes read from every member together. */
  bytesRead: number
  /** Chunks copied from the source to the members that differed (0 without `repair`); written and synced before the check resolved. */
  repaired: number
  /** The slots of the members compared: those in sync when the check started. */
  members: number[]
  /** The slot of the member the others were compared with (the resync source). */
  source: number
  /** How long the check took, in milliseconds. */
  durationMs: number
}

/** What a `'member-faulty'` listener receives. */
export interface MemberFaultyEvent {
  /** The member's slot. */
  index: number
  /** Its path (or URL). */
  path: string
  /** The read, write or flush error that made it faulty. */
  error: MdBitmapError
}

/**
 * The events a {@link Mirror} emits, and what each listener receives
 * (`mirror.on(name, listener)`; see {@link Mirror.on}).
 *
 * Both are emitted on a later tick (`process.nextTick`), never from inside the write,
 * read, flush, resync, check or membership change that met them: by the time a listener
 * runs, the state the event reports is complete (a `'member-faulty'` member already shows
 * `state: 'faulty'` in {@link Mirror.members}). A listener that throws therefore cannot
 * unwind the mirror's work: the mirror goes on, and the exception surfaces the way any
 * listener's exception in Node does, as an `'uncaughtException'` of the process (as a
 * throw from a socket's `'data'` listener would); it is not turned into an `'error'`
 * event nor swallowed.
 */
export interface MirrorEvents {
  /**
   * A member failed a read, write or flush and is now `'faulty'`: the mirror is degraded
   * and clears no bit until the member is re-added (or removed for good) and resynced.
   * Emitted on the tick after the failure is seen (the member is faulty then), before
   * the call that met it settles; the failure's record in the metadata may still be on
   * its way to disk.
   */
  'member-faulty': [event: MemberFaultyEvent]
  /**
   * An error no call of the caller's can reject with: the bitmap was kicked by a failed
   * write (the next open does a full resync), a member's failure could not be recorded in
   * the metadata (`EMIRROR_METADATA`), or the end of a write in the bitmap failed. Emitted
   * (on a later tick, as above) only while an `'error'` listener is attached: without one
   * these are not thrown as an unhandled `'error'` event.
   */
  error: [error: MdBitmapError]
}
