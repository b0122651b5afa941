/**
 * What every part of a mirror works on: its metadata, bitmap and member slots, the
 * chunk barrier, the flush fence, the data-path counts, and the few rules they share.
 * {@link Mirror} owns one {@link MirrorState}; assembly, the data path, membership and
 * the resync engine are functions over it.
 *
 * Event counts, the one invariant kept here: the mirror's count is bumped at every open
 * and member change (and untrack) and written by {@link MirrorState.persist} to the
 * bitmap and the tracking bitmaps first, the metadata second (a bitmap behind the metadata is stale, and stale means full resync).
 * A member's count is the mirror's when it was last in sync: every persist stamps the
 * in-sync members with the current count. Persists run one at a time, in call order.
 *
 * @module
 */
import type { Bitmap } from '../bitmap/bitmap'
import type { FileLock } from '../io/lock'
import { MdBitmapError } from '../errors'
import type { Member, OpenMember } from '../member'
import { ChunkBarrier } from './barrier'
import { BufferPool } from '../io/buffer-pool'
import { FlushFence } from './flush-fence'
import { MemberEpochs } from './member-epochs'
import { writeMetadata, type MemberRecord, type MirrorMetadata } from './metadata'
import type { Tracking } from './tracking'
import type { MemberFaultyEvent, MirrorStats } from './types'
import { WriteOrder } from './write-order'

/** Bytes of unaligned callers' copies the mirror keeps for reuse (see {@link MirrorState.stagingPool}). */
const STAGING_BYTES = 16 * 2 ** 20

/** One member slot: its record in the metadata, and the member while it is open. */
export class Slot {
  /** The open member; undefined while faulty or removed (or not opened). */
  member: Member | undefined
  /** This member's write order (and its writes in flight). */
  readonly order = new WriteOrder()
  /** Resolves once this member's failure is on disk (set while it is being failed). */
  failing: Promise<MdBitmapError | undefined> | undefined
  constructor(public record: MemberRecord) {}
  /** Takes writes: open, and in sync or recovering. */
  get active(): boolean {
    return this.member !== undefined && (this.record.state === 'in-sync' || this.record.state === 'recovering')
  }
  /** Holds the mirror's data: open and in sync. */
  get inSync(): boolean {
    return this.member !== undefined && this.record.state === 'in-sync'
  }
}

/** A mirror's parts, opened and checked by assembly. */
export interface MirrorParts {
  /** The metadata file. */
  metadataPath: string
  /** The metadata, as it is kept up to date in memory. */
  meta: MirrorMetadata
  /** The bitmap, or null for a mirror without one. */
  bitmap: Bitmap | null
  /** One slot per member record, in the metadata's order. */
  slots: Slot[]
  /** Opens members for reAdd and addMember. */
  openMember: OpenMember
  /** The changed-block tracking bitmaps (`tracking.ts`). */
  tracking: Tracking
  /** The mirror's exclusive lock, held from create or open to close. */
  lock: FileLock
}

/** Where the state reports what no caller can be told by a rejection: the Mirror's events. Never throws (the Mirror emits on a later tick). */
export interface MirrorEventSink {
  /** A member became faulty. */
  memberFaulty(event: MemberFaultyEvent): void
  /** An error outside any call (see the `'error'` event). */
  error(error: MdBitmapError): void
}

/** The data path's counts since open, as {@link Mirror.stats} reports them. */
export type DataPathCounts = Omit<MirrorStats, 'memberFailures' | 'degraded' | 'events' | 'engine' | 'engineReason'>

export class MirrorState implements MirrorParts {
  readonly metadataPath: string
  readonly meta: MirrorMetadata
  readonly bitmap: Bitmap | null
  readonly slots: Slot[]
  readonly openMember: OpenMember
  readonly tracking: Tracking
  readonly lock: FileLock
  /** Keeps a resync's copy of a chunk and writes to that chunk apart. */
  readonly barrier = new ChunkBarrier()
  /** Which writes a flush waits for. */
  readonly flushFence = new FlushFence()
  /** Which writes were issued before a member became active (a recovery waits for them). */
  readonly memberEpochs = new MemberEpochs()
  /** The write-behind copies, reused; it keeps at most behindMemoryLimit bytes. */
  readonly behindPool: BufferPool
  /**
   * Aligned copies of callers' unaligned buffers (a `write`'s data, a `read`'s target),
   * reused: lent for as long as the I/O that uses one, at most {@link STAGING_BYTES}
   * kept between uses.
   */
  readonly stagingPool = new BufferPool(STAGING_BYTES)
  readonly counts: DataPathCounts = {
    writes: 0,
    reads: 0,
    behindWrites: 0,
    behindInFlight: 0,
    behindHighWater: 0,
    behindBytes: 0,
    behindBytesHighWater: 0,
    behindFallbacks: { limit: 0, memory: 0 },
  }
  /** Member failures since open; a resync compares it before and after to know whether a member failed meanwhile. */
  memberFailures = 0
  /** Without a bitmap: how often a recovery set `resyncFrom` back to 0; a resync running then leaves the checkpoint to the new recovery. */
  resyncFromResets = 0
  /** Whose turn it is among the fast in-sync members to serve the next read. */
  readerTurn = 0
  /** The members' largest direct-I/O alignment (at least 512). */
  alignment = 512
  /** close() was called: no new request is taken. */
  closing = false
  /** The bitmap is closed: its event count is no longer written. */
  bitmapClosed = false
  /** The one sync action running now (a resync, a recovery or a check), if one is. */
  syncAction: Promise<unknown> | undefined
  /** Aborts the running sync action (close does). */
  syncAbort: AbortController | undefined
  /** The last metadata write queued; the next one runs after it. */
  private persisted: Promise<unknown> = Promise.resolve()

  constructor(
    parts: MirrorParts,
    /** Where events go. */
    readonly events: MirrorEventSink,
  ) {
    this.metadataPath = parts.metadataPath
    this.meta = parts.meta
    this.bitmap = parts.bitmap
    this.slots = parts.slots
    this.openMember = parts.openMember
    this.tracking = parts.tracking
    this.lock = parts.lock
    this.behindPool = new BufferPool(parts.meta.behindMemoryLimit)
    this.computeAlignment()
  }

  /** Writes the event count to the bitmap, then the metadata; one at a time, in call order. */
  persist(): Promise<void> {
    const run = async () => {
      for (const s of this.slots) if (s.record.state === 'in-sync') s.record.events = this.meta.events
      const bm = this.bitmap
      if (bm && !bm.kicked && !this.bitmapClosed) await bm.setEvents(this.meta.events).catch(() => {})
      await this.tracking.setEvents(this.meta.events)
      await writeMetadata(this.metadataPath, this.meta)
    }
    const p = this.persisted.then(run)
    this.persisted = p.catch(() => {})
    return p
  }

  /** Some member is not in sync. */
  get degraded(): boolean {
    return this.slots.some((s) => s.record.state !== 'in-sync')
  }

  /**
   * Runs `run` as the mirror's one sync action (resync, recovery or check): rejects
   * EMIRROR_BUSY while another runs; `run`'s signal fires on `signal` or on close.
   */
  startSyncAction<T>(signal: AbortSignal | undefined, run: (signal: AbortSignal) => Promise<T>): Promise<T> {
    if (this.syncAction) return Promise.reject(new MdBitmapError('EMIRROR_BUSY', 'a resync, recovery or check is already running; wait for it, or abort it with its signal'))
    const abort = new AbortController()
    this.syncAbort = abort
    const running = run(signal ? AbortSignal.any([signal, abort.signal]) : abort.signal).finally(() => {
      this.syncAction = undefined
      this.syncAbort = undefined
    })
    this.syncAction = running
    return running
  }

  /** Tells the bitmap whether the mirror is degraded (then it clears no bit, and every write ends NEEDED). */
  updateDegraded(): void {
    if (this.bitmap) this.bitmap.degraded = this.degraded
  }

  computeAlignment(): void {
    this.alignment = Math.max(512, ...this.slots.filter((s) => s.member).map((s) => s.member!.alignment))
  }

  /** The member a resync copies from: the first in-sync member not write-mostly, else the first in sync. */
  sourceSlot(): Slot | undefined {
    return this.slots.find((s) => s.inSync && !s.record.writeMostly) ?? this.slots.find((s) => s.inSync)
  }

  slotAt(index: number): Slot {
    const slot = this.slots[index]
    if (!slot) throw new MdBitmapError('EINVAL', `no member ${index}: the mirror has ${this.slots.length}`)
    return slot
  }

  checkOpen(what: string): void {
    if (this.closing) throw new MdBitmapError('ECLOSED', `${what}: the mirror is closed`)
  }

  checkRange(what: string, offset: number, len: number): void {
    const a = this.alignment
    if (!Number.isSafeInteger(offset) || offset < 0 || !Number.isSafeInteger(len) || len <= 0) {
      throw new MdBitmapError('EINVAL', `${what}: offset ${offset} and length ${len} must be non-negative integers, length above 0`)
    }
    if (offset % a !== 0 || len % a !== 0) {
      throw new MdBitmapError('EALIGN', `${what} of ${len} bytes at ${offset}: offsets and lengths must be multiples of ${a} bytes (the members' direct-I/O alignment)`)
    }
    if (offset + len > this.meta.size) {
      throw new MdBitmapError('EOUT_OF_RANGE', `${what} of ${len} bytes at ${offset} goes past the end of the mirror (${this.meta.size} bytes)`)
    }
  }

  failedError(what: string): MdBitmapError {
    const why = this.slots.map((s, i) => `member ${i} ${s.record.path}: ${s.record.state}${s.record.error ? ` (${s.record.error.code})` : ''}`).join('; ')
    return new MdBitmapError('EMIRROR_FAILED', `${what}: no member in sync is left (${why}); re-add a member with reAdd`)
  }
}
