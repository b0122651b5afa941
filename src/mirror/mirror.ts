/**
 * A raid1-style mirror over a write-intent bitmap, with write-mostly members and
 * write-behind.
 *
 * A write, synchronous or behind:
 *
 * ```
 *   write(buf, offset)
 *     │ enter the chunks' barrier (waits while a resync copies one of them)
 *     │ decide: behind? ── needs a write-mostly member, a bitmap that allows
 *     │                    write-behind and is not kicked, behind writes below
 *     │                    the bitmap's limit, and the copy within behindMemoryLimit
 *     │ bitmap.startWrite ─ bits set and durable (group commit)
 *     ├──────────── sync ─────────────┐          ┌──────────── behind ────────────┐
 *     │ write every active member     │          │ fast members: the caller's buf │
 *     │ (the caller's buffer)         │          │ write-mostly: a private copy   │
 *     │ wait for all                  │          │ wait for the fast ones only    │
 *     │ ack ◄─────────────────────────┘          │ ack ◄──────────────────────────┘
 *     │                                          │   …the slow members go on…
 *     └── every member done ──► bitmap.endWrite(success = every member had it)
 *                               (only now may the daemon start to clear the bits)
 *                               leave the barrier
 * ```
 *
 * The bits of a behind write stay set until the slowest member has it; Linux 6.14
 * ends the bitmap write when the fast members finish, which would let the daemon
 * clear a bit over a lagging member. Here endWrite comes after every member.
 *
 * A write is acknowledged if a member that may acknowledge it has it: an in-sync
 * member that is not write-mostly, or, when there is none, an in-sync write-mostly
 * member. A member whose write or read fails becomes faulty: the mirror is degraded,
 * every write ends NEEDED, no bit is cleared, and the failure is recorded in the
 * metadata before the write that found it settles (so a crash cannot make a failed
 * member a resync source).
 *
 * Members states: in-sync ──fail──► faulty ──reAdd──► recovering ──resync──► in-sync;
 * in-sync/faulty ──removeMember──► removed ──reAdd──► recovering. addMember starts a
 * new slot in recovering with a full recovery.
 *
 * Event counts: the mirror's count is bumped at every open and member change and
 * written to the bitmap first, the metadata second (a bitmap behind the metadata is
 * stale, and stale means full resync). A member's count is the mirror's when it was
 * last in sync. reAdd copies only the dirty chunks if the member's count is not older
 * than the bitmap's events_cleared (no bit it needs was cleared since it left);
 * otherwise every chunk.
 *
 * @module
 */
import { EventEmitter } from 'node:events'
import { randomBytes } from 'node:crypto'
import { access } from 'node:fs/promises'
import { resolve } from 'node:path'
import { ChunkBarrier } from './barrier'
import { Bitmap } from '../bitmap/bitmap'
import { MdBitmapError, toMdBitmapError } from '../errors'
import { FileMember, openFileMember, type Member, type OpenMember } from '../member'
import { metadataPathFor, readMetadata, writeMetadata, type MemberRecord, type MemberState, type MirrorMetadata } from './metadata'
import { allocAligned, isAligned } from '../io/aligned'
import { parseUuid } from '../bitmap/superblock'
import { WriteOrder } from './write-order'

export type { Member, MemberSpec, OpenMember } from '../member'
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
  /** Behind writes in flight now, and the most at once. */
  behindInFlight: number
  /** The most behind writes in flight at once since open. */
  behindHighWater: number
  /** Bytes held in write-behind copies now, and the most at once. */
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
  /** Called with the progress as chunks are copied, at most every {@link ResyncOptions.progressIntervalMs}, and once at the end. */
  onProgress?: (p: ResyncProgress) => void
  /** Aborts the resync; the chunks not yet copied stay marked, so a later resync resumes. */
  signal?: AbortSignal
  /** Least milliseconds between two progress calls (the last call always comes). Default 200. */
  progressIntervalMs?: number
}

/** What a resync did. */
export interface ResyncReport {
  /** Chunks copied, and their indices. */
  chunksCopied: number
  /** The indices of the chunks copied. */
  chunks: number[]
  /** Bytes of the chunks copied (counted once, however many targets). */
  bytesCopied: number
  /** Chunks the resync had to visit. */
  chunksTotal: number
  /** How long the resync took, in milliseconds. */
  durationMs: number
  /** The member copied from, and the members copied to. */
  source: number
  /** The slots of the members copied to. */
  targets: number[]
  /** Members that were recovering and are now in sync. */
  recovered: number[]
  /** For a recovery: whether only the dirty chunks were copied or all of them. */
  recovery?: 'bitmap' | 'full'
}

const DEFAULT_BEHIND_MEMORY = 64 * 2 ** 20
const COPY_PIECE = 2 ** 20
const COPY_DEPTH = 4
const isUrl = (p: string) => /^[a-z][a-z0-9+.-]*:\/\//i.test(p)

class Slot {
  member: Member | undefined
  readonly order = new WriteOrder()
  /** Resolves once this member's failure is on disk (set while it is being failed). */
  failing: Promise<MdBitmapError | undefined> | undefined
  constructor(public record: MemberRecord) {}
  get active(): boolean {
    return this.member !== undefined && (this.record.state === 'in-sync' || this.record.state === 'recovering')
  }
  get inSync(): boolean {
    return this.member !== undefined && this.record.state === 'in-sync'
  }
}

/**
 * A mirror of one block range over several members, with a write-intent bitmap so that
 * a crash or a member that returns late costs a copy of the dirty chunks only.
 *
 * @example
 * ```ts
 * import { Mirror, allocAligned } from 'md-bitmap'
 *
 * const mirror = await Mirror.create({
 *   bitmap: '/var/lib/vm/disk.bitmap',
 *   members: [{ path: '/var/lib/vm/disk.img' }, { path: '/mnt/nas/disk.img', writeMostly: true }],
 *   size: 10 * 2 ** 30, chunkSize: 64 * 2 ** 20, writeBehind: 256,
 * })
 * const buf = allocAligned(65536).fill(1)
 * await mirror.write(buf, 0)          // the local member has it; the NAS catches up
 * await mirror.close()
 *
 * // after a crash:
 * const again = await Mirror.open({ bitmap: '/var/lib/vm/disk.bitmap' })
 * const report = await again.resync({ onProgress: (p) => console.log(p.bytesCopied) })
 * console.log(`copied ${report.bytesCopied} bytes`)
 * ```
 */
export class Mirror extends EventEmitter {
  private readonly barrier = new ChunkBarrier()
  private metaChain: Promise<unknown> = Promise.resolve()
  private closing = false
  private bitmapClosed = false
  private rr = 0
  private resyncing: Promise<ResyncReport> | undefined
  private resyncAbort: AbortController | undefined
  private failures = 0
  private _alignment = 512
  private readonly s = {
    writes: 0,
    reads: 0,
    behindWrites: 0,
    behindInFlight: 0,
    behindHighWater: 0,
    behindBytes: 0,
    behindBytesHighWater: 0,
    fallbackLimit: 0,
    fallbackMemory: 0,
  }

  private constructor(
    /** The metadata file. */
    readonly metadataPath: string,
    private readonly meta: MirrorMetadata,
    /** The bitmap, or null for a mirror without one. */
    readonly bitmap: Bitmap | null,
    private readonly slots: Slot[],
    private readonly openMember: OpenMember,
  ) {
    super()
    this.computeAlignment()
  }

  /** Creates a mirror: its bitmap, its metadata, and member files that do not exist yet (sparse). */
  static async create(o: MirrorCreateOptions): Promise<Mirror> {
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
    const metaPath = resolve(o.metadata ?? metadataPathFor(bitmapPath!))
    if (!o.overwrite && (await access(metaPath).then(() => true, () => false))) {
      throw new MdBitmapError('EEXIST', `${metaPath} exists: a mirror was already created here; open it with Mirror.open, or pass overwrite: true`)
    }
    const openMember = o.openMember ?? openFileMember
    const paths = o.members.map((m) => (isUrl(m.path) ? m.path : resolve(m.path)))
    if (new Set(paths).size !== paths.length) throw new MdBitmapError('EINVAL', `a member is listed twice: ${paths.join(', ')}`)

    const slots: Slot[] = []
    let bitmap: Bitmap | null = null
    try {
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
      const mirror = new Mirror(metaPath, meta, bitmap, slots, openMember)
      await mirror.start()
      return mirror
    } catch (e) {
      await releaseAll(bitmap, slots)
      throw e
    }
  }

  /** Reassembles a mirror from its metadata: opens the bitmap and every member that was in sync or recovering. */
  static async open(o: MirrorOpenOptions): Promise<Mirror> {
    if (!o.bitmap && !o.metadata) throw new MdBitmapError('EINVAL', 'Mirror.open needs the bitmap path (or the metadata path of a mirror without a bitmap)')
    const metaPath = resolve(o.metadata ?? metadataPathFor(o.bitmap!))
    const meta = await readMetadata(metaPath)
    const bitmapPath = meta.bitmap === null ? null : resolve(o.bitmap ?? meta.bitmap)
    const openMember = o.openMember ?? openFileMember
    const slots = meta.members.map((r) => new Slot(r))
    let bitmap: Bitmap | null = null
    try {
      if (bitmapPath) {
        // events: a bitmap older than the mirror missed changes and is taken as stale.
        bitmap = await Bitmap.open(bitmapPath, { uuid: meta.uuid, events: meta.events, mode: o.bitmapMode, allowVolatile: o.allowVolatile })
        if (bitmap.size !== meta.size || bitmap.chunkSize !== meta.chunkSize) {
          throw new MdBitmapError(
            'EMIRROR_METADATA',
            `${bitmapPath} covers ${bitmap.size} bytes in ${bitmap.chunkSize}-byte chunks but ${metaPath} says ${meta.size} in ${meta.chunkSize}; they belong to different mirrors`,
          )
        }
      }
      for (const [index, slot] of slots.entries()) {
        if (slot.record.state !== 'in-sync' && slot.record.state !== 'recovering') continue
        try {
          slot.member = await openChecked(openMember, slot.record.path, slot.record.writeMostly, index, meta.size)
        } catch (e) {
          // A missing member degrades the mirror; it does not stop it.
          const err = asError(e)
          slot.record.state = 'faulty'
          slot.record.error = { code: err.code, message: err.message }
        }
      }
      if (!slots.some((s) => s.inSync)) {
        const why = meta.members.map((m, i) => `member ${i} ${m.path}: ${m.state}${m.error ? ` (${m.error.message})` : ''}`).join('; ')
        throw new MdBitmapError('EMIRROR_FAILED', `no member of the mirror in ${metaPath} is in sync and available: ${why}`)
      }
      // Without a bitmap, an unclean shutdown may have left any chunk different, below a
      // resync checkpoint too (writes went on there): the resync starts over.
      if (!meta.clean && !bitmap) meta.resyncFrom = 0
      const mirror = new Mirror(metaPath, meta, bitmap, slots, openMember)
      await mirror.start()
      return mirror
    } catch (e) {
      await releaseAll(bitmap, slots)
      throw e
    }
  }

  private async start(): Promise<void> {
    this.meta.events++
    this.meta.clean = false
    this.updateDegraded()
    if (this.bitmap) {
      this.bitmap.beforeClear = () => this.flushForClear()
      this.bitmap.on('error', (e: MdBitmapError) => {
        // The bitmap stopped: record a newer event count than it holds, so the next
        // open finds it stale and resyncs everything, even if STALE never reached it.
        this.meta.events++
        void this.persist().catch(() => {})
        this.report(e)
      })
    }
    await this.persist()
  }

  // -- geometry and state -------------------------------------------------------------

  /** Bytes of data mirrored. */
  get size(): number {
    return this.meta.size
  }
  /** Bytes per bitmap bit, and the unit of resync. */
  get chunkSize(): number {
    return this.meta.chunkSize
  }
  /** The mirror's identity, as 32 hex digits. */
  get uuid(): string {
    return this.meta.uuid
  }
  /** Offsets and lengths of reads and writes must be multiples of this. */
  get alignment(): number {
    return this._alignment
  }
  /** The mirror's event count: bumped at every open and member change. */
  get events(): bigint {
    return this.meta.events
  }
  /** Some member is not in sync: no bit is cleared, and a member lacks data. */
  get degraded(): boolean {
    return this.slots.some((s) => s.record.state !== 'in-sync')
  }
  /** Whether some chunk is marked for resync (or, without a bitmap, a full resync is due). */
  get needsResync(): boolean {
    return this.bitmap ? this.bitmap.neededChunks().length > 0 : this.meta.resyncFrom !== null
  }

  /** Every member slot, with its state. */
  get members(): MemberInfo[] {
    return this.slots.map((s, index) => {
      const info: MemberInfo = {
        index,
        path: s.record.path,
        writeMostly: s.record.writeMostly,
        state: s.record.state,
        events: s.record.events,
        writesInFlight: s.order.size,
      }
      if (s.record.error) info.error = { ...s.record.error }
      return info
    })
  }

  /** Counts of writes, reads, write-behind and failures since open. */
  stats(): MirrorStats {
    const s = this.s
    return {
      writes: s.writes,
      reads: s.reads,
      behindWrites: s.behindWrites,
      behindInFlight: s.behindInFlight,
      behindHighWater: s.behindHighWater,
      behindBytes: s.behindBytes,
      behindBytesHighWater: s.behindBytesHighWater,
      behindFallbacks: { limit: s.fallbackLimit, memory: s.fallbackMemory },
      memberFailures: this.failures,
      degraded: this.degraded,
      events: this.meta.events,
    }
  }

  // -- writes -------------------------------------------------------------------------

  /**
   * Writes `data` at `offset` on every member. Resolves once the bits are durable and
   * every member that must acknowledge has the data (behind: the write-mostly ones may
   * still be writing a private copy, so `data` may be reused at once). Rejects if no
   * member that may acknowledge it has it.
   */
  async write(data: Uint8Array, offset: number): Promise<void> {
    this.checkOpen('write')
    this.checkRange('write', offset, data.length)
    const len = data.length
    const buf = isAligned(data, this._alignment) ? data : copyAligned(data, this._alignment)
    const first = Math.floor(offset / this.meta.chunkSize)
    const last = Math.floor((offset + len - 1) / this.meta.chunkSize)
    await this.barrier.enterWrite(first, last)
    // Fast members first: their writes are issued before the write-behind copy is made.
    const active = this.slots.filter((s) => s.active).sort((a, b) => Number(a.record.writeMostly) - Number(b.record.writeMostly))
    const fastInSync = active.filter((s) => s.inSync && !s.record.writeMostly)
    // Who may acknowledge: the in-sync fast members, or the in-sync slow ones if no fast one is left.
    const ackers = new Set(fastInSync.length ? fastInSync : active.filter((s) => s.inSync))
    let behind = false
    try {
      // Closed while this write waited at the barrier: the bitmap may be gone.
      this.checkOpen('write')
      if (ackers.size === 0) throw this.failedError('write')
      behind = fastInSync.length > 0 && this.mayGoBehind(active, len)
      if (behind) this.reserveBehind(len)
      if (this.bitmap) await this.bitmap.startWrite(offset, len, behind)
    } catch (e) {
      if (behind) this.releaseBehind(len)
      this.barrier.exitWrite(first, last)
      throw e
    }
    this.s.writes++
    let copy: Uint8Array | undefined
    let everyMember = true
    const outcomes = active.map((slot) => {
      const payload = behind && slot.record.writeMostly ? (copy ??= copyAligned(buf, this._alignment)) : buf
      return slot.order.run(offset, len, () => slot.member!.write(payload, offset)).then(
        () => undefined as MdBitmapError | undefined,
        async (e) => {
          everyMember = false
          return (await this.failMember(slot, e)) ?? asError(e)
        },
      )
    })
    const all = Promise.all(outcomes).then(() => {
      try {
        this.bitmap?.endWrite(offset, len, everyMember, behind)
      } catch (e) {
        this.report(asError(e))
      }
      if (behind) this.releaseBehind(len)
      this.barrier.exitWrite(first, last)
    })
    // Sync: wait for every member. Behind: for the fast ones (the write-mostly ones go on).
    const waitFor = active.map((slot, i) => ({ slot, p: outcomes[i] })).filter(({ slot }) => !behind || !slot.record.writeMostly)
    const results = await Promise.all(waitFor.map(({ slot, p }) => p.then((err) => ({ slot, err }))))
    if (!behind) await all
    const metaErr = results.find((r) => r.err?.code === 'EMIRROR_METADATA')
    if (metaErr) throw metaErr.err
    if (!results.some((r) => ackers.has(r.slot) && r.err === undefined)) {
      const errs = results.filter((r) => ackers.has(r.slot)).map((r) => `${r.slot.record.path}: ${r.err?.message}`)
      throw new MdBitmapError('EMIRROR_WRITE', `write of ${len} bytes at ${offset} reached no member that may acknowledge it (${errs.join('; ')}); the chunk is marked for resync`, {
        cause: results[0]?.err,
      })
    }
  }

  private mayGoBehind(active: Slot[], len: number): boolean {
    const bm = this.bitmap
    if (!bm || bm.kicked || bm.maxWriteBehind === 0) return false
    if (!active.some((s) => s.record.writeMostly)) return false
    if (this.s.behindInFlight >= bm.maxWriteBehind) {
      this.s.fallbackLimit++
      return false
    }
    if (this.s.behindBytes + len > this.meta.behindMemoryLimit) {
      this.s.fallbackMemory++
      return false
    }
    return true
  }

  private reserveBehind(len: number): void {
    const s = this.s
    s.behindWrites++
    s.behindInFlight++
    s.behindBytes += len
    s.behindHighWater = Math.max(s.behindHighWater, s.behindInFlight)
    s.behindBytesHighWater = Math.max(s.behindBytesHighWater, s.behindBytes)
  }

  private releaseBehind(len: number): void {
    this.s.behindInFlight--
    this.s.behindBytes -= len
  }

  // -- reads --------------------------------------------------------------------------

  /**
   * Reads `target.length` bytes at `offset`: from an in-sync member that is not
   * write-mostly, in turn; from a write-mostly one only when no other can serve, and
   * then only once its behind writes to the range completed. A chunk marked for resync
   * is read from the resync source, so two reads agree. A failed member is marked and
   * the next one tried.
   */
  async read(target: Uint8Array, offset: number): Promise<void> {
    this.checkOpen('read')
    this.checkRange('read', offset, target.length)
    const len = target.length
    const buf = isAligned(target, this._alignment) ? target : allocAligned(len, this._alignment)
    const tried = new Set<Slot>()
    const errors: string[] = []
    for (let slot = this.pickReader(offset, len, tried); slot; slot = this.pickReader(offset, len, tried)) {
      tried.add(slot)
      try {
        if (slot.record.writeMostly) await slot.order.drained(offset, len)
        await slot.member!.read(buf, offset)
      } catch (e) {
        errors.push(`${slot.record.path}: ${asError(e).message}`)
        const metaErr = await this.failMember(slot, e)
        if (metaErr) throw metaErr
        continue
      }
      if (buf !== target) target.set(buf)
      this.s.reads++
      return
    }
    if (errors.length === 0) throw this.failedError('read')
    throw new MdBitmapError('EMIRROR_READ', `read of ${len} bytes at ${offset} failed on every member that could serve it: ${errors.join('; ')}`)
  }

  private pickReader(offset: number, len: number, tried: Set<Slot>): Slot | undefined {
    const source = this.sourceSlot()
    if (source && !tried.has(source) && this.rangeNeedsSync(offset, len)) return source
    const fast = this.slots.filter((s) => s.inSync && !s.record.writeMostly && !tried.has(s))
    if (fast.length) return fast[this.rr++ % fast.length]
    return this.slots.find((s) => s.inSync && !tried.has(s))
  }

  private rangeNeedsSync(offset: number, len: number): boolean {
    if (!this.bitmap) return this.meta.resyncFrom !== null
    const cs = this.meta.chunkSize
    for (let o = Math.floor(offset / cs) * cs; o < offset + len; o += cs) if (this.bitmap.chunkNeedsResync(o)) return true
    return false
  }

  /** The member a resync copies from: the first in-sync member not write-mostly, else the first in sync. */
  private sourceSlot(): Slot | undefined {
    return this.slots.find((s) => s.inSync && !s.record.writeMostly) ?? this.slots.find((s) => s.inSync)
  }

  // -- flush --------------------------------------------------------------------------

  /**
   * Makes every completed write durable on every member (fdatasync, or FLUSH).
   * Guarantee: a write acknowledged before `flush()` resolved survives power loss on
   * every member that is not write-mostly; where a write-mostly member may still lag,
   * the chunk's bit is set on stable storage, so a resync repairs it.
   */
  async flush(): Promise<void> {
    this.checkOpen('flush')
    await this.flushMembers(true)
  }

  private async flushMembers(strict: boolean): Promise<void> {
    const active = this.slots.filter((s) => s.active)
    const metaErrs = await Promise.all(active.map((s) => s.member!.flush().then(() => undefined, (e) => this.failMember(s, e))))
    const metaErr = metaErrs.find((e) => e)
    if (strict && metaErr) throw metaErr
    if (strict && !this.slots.some((s) => s.inSync)) throw this.failedError('flush')
  }

  /** Flushes the given members; a failure fails that member. Never rejects. */
  private async flushSlots(slots: Slot[]): Promise<void> {
    await Promise.all(slots.filter((s) => s.active).map((s) => s.member!.flush().catch((e) => this.failMember(s, e))))
  }

  /** The bitmap daemon's hook: members durable before a bit is cleared. Never rejects. */
  private flushForClear(): Promise<void> {
    return this.flushMembers(false).catch(() => {})
  }

  // -- member failures and membership --------------------------------------------------

  /**
   * Marks a member faulty: degraded at once (synchronously, before any endWrite can
   * follow), and on disk before the promise resolves. Resolves to the error of the
   * metadata write if that failed; never rejects.
   */
  private failMember(slot: Slot, e: unknown): Promise<MdBitmapError | undefined> {
    if (slot.failing) return slot.failing
    if (!slot.active) return Promise.resolve(undefined)
    const err = asError(e)
    slot.record.state = 'faulty'
    slot.record.error = { code: err.code, message: err.message }
    this.failures++
    this.meta.events++
    this.updateDegraded()
    const index = this.slots.indexOf(slot)
    this.emit('member-faulty', { index, path: slot.record.path, error: err })
    slot.failing = this.persist().then(
      () => undefined,
      (pe) => {
        const me = new MdBitmapError('EMIRROR_METADATA', `member ${slot.record.path} failed (${err.message}) and the failure could not be recorded: ${asError(pe).message}`, { cause: pe })
        this.report(me)
        return me
      },
    )
    void slot.failing.then(() => {
      slot.failing = undefined
    })
    return slot.failing
  }

  /**
   * Takes a member out. Its slot stays (the mirror is degraded) so that {@link reAdd}
   * can bring it back cheaply; `forget: true` drops the slot for good.
   */
  async removeMember(index: number, options: { forget?: boolean } = {}): Promise<void> {
    this.checkOpen('removeMember')
    const slot = this.slotAt(index)
    if (this.resyncing) throw new MdBitmapError('EMIRROR_BUSY', 'a resync or recovery is running; wait for it (or abort it) before removing a member')
    if (slot.inSync && this.slots.filter((s) => s.inSync).length === 1) {
      throw new MdBitmapError('EMIRROR_LAST_MEMBER', `member ${index} (${slot.record.path}) is the last one in sync; add another first`)
    }
    const member = slot.member
    slot.record.state = 'removed'
    if (options.forget) {
      this.slots.splice(index, 1)
      this.meta.members.splice(index, 1)
    }
    slot.member = undefined
    this.meta.events++
    this.updateDegraded()
    await this.persist()
    await slot.order.idle()
    await member?.close().catch(() => {})
    this.computeAlignment()
  }

  /**
   * Brings a faulty or removed member back (optionally at a new `path`) and recovers
   * it: only the dirty chunks if its event count allows, else every chunk. Resolves
   * with the recovery's report once it is in sync.
   */
  async reAdd(index: number, options: ResyncOptions & { path?: string } = {}): Promise<ResyncReport> {
    this.checkOpen('reAdd')
    const slot = this.slotAt(index)
    if (slot.record.state !== 'faulty' && slot.record.state !== 'removed') {
      throw new MdBitmapError('EMIRROR_MEMBER', `member ${index} (${slot.record.path}) is ${slot.record.state}; only a faulty or removed member can be re-added`)
    }
    await slot.failing
    const path = options.path === undefined ? slot.record.path : isUrl(options.path) ? options.path : resolve(options.path)
    const old = slot.member
    slot.member = undefined
    await slot.order.idle()
    await old?.close().catch(() => {})
    const member = await openChecked(this.openMember, path, slot.record.writeMostly, index, this.meta.size)
    const bm = this.bitmap
    const partial = bm !== null && !bm.kicked && slot.record.events >= bm.stats().eventsCleared && !slot.record.fullRecovery
    await this.startRecovery(slot, member, path, !partial)
    return { ...(await this.runResyncAfterOthers(options)), recovery: partial ? 'bitmap' : 'full' }
  }

  /** Adds a new member (created sparse if it is a path that does not exist) and recovers it fully. */
  async addMember(m: MemberOptions, options: ResyncOptions = {}): Promise<ResyncReport> {
    this.checkOpen('addMember')
    const path = isUrl(m.path) ? m.path : resolve(m.path)
    if (this.slots.some((s) => s.record.path === path && s.record.state !== 'removed')) {
      throw new MdBitmapError('EMIRROR_MEMBER', `${path} is already a member`)
    }
    if (!isUrl(path)) await FileMember.ensure(path, this.meta.size)
    const index = this.slots.length
    const member = await openChecked(this.openMember, path, m.writeMostly === true, index, this.meta.size)
    const slot = new Slot({ path, writeMostly: m.writeMostly === true, state: 'removed', events: 0n })
    this.slots.push(slot)
    this.meta.members.push(slot.record)
    await this.startRecovery(slot, member, path, true)
    return { ...(await this.runResyncAfterOthers(options)), recovery: 'full' }
  }

  private async startRecovery(slot: Slot, member: Member, path: string, full: boolean): Promise<void> {
    try {
      // Marked durably before the member takes writes: a crash from here on resumes the recovery.
      if (full) {
        if (this.bitmap) await this.bitmap.markNeeded(0, this.meta.size)
        else this.meta.resyncFrom = 0
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
    this.meta.events++
    this.updateDegraded()
    this.computeAlignment()
    await this.persist()
  }

  private async runResyncAfterOthers(options: ResyncOptions): Promise<ResyncReport> {
    while (this.resyncing) await this.resyncing.catch(() => {})
    return this.resync(options)
  }

  // -- resync -------------------------------------------------------------------------

  /**
   * Copies every chunk that needs it from the source member (the first in-sync member
   * that is not write-mostly) to every other active member, and completes recovering
   * members. Writes go on meanwhile; a chunk being copied holds its writers back.
   * Abort it with `signal`: what was not copied stays marked, so calling it again resumes.
   */
  resync(options: ResyncOptions = {}): Promise<ResyncReport> {
    try {
      this.checkOpen('resync')
    } catch (e) {
      return Promise.reject(e)
    }
    if (this.resyncing) return Promise.reject(new MdBitmapError('EMIRROR_BUSY', 'a resync or recovery is already running; wait for it, or abort it with its signal'))
    const abort = new AbortController()
    this.resyncAbort = abort
    const signal = options.signal ? AbortSignal.any([options.signal, abort.signal]) : abort.signal
    this.resyncing = this.runResync({ ...options, signal }).finally(() => {
      this.resyncing = undefined
      this.resyncAbort = undefined
    })
    return this.resyncing
  }

  private async runResync(o: ResyncOptions & { signal: AbortSignal }): Promise<ResyncReport> {
    const t0 = performance.now()
    const generation = this.failures
    const cs = this.meta.chunkSize
    const nChunks = Math.ceil(this.meta.size / cs)
    const chunkLen = (c: number) => Math.min(cs, this.meta.size - c * cs)
    let source = this.sourceSlot()
    if (!source) throw this.failedError('resync')
    // The members active now; one re-added meanwhile missed the chunks already copied,
    // so it waits for a resync of its own (reAdd runs one) rather than join this one.
    const initial = this.slots.filter((s) => s.active && s !== source)
    const targets = () => initial.filter((s) => s.active && s !== source)
    const report: ResyncReport = {
      chunksCopied: 0,
      chunks: [],
      bytesCopied: 0,
      chunksTotal: 0,
      durationMs: 0,
      source: this.slots.indexOf(source),
      targets: targets().map((s) => this.slots.indexOf(s)),
      recovered: [],
    }
    const bm = this.bitmap
    const list = bm ? bm.neededChunks() : this.meta.resyncFrom === null ? [] : range(Math.floor(this.meta.resyncFrom / cs), nChunks)
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
    let copiedUpTo = this.meta.resyncFrom ?? 0
    try {
      if (targets().length > 0) {
        for (const c of list) {
          if (o.signal.aborted) throw aborted(o.signal)
          if (targets().length === 0) break
          await this.barrier.lockSync(c)
          let failed = false
          try {
            // Degraded even once the targets have this chunk? Then it stays NEEDED for the missing members.
            const stillDegraded = this.slots.some((s) => s.record.state !== 'in-sync' && !targets().includes(s))
            const need = bm ? bm.startSync(c * cs, stillDegraded) : true
            if (need) {
              for (;;) {
                const r = await this.copyChunk(c * cs, chunkLen(c), source, targets(), o.signal)
                if (r === 'source-failed') {
                  // Another in-sync member can serve, unless only a write-mostly one (which may lag) is left.
                  const next = this.sourceSlot()
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
            this.barrier.unlockSync(c)
          }
          done++
          copiedUpTo = (c + 1) * cs
          bm?.condEndSync((c + 1) * cs)
          if (!bm && performance.now() - lastCheckpoint > 5000) {
            lastCheckpoint = performance.now()
            // The copies must be durable before the checkpoint says they were made.
            await this.flushSlots(targets())
            this.meta.resyncFrom = (c + 1) * cs
            await this.persist()
          }
          progress(false)
        }
      }
    } catch (e) {
      if (!bm && this.meta.resyncFrom !== null) {
        await this.flushSlots(targets())
        this.meta.resyncFrom = Math.max(this.meta.resyncFrom, copiedUpTo)
        await this.persist().catch(() => {})
      }
      throw e
    } finally {
      bm?.closeSync()
    }
    // Complete: only if every target took every chunk (no member failed meanwhile),
    // durably: a recovered member may become the next resync's source.
    if (this.failures === generation && targets().length > 0) await this.flushSlots(targets())
    if (this.failures === generation && targets().length > 0) {
      for (const s of targets()) {
        if (s.record.state === 'recovering') {
          s.record.state = 'in-sync'
          delete s.record.fullRecovery
          report.recovered.push(this.slots.indexOf(s))
        }
      }
      if (!bm) this.meta.resyncFrom = null
      this.meta.events++
      this.updateDegraded()
      await this.persist()
      // Chunks left NEEDED by the degraded time (copied, or written to every member
      // since) are now identical everywhere: end them so the daemon may clear them.
      if (bm && !bm.degraded && this.failures === generation) {
        for (const c of bm.neededChunks()) {
          await this.barrier.lockSync(c)
          try {
            if (bm.startSync(c * cs)) bm.endSync(c * cs, false)
          } finally {
            this.barrier.unlockSync(c)
          }
        }
      }
    }
    progress(true)
    report.durationMs = performance.now() - t0
    return report
  }

  /** Copies one chunk; target failures fail those members. */
  private async copyChunk(offset: number, len: number, source: Slot, targets: Slot[], signal: AbortSignal): Promise<'ok' | 'target-failed' | 'source-failed' | 'aborted'> {
    type Result = 'ok' | 'target-failed' | 'source-failed' | 'aborted'
    let result = 'ok' as Result
    const pieces: number[] = []
    for (let o = 0; o < len; o += COPY_PIECE) pieces.push(o)
    const worker = async () => {
      const buf = allocAligned(Math.min(COPY_PIECE, len), this._alignment)
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
          await this.failMember(source, e)
          result = 'source-failed'
          return
        }
        await Promise.all(
          targets.filter((t) => t.active).map((t) =>
            t.member!.write(view, offset + p).catch(async (e) => {
              await this.failMember(t, e)
              if (result === 'ok') result = 'target-failed'
            }),
          ),
        )
      }
    }
    await Promise.all(Array.from({ length: Math.min(COPY_DEPTH, pieces.length) }, worker))
    if ((result as Result) === 'aborted') throw aborted(signal)
    return result
  }

  // -- close --------------------------------------------------------------------------

  /**
   * Stops a running resync, waits for every write (behind ones included), flushes the
   * members, closes the bitmap (clearing what may be cleared) and records a clean
   * shutdown. Rejects with the first error met, after closing everything all the same.
   */
  async close(): Promise<void> {
    if (this.closing) return
    this.closing = true
    this.resyncAbort?.abort()
    await this.resyncing?.catch(() => {})
    await this.barrier.idle()
    const errors: unknown[] = []
    await this.flushMembers(false).catch((e) => errors.push(e))
    if (this.bitmap) {
      await this.bitmap.close().catch((e) => errors.push(e))
      this.bitmapClosed = true
    }
    this.meta.clean = errors.length === 0
    await this.persist().catch((e) => errors.push(e))
    for (const s of this.slots) {
      const m = s.member
      s.member = undefined
      await m?.close().catch((e) => errors.push(e))
    }
    if (errors.length) throw asError(errors[0])
  }

  // -- helpers ------------------------------------------------------------------------

  /** Writes the event count to the bitmap, then the metadata; serialized. */
  private persist(): Promise<void> {
    const run = async () => {
      for (const s of this.slots) if (s.record.state === 'in-sync') s.record.events = this.meta.events
      const bm = this.bitmap
      if (bm && !bm.kicked && !this.bitmapClosed) await bm.setEvents(this.meta.events).catch(() => {})
      await writeMetadata(this.metadataPath, this.meta)
    }
    const p = this.metaChain.then(run)
    this.metaChain = p.catch(() => {})
    return p
  }

  private updateDegraded(): void {
    if (this.bitmap) this.bitmap.degraded = this.degraded
  }

  private computeAlignment(): void {
    this._alignment = Math.max(512, ...this.slots.filter((s) => s.member).map((s) => s.member!.alignment))
  }

  private slotAt(index: number): Slot {
    const slot = this.slots[index]
    if (!slot) throw new MdBitmapError('EINVAL', `no member ${index}: the mirror has ${this.slots.length}`)
    return slot
  }

  private checkOpen(what: string): void {
    if (this.closing) throw new MdBitmapError('ECLOSED', `${what}: the mirror is closed`)
  }

  private checkRange(what: string, offset: number, len: number): void {
    const a = this._alignment
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

  private failedError(what: string): MdBitmapError {
    const why = this.slots.map((s, i) => `member ${i} ${s.record.path}: ${s.record.state}${s.record.error ? ` (${s.record.error.code})` : ''}`).join('; ')
    return new MdBitmapError('EMIRROR_FAILED', `${what}: no member in sync is left (${why}); re-add a member with reAdd`)
  }

  /** Reports an error to 'error' listeners, if any (never an unhandled 'error' event). */
  private report(e: MdBitmapError): void {
    if (this.listenerCount('error') > 0) this.emit('error', e)
  }
}

async function openChecked(openMember: OpenMember, path: string, writeMostly: boolean, index: number, size: number): Promise<Member> {
  const member = await openMember({ path, writeMostly, index })
  if (member.size < size) {
    await member.close().catch(() => {})
    throw new MdBitmapError('EMIRROR_MEMBER', `member ${path} holds ${member.size} bytes, less than the mirror's ${size}; grow it (truncate -s) or pick a larger one`)
  }
  return member
}

/** Closes what a failed create or open had opened; their own errors are beside the point. */
async function releaseAll(bitmap: Bitmap | null, slots: Slot[]): Promise<void> {
  await bitmap?.close().catch(() => {})
  for (const s of slots) await s.member?.close().catch(() => {})
}

function copyAligned(data: Uint8Array, align: number): Uint8Array {
  const out = allocAligned(data.length, align)
  out.set(data)
  return out
}

function asError(e: unknown): MdBitmapError {
  return toMdBitmapError(e)
}

function aborted(signal: AbortSignal): MdBitmapError {
  return new MdBitmapError('EABORTED', 'resync aborted; what was not copied stays marked, so the next resync resumes it', { cause: signal.reason })
}

function range(from: number, to: number): number[] {
  return Array.from({ length: Math.max(0, to - from) }, (_, i) => from + i)
}
