/**
 * The data path: writes (synchronous or behind), reads, and flushes.
 *
 * A write, synchronous or behind:
 *
 * ```
 *   write(buf, offset)
 *     │ enter the flush fence (a flush called from now on waits for this write)
 *     │ enter the chunks' barrier (waits while a resync copies one of them)
 *     │ decide: behind? ── needs a write-mostly member, a bitmap that allows
 *     │                    write-behind and is not kicked, behind writes below
 *     │                    the bitmap's limit, and the copy within behindMemoryLimit
 *     │ bitmap.startWrite ─ bits set and durable (group commit), the tracking
 *     │                     bitmaps' bits (tracking.ts) at the same time; no wait
 *     │                     when they already are (bitmap.tryStartWrite)
 *     ├──────────── sync ─────────────┐          ┌──────────── behind ────────────┐
 *     │ write every active member     │          │ fast members: the caller's buf │
 *     │ (the caller's buffer)         │          │ write-mostly: a private copy   │
 *     │ wait for all                  │          │ wait for the fast ones only    │
 *     │ ack, leave the fence ◄────────┘          │ ack, leave the fence ◄─────────┘
 *     │                                          │   …the slow members go on…
 *     └── every member done ──► bitmap.endWrite(success = every member had it)
 *                               (only now may the daemon start to clear the bits)
 *                               leave the barrier
 * ```
 *
 * The bits of a behind write stay set until the slowest member has it; Linux 6.14
 * ends the bitmap write when the fast members finish, which would let the daemon
 * clear a bit over a lagging member. Here endWrite comes after every member
 * ({@link MemberWrites} counts them down, with no promise per step). Each
 * member issues a write only after the overlapping writes before it on that member
 * completed (its write order), so a newer write never overtakes a lagging older one.
 * The private copy is a buffer of the mirror's write-behind pool (io/buffer-pool.ts),
 * reused rather than allocated and zeroed per write; it goes back to the pool when
 * every member's write settled, never earlier. Whether a write may go behind is
 * decided before the copy is taken, against behindMemoryLimit, as above.
 *
 * A write is acknowledged if a member that may acknowledge it has it: an in-sync
 * member that is not write-mostly, or, when there is none, an in-sync write-mostly
 * member. A member whose write or read fails becomes faulty (see membership): every
 * write then ends NEEDED and no bit is cleared.
 *
 * A read goes to the fast in-sync members in turn; to a write-mostly one only when no
 * other can serve, and then after its writes in flight to the range completed; to the
 * resync source when the range is marked for resync, so two reads agree.
 *
 * Flush contract: once {@link flush} resolves, every write whose `write()` was called
 * before `flush()` was called, and that was acknowledged, is durable on every member
 * that is not write-mostly. Flush waits (through the flush fence) until each such write
 * is acknowledged or rejected, then fdatasyncs every active member. It does not wait for
 * writes called after it, nor for behind writes still in flight on write-mostly
 * members: their chunks' bits are on stable storage until those members have them and
 * were flushed, so a resync repairs them.
 *
 * @module
 */
import { MdBitmapError, toMdBitmapError } from '../errors'
import { isAligned } from '../io/aligned'
import type { BufferPool } from '../io/buffer-pool'
import { failMember } from './membership'
import type { MirrorState, Slot } from './state'
import { startWriteBits, type TrackedWrite } from './tracking'

/** Writes `data` at `offset` on every active member (see {@link Mirror.write}). */
export async function write(state: MirrorState, data: Uint8Array, offset: number): Promise<void> {
  state.checkOpen('write')
  state.checkRange('write', offset, data.length)
  // In the flush fence from the call until acknowledged or rejected: a flush called meanwhile waits for it.
  const generation = state.flushFence.enter()
  try {
    const len = data.length
    const first = Math.floor(offset / state.meta.chunkSize)
    const last = Math.floor((offset + len - 1) / state.meta.chunkSize)
    // Waits only while a resync holds one of the chunks.
    if (!state.barrier.tryEnterWrite(first, last)) await state.barrier.enterWrite(first, last)
    // Fast members first: their writes are issued before the write-behind copy is made.
    const active = activeFastFirst(state.slots)
    // Taken with the member list: a member that becomes active later waits for this write to end.
    const epoch = state.memberEpochs.join()
    // Who may acknowledge: the in-sync fast members, or the in-sync slow ones if no fast one is left.
    const ackers = whoAcknowledges(active)
    let behind = false
    let tracked: TrackedWrite
    try {
      // Closed while this write waited at the barrier: the bitmap may be gone.
      state.checkOpen('write')
      if (!ackers.includes(true)) throw state.failedError('write')
      behind = anyFastInSync(active) && mayGoBehind(state, active, len)
      if (behind) reserveBehind(state, len)
      // Waits only when a bit must be set (or is still on its way to the disk).
      const bits = startWriteBits(state, offset, len, behind)
      tracked = bits instanceof Promise ? await bits : bits
    } catch (e) {
      if (behind) releaseBehind(state, len)
      state.barrier.exitWrite(first, last)
      state.memberEpochs.leave(epoch)
      throw e
    }
    state.counts.writes++
    // An unaligned caller's data goes through an aligned copy, given back when the write ends.
    const staged = isAligned(data, state.alignment) ? undefined : pooledCopy(state.stagingPool, state.alignment, data)
    const writes = new MemberWrites(state, active, offset, len, behind, first, last, epoch, tracked, staged)
    for (let i = 0; i < active.length; i++) writes.issue(i, staged ?? data)
    // Sync: every member settled. Behind: the fast ones (the write-mostly ones go on).
    const errors = await writes.acknowledged
    let waited = -1
    for (let i = 0; i < active.length; i++) {
      if (!writes.waitedFor(i)) continue
      if (waited < 0) waited = i
      if (errors[i]?.code === 'EMIRROR_METADATA') throw errors[i]
    }
    for (let i = 0; i < active.length; i++) if (writes.waitedFor(i) && ackers[i] && errors[i] === undefined) return
    const errs: string[] = []
    for (let i = 0; i < active.length; i++) if (writes.waitedFor(i) && ackers[i]) errs.push(`${active[i].record.path}: ${errors[i]?.message}`)
    throw new MdBitmapError('EMIRROR_WRITE', `write of ${len} bytes at ${offset} reached no member that may acknowledge it (${errs.join('; ')}); the chunk is marked for resync`, {
      cause: errors[waited],
    })
  } finally {
    state.flushFence.leave(generation)
  }
}

/** The active members, the fast ones first (in slot order), then the write-mostly ones. */
function activeFastFirst(slots: Slot[]): Slot[] {
  const out: Slot[] = []
  for (const s of slots) if (s.active && !s.record.writeMostly) out.push(s)
  for (const s of slots) if (s.active && s.record.writeMostly) out.push(s)
  return out
}

function anyFastInSync(active: Slot[]): boolean {
  return active.some((s) => s.inSync && !s.record.writeMostly)
}

/** Per member of `active`: may it acknowledge a write? The in-sync fast ones, or the in-sync ones if no fast one is. */
function whoAcknowledges(active: Slot[]): boolean[] {
  return anyFastInSync(active) ? active.map((s) => s.inSync && !s.record.writeMostly) : active.map((s) => s.inSync)
}

/**
 * One write's member writes, counted down with no promise per step:
 *
 * ```
 *   issue(i) per member ── its write settles ── failed? fail the member first
 *     └─ settled(i, error):  unacked − 1 if the caller waits for member i
 *                            (sync: every member; behind: the fast ones)
 *                            at 0 ─► `acknowledged` resolves with the errors
 *                            unsettled − 1; at 0 (every member) ─► the write ends:
 *                              bitmap.endWrite(success = every member had it),
 *                              behind budget and copy released, barrier and epoch left
 * ```
 *
 * A sync write ends before it is acknowledged (as the members' writes all settled);
 * a behind write is acknowledged first and ends when the slowest member has it.
 */
class MemberWrites {
  /** Per member: the error its write settled with (undefined: it succeeded, or has not settled). */
  readonly errors: (MdBitmapError | undefined)[]
  /** Resolves with {@link errors} once every member the caller waits for settled. Never rejects. */
  readonly acknowledged: Promise<(MdBitmapError | undefined)[]>
  private acknowledge!: (errors: (MdBitmapError | undefined)[]) => void
  private unsettled: number
  private unacked = 0
  private everyMember = true
  /** The write-behind copy for the write-mostly members, made on first use. */
  private copy: Uint8Array | undefined

  constructor(
    private readonly state: MirrorState,
    private readonly active: Slot[],
    private readonly offset: number,
    private readonly len: number,
    private readonly behind: boolean,
    private readonly first: number,
    private readonly last: number,
    private readonly epoch: number,
    private readonly tracked: TrackedWrite,
    /** The aligned copy of an unaligned caller's data, from the staging pool. */
    private readonly staged: Uint8Array | undefined,
  ) {
    this.errors = new Array<MdBitmapError | undefined>(active.length).fill(undefined)
    this.unsettled = active.length
    for (let i = 0; i < active.length; i++) if (this.waitedFor(i)) this.unacked++
    this.acknowledged = new Promise((resolve) => (this.acknowledge = resolve))
  }

  /** Whether the caller's acknowledgement waits for member `i`. */
  waitedFor(i: number): boolean {
    return !this.behind || !this.active[i].record.writeMostly
  }

  /** Issues member `i`'s write (in its write order): the caller's buffer, or the behind copy for a write-mostly member. */
  issue(i: number, buf: Uint8Array): void {
    const slot = this.active[i]
    const payload = this.behind && slot.record.writeMostly ? (this.copy ??= pooledCopy(this.state.behindPool, this.state.alignment, buf)) : buf
    const offset = this.offset
    const entry = slot.order.begin(offset, this.len, () => slot.member!.write(payload, offset))
    entry.done.then(
      () => {
        slot.order.end(entry)
        this.settled(i, undefined)
      },
      (e) => {
        slot.order.end(entry)
        this.everyMember = false
        failMember(this.state, slot, e).then(
          (metaErr) => this.settled(i, metaErr ?? toMdBitmapError(e)),
          (fe) => this.settled(i, toMdBitmapError(fe)),
        )
      },
    )
  }

  private settled(i: number, err: MdBitmapError | undefined): void {
    this.errors[i] = err
    const waited = this.waitedFor(i)
    // Sync: the write ends before it is acknowledged.
    if (--this.unsettled === 0) this.end()
    if (waited && --this.unacked === 0) this.acknowledge(this.errors)
  }

  /** Every member's write settled. */
  private end(): void {
    const { state, offset, len, behind } = this
    try {
      state.bitmap?.endWrite(offset, len, this.everyMember, behind)
    } catch (e) {
      state.events.error(toMdBitmapError(e))
    }
    state.tracking.endWrite(this.tracked)
    if (behind) releaseBehind(state, len)
    // Every member's write settled: no I/O reads the copies any more.
    if (this.copy) state.behindPool.give(this.copy)
    if (this.staged) state.stagingPool.give(this.staged)
    state.barrier.exitWrite(this.first, this.last)
    state.memberEpochs.leave(this.epoch)
  }
}

function mayGoBehind(state: MirrorState, active: Slot[], len: number): boolean {
  const bm = state.bitmap
  const counts = state.counts
  if (!bm || bm.kicked || bm.maxWriteBehind === 0) return false
  if (!active.some((s) => s.record.writeMostly)) return false
  if (counts.behindInFlight >= bm.maxWriteBehind) {
    counts.behindFallbacks.limit++
    return false
  }
  if (counts.behindBytes + len > state.meta.behindMemoryLimit) {
    counts.behindFallbacks.memory++
    return false
  }
  return true
}

function reserveBehind(state: MirrorState, len: number): void {
  const counts = state.counts
  counts.behindWrites++
  counts.behindInFlight++
  counts.behindBytes += len
  counts.behindHighWater = Math.max(counts.behindHighWater, counts.behindInFlight)
  counts.behindBytesHighWater = Math.max(counts.behindBytesHighWater, counts.behindBytes)
}

function releaseBehind(state: MirrorState, len: number): void {
  state.counts.behindInFlight--
  state.counts.behindBytes -= len
}

/** Reads `target.length` bytes at `offset` (see {@link Mirror.read}). */
export async function read(state: MirrorState, target: Uint8Array, offset: number): Promise<void> {
  state.checkOpen('read')
  state.checkRange('read', offset, target.length)
  const len = target.length
  // An unaligned target is read into an aligned copy, given back once no read uses it.
  const staged = isAligned(target, state.alignment) ? undefined : state.stagingPool.take(len, state.alignment)
  const buf = staged ?? target
  try {
    const tried = new Set<Slot>()
    const errors: string[] = []
    for (let slot = pickReader(state, offset, len, tried); slot; slot = pickReader(state, offset, len, tried)) {
      tried.add(slot)
      try {
        if (slot.record.writeMostly) await slot.order.drained(offset, len)
        await slot.member!.read(buf, offset)
      } catch (e) {
        errors.push(`${slot.record.path}: ${toMdBitmapError(e).message}`)
        const metaErr = await failMember(state, slot, e)
        if (metaErr) throw metaErr
        continue
      }
      if (staged) target.set(staged)
      state.counts.reads++
      return
    }
    if (errors.length === 0) throw state.failedError('read')
    throw new MdBitmapError('EMIRROR_READ', `read of ${len} bytes at ${offset} failed on every member that could serve it: ${errors.join('; ')}`)
  } finally {
    if (staged) state.stagingPool.give(staged)
  }
}

function pickReader(state: MirrorState, offset: number, len: number, tried: Set<Slot>): Slot | undefined {
  const source = state.sourceSlot()
  if (source && !tried.has(source) && rangeNeedsSync(state, offset, len)) return source
  const fast = state.slots.filter((s) => s.inSync && !s.record.writeMostly && !tried.has(s))
  if (fast.length) return fast[state.readerTurn++ % fast.length]
  return state.slots.find((s) => s.inSync && !tried.has(s))
}

function rangeNeedsSync(state: MirrorState, offset: number, len: number): boolean {
  if (!state.bitmap) return state.meta.resyncFrom !== null
  const cs = state.meta.chunkSize
  for (let o = Math.floor(offset / cs) * cs; o < offset + len; o += cs) if (state.bitmap.chunkNeedsResync(o)) return true
  return false
}

/** The caller's flush: waits for the writes called before it, then syncs every active member (the contract is at the top). */
export async function flush(state: MirrorState): Promise<void> {
  state.checkOpen('flush')
  await state.flushFence.drain()
  await flushMembers(state, true)
}

/**
 * Syncs every active member; a failure fails that member. `strict`: rejects if
 * recording a failure failed, or if no member in sync is left.
 */
export async function flushMembers(state: MirrorState, strict: boolean): Promise<void> {
  const active = state.slots.filter((s) => s.active)
  const metaErrs = await Promise.all(active.map((s) => s.member!.flush().then(() => undefined, (e) => failMember(state, s, e))))
  const metaErr = metaErrs.find((e) => e)
  if (strict && metaErr) throw metaErr
  if (strict && !state.slots.some((s) => s.inSync)) throw state.failedError('flush')
}

/** Syncs the given members; a failure fails that member. Never rejects. */
export async function flushSlots(state: MirrorState, slots: Slot[]): Promise<void> {
  await Promise.all(slots.filter((s) => s.active).map((s) => s.member!.flush().catch((e) => failMember(state, s, e))))
}

/** The bitmap daemon's hook: members durable before a bit is cleared. Never rejects. */
export function flushBeforeClear(state: MirrorState): Promise<void> {
  return flushMembers(state, false).catch(() => {})
}

/** A copy of `data` in a buffer lent by `pool`, aligned to `align`: the caller gives it back once no I/O reads it. */
function pooledCopy(pool: BufferPool, align: number, data: Uint8Array): Uint8Array {
  const out = pool.take(data.length, align)
  out.set(data)
  return out
}
