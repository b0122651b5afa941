/**
 * A raid1-style mirror over a write-intent bitmap, with write-mostly members and
 * write-behind: the one public class of this folder. Each concept has its own file,
 * with its state machine or invariant at its top:
 *
 * - `assembly.ts`: create, open, start, close (the mirror's life cycle);
 * - `data-path.ts`: write, read, flush (write-behind, its accounting and fallbacks, and
 *   the flush contract);
 * - `membership.ts`: member failure, removal, re-add, addition (the member states);
 * - `resync.ts`: the resync engine (its run and its checkpoints);
 * - `scrub.ts`: the check and repair of the members against each other;
 * - `discard.ts`: discard and write-zeroes (a range made zeroes on every member);
 * - `tracking.ts`: changed-block tracking bitmaps and their checkpoints;
 * - `state.ts`: the state they share (slots, event counts);
 * - `types.ts`: the option, report and event types;
 * - `barrier.ts`, `write-order.ts`, `flush-fence.ts`, `metadata.ts`,
 *   `progress.ts`: the small mechanisms under them (buffers come from `io/buffer-pool.ts`).
 *
 * @module
 */
import { EventEmitter } from 'node:events'
import type { Bitmap, ByteRange } from '../bitmap/bitmap'
import { MdBitmapError } from '../errors'
import * as assembly from './assembly'
import * as dataPath from './data-path'
import { zeroRange } from './discard'
import * as membership from './membership'
import { controlSocketPathFor } from './owner'
import { ControlServer } from '../control/server'
import * as resyncEngine from './resync'
import { startCheck } from './scrub'
import { MirrorState, type MirrorParts } from './state'
import type { TrackedBitmapInfo, TrackingRecord, TrackOptions } from './tracking'
import type { CheckOptions, CheckReport, MemberInfo, MemberOptions, MirrorCreateOptions, MirrorEvents, MirrorOpenOptions, MirrorStats, ResyncOptions, ResyncReport } from './types'

/**
 * A mirror of one block range over several members, with a write-intent bitmap so that
 * a crash or a member that returns late costs a copy of the dirty chunks only.
 *
 * Events (see {@link MirrorEvents}): `'member-faulty'` when a member fails, `'error'`
 * for an error outside any call.
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
 * mirror.on('member-faulty', ({ index, error }) => console.error(`member ${index}: ${error.code}`))
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
  /** The metadata file. */
  readonly metadataPath: string
  /** The bitmap, or null for a mirror without one. */
  readonly bitmap: Bitmap | null
  private readonly state: MirrorState
  private control: ControlServer | undefined

  private constructor(parts: MirrorParts) {
    super()
    this.metadataPath = parts.metadataPath
    this.bitmap = parts.bitmap
    // Events are emitted on a later tick (see MirrorEvents): the data path, resync, scrub
    // and membership report from the middle of their work, and a listener that throws
    // must not unwind it.
    this.state = new MirrorState(parts, {
      memberFaulty: (event) => process.nextTick(() => this.emit('member-faulty', event)),
      // Never an unhandled 'error' event: errors outside any call go to listeners, if any.
      error: (error) =>
        process.nextTick(() => {
          if (this.listenerCount('error') > 0) this.emit('error', error)
        }),
    })
  }

  /** Creates a mirror: its bitmap, its metadata, and member files that do not exist yet (sparse). */
  static async create(o: MirrorCreateOptions): Promise<Mirror> {
    return Mirror.start(await assembly.createParts(o), o.control)
  }

  /** Reassembles a mirror from its metadata: opens the bitmap and every member that was in sync or recovering. */
  static async open(o: MirrorOpenOptions): Promise<Mirror> {
    return Mirror.start(await assembly.openParts(o), o.control)
  }

  private static async start(parts: MirrorParts, control: boolean | string | undefined): Promise<Mirror> {
    const mirror = new Mirror(parts)
    await assembly.start(mirror.state)
    if (control) {
      try {
        mirror.control = await ControlServer.listen(mirror, typeof control === 'string' ? control : controlSocketPathFor(parts.metadataPath))
      } catch (e) {
        await mirror.close().catch(() => {})
        throw e
      }
    }
    return mirror
  }

  // -- events -------------------------------------------------------------------------

  /**
   * Calls `listener` every time `event` is emitted:
   *
   * - `'member-faulty'` ({@link MemberFaultyEvent}): a member failed a read, write or
   *   flush and is now faulty; the mirror is degraded until it is re-added and resynced.
   * - `'error'` ({@link MdBitmapError}): an error outside any call (the bitmap kicked by a
   *   failed write, a member failure that could not be recorded). Emitted only while an
   *   `'error'` listener is attached.
   *
   * Both are emitted on a later tick, so a listener that throws cannot break the
   * mirror's work (its exception is the process's `'uncaughtException'`). See
   * {@link MirrorEvents} for each event in full.
   */
  override on<E extends keyof MirrorEvents>(event: E, listener: (...args: MirrorEvents[E]) => void): this {
    return super.on(event, listener as (...args: unknown[]) => void)
  }

  /** Like {@link Mirror.on}, but calls `listener` once, at the next `event`. */
  override once<E extends keyof MirrorEvents>(event: E, listener: (...args: MirrorEvents[E]) => void): this {
    return super.once(event, listener as (...args: unknown[]) => void)
  }

  /** Removes a listener added with {@link Mirror.on} or {@link Mirror.once}. */
  override off<E extends keyof MirrorEvents>(event: E, listener: (...args: MirrorEvents[E]) => void): this {
    return super.off(event, listener as (...args: unknown[]) => void)
  }

  // -- geometry and state -------------------------------------------------------------

  /** Bytes of data mirrored. */
  get size(): number {
    return this.state.meta.size
  }
  /** Bytes per bitmap bit, and the unit of resync. */
  get chunkSize(): number {
    return this.state.meta.chunkSize
  }
  /** The mirror's identity, as 32 hex digits. */
  get uuid(): string {
    return this.state.meta.uuid
  }
  /** Offsets and lengths of reads and writes must be multiples of this. */
  get alignment(): number {
    return this.state.alignment
  }
  /** The mirror's event count: bumped at every open and member change. */
  get events(): bigint {
    return this.state.meta.events
  }
  /** Some member is not in sync: no bit is cleared, and a member lacks data. */
  get degraded(): boolean {
    return this.state.degraded
  }
  /** A resync, recovery or check is running now. */
  get resyncRunning(): boolean {
    return this.state.syncAction !== undefined
  }
  /** The control socket this mirror listens on (see {@link MirrorOpenOptions.control}), or null. */
  get controlSocket(): string | null {
    return this.control?.path ?? null
  }
  /** Whether some chunk is marked for resync (or, without a bitmap, a full resync is due). */
  get needsResync(): boolean {
    const { bitmap, meta } = this.state
    return bitmap ? bitmap.neededChunks().length > 0 : meta.resyncFrom !== null
  }

  /** Every member slot, with its state. */
  get members(): MemberInfo[] {
    return this.state.slots.map((s, index) => {
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
    const { counts, memberFailures, meta, bitmap } = this.state
    const io = bitmap?.stats()
    return {
      ...counts,
      behindFallbacks: { ...counts.behindFallbacks },
      memberFailures,
      degraded: this.degraded,
      events: meta.events,
      engine: io?.engine ?? null,
      engineReason: io?.engineReason ?? null,
    }
  }

  // -- data ---------------------------------------------------------------------------

  /**
   * Writes `data` at `offset` on every member. Resolves once the bits are durable and
   * every member that must acknowledge has the data (behind: the write-mostly ones may
   * still be writing a private copy, so `data` may be reused at once). Rejects if no
   * member that may acknowledge it has it. Until then `data` must not change: the
   * members write it from where it lies, or, when it is not aligned, from a copy made
   * once the write may start (after a resync's hold on its chunks and the bits).
   */
  write(data: Uint8Array, offset: number): Promise<void> {
    return dataPath.write(this.state, data, offset)
  }

  /**
   * Reads `target.length` bytes at `offset`: from an in-sync member that is not
   * write-mostly, in turn; from a write-mostly one only when no other can serve, and
   * then only once its behind writes to the range completed. A chunk marked for resync
   * is read from the resync source, so two reads agree. A failed member is marked and
   * the next one tried.
   */
  read(target: Uint8Array, offset: number): Promise<void> {
    return dataPath.read(this.state, target, offset)
  }

  /**
   * Makes writes durable on every member (fdatasync, or FLUSH on a remote disk).
   *
   * Guarantee: once `flush()` resolves, every write whose `write()` was called before
   * `flush()` was called, and that was acknowledged, survives power loss on every member
   * that is not write-mostly. To give it, `flush()` first waits until each such write is
   * acknowledged or rejected (writes still in flight included), then syncs the members.
   * Writes called after `flush()` are not waited for and not covered, even if they are
   * acknowledged before it resolves. Behind writes still in flight on a write-mostly
   * member are not waited for either: their chunks' bits are set on stable storage, so a
   * resync repairs that member.
   */
  flush(): Promise<void> {
    return dataPath.flush(this.state)
  }

  /**
   * Discards `length` bytes at `offset`: afterwards the range reads as zeroes on every
   * member, and the members give its storage back where they can (a hole punched in a
   * member file, an unmapping zeroing on a block device, an NBD `WRITE_ZEROES` that may
   * trim). Marked in the bitmap like a write (the bits durable before any member is
   * touched); a member that cannot discard gets zeroes written, so the members stay
   * identical. Resolves and rejects as {@link Mirror.write} does; durable after
   * {@link Mirror.flush}. Offset and length are multiples of {@link Mirror.alignment}.
   */
  discard(offset: number, length: number): Promise<void> {
    return zeroRange(this.state, 'discard', offset, length)
  }

  /**
   * Writes zeroes over `length` bytes at `offset` on every member, as cheaply as each
   * member allows (the same operations as {@link Mirror.discard}: the storage may be
   * given back; where a member has no cheaper way, zeroes are written). Marked in the
   * bitmap like a write; resolves and rejects as {@link Mirror.write} does.
   */
  writeZeroes(offset: number, length: number): Promise<void> {
    return zeroRange(this.state, 'writeZeroes', offset, length)
  }

  // -- changed-block tracking ---------------------------------------------------------

  /**
   * Starts changed-block tracking under `name` (see `tracking.ts`): a second bitmap
   * file, in md's format, that records every chunk written, discarded or zeroed from
   * now on, each bit on stable storage before the write that sets it is issued, and
   * cleared only by {@link Mirror.checkpoint}. `options.path` is created (all clear) or,
   * if it exists, adopted: it must be this mirror's (`EUUID`) with a fitting geometry
   * (`ETRACK_GEOMETRY`); one that missed writes (untracked meanwhile) comes back all
   * set. The mirror's metadata remembers it, so {@link Mirror.open} resumes it. Served
   * over NBD it is the meta context `qemu:dirty-bitmap:NAME`. A name or file tracked
   * already is `ETRACK_EXISTS`.
   *
   * @example
   * ```ts
   * await mirror.track('backup', { path: '/var/lib/vm/disk.backup.bitmap' })
   * // … a full copy of the disk, then at each incremental backup:
   * const changed = await mirror.checkpoint('backup')  // the ranges to copy now
   * ```
   */
  track(name: string, options: TrackOptions): Promise<TrackedBitmapInfo> {
    this.state.checkOpen('track')
    return this.state.tracking.track(name, options, () => this.state.persist())
  }

  /**
   * A checkpoint of tracking bitmap `name`: clears the bits of every chunk with no
   * write in flight, in one step, durably, and resolves with the byte ranges it
   * cleared — what changed since the previous checkpoint (or since track), which an
   * incremental backup copies now. A write in flight at the checkpoint keeps its bits
   * (it may land after the copy read its chunk), so it is copied next time too.
   * `ETRACK_UNKNOWN` if no bitmap is tracked under `name`. A crash during the call
   * leaves either every bit set or the checkpoint done: a caller that did not get the
   * ranges takes its next backup in full.
   */
  checkpoint(name: string): Promise<ByteRange[]> {
    this.state.checkOpen('checkpoint')
    return this.state.tracking.checkpoint(name)
  }

  /**
   * Stops tracking `name`: it is dropped from the metadata and its file is closed,
   * not removed (adopted again by {@link Mirror.track}, it comes back with every bit
   * set, since it missed writes). Resolves with its name and path.
   */
  untrack(name: string): Promise<TrackingRecord> {
    this.state.checkOpen('untrack')
    return this.state.tracking.untrack(name, () => this.state.persist())
  }

  /** The tracking bitmaps, in the order they were tracked: name, file, chunk size, chunks set. */
  tracked(): TrackedBitmapInfo[] {
    return this.state.tracking.list()
  }

  /**
   * The byte ranges whose bits are set in tracking bitmap `name` now: what changed
   * since its last checkpoint (with the writes in flight). The same ranges `md-bitmap
   * dirty` lists from the file and NBD's `qemu:dirty-bitmap:NAME` reports.
   */
  changes(name: string): ByteRange[] {
    return this.state.tracking.changes(name)
  }

  // -- resync ---------------------------------------------------------------------------

  /**
   * Copies every chunk that needs it from the source member (the first in-sync member
   * that is not write-mostly) to every other active member, and completes recovering
   * members. Writes go on meanwhile; a chunk being copied holds its writers back.
   * Abort it with `signal`: what was not copied stays marked, so calling it again resumes.
   */
  resync(options: ResyncOptions = {}): Promise<ResyncReport> {
    return resyncEngine.startResync(this.state, options)
  }

  /**
   * Checks that the members agree, as md's `check` sync action (and with `repair`, its
   * `repair`): reads every chunk from every member in sync, write-mostly ones
   * included, and compares it with the resync source's, counting the 512-byte sectors
   * that differ (`mismatchSectors`, md's `mismatch_cnt`) and listing the chunks
   * (`mismatchedChunks`, by index). With `repair`, each chunk that differs is copied
   * from the source to the members that differ, and they are synced before it resolves.
   *
   * Writes go on meanwhile: a chunk being compared holds its writers back for that
   * moment, and a write leaves its chunks only once every member (behind writes
   * included) has it, so a write in flight is never a false mismatch. `maxRate`
   * (bytes per second) throttles it; `signal` aborts it (`EABORTED`).
   *
   * Members not in sync (faulty, removed, recovering) are not read: a resync or
   * {@link Mirror.reAdd} is what brings them back. With fewer than two members in sync
   * it rejects `EMIRROR_MEMBER`. It is a sync action like {@link Mirror.resync}: one at a
   * time (`EMIRROR_BUSY` while a resync, recovery or check runs).
   */
  check(options: CheckOptions = {}): Promise<CheckReport> {
    return startCheck(this.state, options)
  }

  // -- membership -----------------------------------------------------------------------

  /**
   * Marks member `index` faulty, as a failure would (`mdadm --fail`): the mirror is
   * degraded and clears no bit until the member is re-added and recovered. Resolves
   * once that is on disk. The last member in sync cannot be failed
   * (`EMIRROR_LAST_MEMBER`); a member not in sync or recovering is `EMIRROR_MEMBER`.
   */
  async failMember(index: number): Promise<void> {
    this.state.checkOpen('failMember')
    const slot = this.state.slotAt(index)
    if (!slot.active) throw new MdBitmapError('EMIRROR_MEMBER', `member ${index} (${slot.record.path}) is ${slot.record.state}; only a member in sync or recovering can be failed`)
    if (slot.inSync && this.state.slots.filter((s) => s.inSync).length === 1) {
      throw new MdBitmapError('EMIRROR_LAST_MEMBER', `member ${index} (${slot.record.path}) is the last one in sync; add another first`)
    }
    const recorded = await membership.failMember(this.state, slot, new MdBitmapError('EMIRROR_MEMBER', 'failed on request (md-bitmap mirror fail / failMember)'))
    if (recorded) throw recorded
  }

  /**
   * Takes a member out. Its slot stays (the mirror is degraded) so that {@link reAdd}
   * can bring it back cheaply; `forget: true` drops the slot for good.
   */
  async removeMember(index: number, options: { forget?: boolean } = {}): Promise<void> {
    this.state.checkOpen('removeMember')
    await membership.removeMember(this.state, index, options.forget === true)
  }

  /**
   * Brings a faulty or removed member back (optionally at a new `path`) and recovers
   * it: only the dirty chunks if its event count allows, else every chunk. Resolves
   * with the recovery's report once it is in sync.
   */
  async reAdd(index: number, options: ResyncOptions & { path?: string } = {}): Promise<ResyncReport> {
    this.state.checkOpen('reAdd')
    const recovery = await membership.readmitMember(this.state, index, options.path)
    return { ...(await resyncEngine.resyncAfterOthers(this.state, options)), recovery }
  }

  /** Adds a new member (created sparse if it is a path that does not exist) and recovers it fully. */
  async addMember(m: MemberOptions, options: ResyncOptions = {}): Promise<ResyncReport> {
    this.state.checkOpen('addMember')
    await membership.admitMember(this.state, m)
    return { ...(await resyncEngine.resyncAfterOthers(this.state, options)), recovery: 'full' }
  }

  // -- close ----------------------------------------------------------------------------

  /**
   * Stops a running resync, waits for every write (behind ones included), flushes the
   * members, closes the bitmap (clearing what may be cleared) and records a clean
   * shutdown. Rejects with the first error met, after closing everything all the same.
   *
   * A member whose final flush (fdatasync, or FLUSH on a remote disk) fails is failed as
   * a failed write would fail it (`'faulty'` in the metadata, `'member-faulty'` emitted,
   * its chunks left marked for a {@link reAdd}), the shutdown is recorded unclean, and
   * close rejects with that member's error (its code, such as `EIO`; the message names
   * the member) once everything is closed.
   */
  async close(): Promise<void> {
    const control = this.control
    this.control = undefined
    await control?.close()
    return assembly.close(this.state)
  }
}
