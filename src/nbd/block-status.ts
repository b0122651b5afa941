/**
 * The block status a served mirror answers (`NBD_CMD_BLOCK_STATUS`), one
 * {@link MetaContext} per kind:
 *
 * - `base:allocation` (the NBD standard's): holes and zeroes of the resync source
 *   member — the first in-sync member that is not write-mostly and is a local file —,
 *   from `lseek(SEEK_DATA)`/`lseek(SEEK_HOLE)` on it (one call through the I/O layer
 *   per request, `allocatedRanges`): what the filesystem calls a hole (a gap, an
 *   unwritten extent) is `NBD_STATE_HOLE | NBD_STATE_ZERO`, data is 0. At most
 *   {@link MAX_ALLOCATION_RANGES} data ranges per answer (the reply then stops short,
 *   as the protocol allows). Where that is unknown (no such member, a remote one, a
 *   failed query), everything is data: never a hole over data.
 * - `md-bitmap:write-intent`: the write-intent map, `MD_STATE_DIRTY` (1) on the chunks
 *   whose bits are set — what a resync would copy, the same ranges `md-bitmap dirty`
 *   lists from the bitmap file —, 0 elsewhere.
 * - `qemu:dirty-bitmap:NAME`, one per changed-block tracking bitmap (QEMU's name, so
 *   its tools ask for it): `QEMU_STATE_DIRTY` (1) on the chunks changed since the
 *   bitmap's last checkpoint, 0 elsewhere. QEMU's `qemu-img map` with
 *   `x-dirty-bitmap=qemu:dirty-bitmap:NAME` reads it in place of `base:allocation`, so
 *   it prints the changed ranges as `"data": false`. The list follows tracking: a
 *   bitmap tracked later is offered to the connections that select contexts after.
 *
 * @module
 */
import type { ByteRange } from '../bitmap/bitmap'
import { isNbdUrl } from './protocol'
import { allocatedRanges } from '../io/allocated-ranges'
import type { MetaContext } from './meta-context'
import type { StatusExtent } from './protocol/structured-reply'

/** `base:allocation`: the range is not allocated. */
export const NBD_STATE_HOLE = 1
/** `base:allocation`: the range reads as zeroes. */
export const NBD_STATE_ZERO = 2
/** `md-bitmap:write-intent`: the range's chunk has its bit set. */
export const MD_STATE_DIRTY = 1

/** `qemu:dirty-bitmap:NAME`: the range's chunk changed since the bitmap's last checkpoint. */
export const QEMU_STATE_DIRTY = 1

/** The prefix of a tracking bitmap's context name (QEMU's). */
export const DIRTY_BITMAP_PREFIX = 'qemu:dirty-bitmap:'

/** The name of the NBD standard's allocation context. */
export const BASE_ALLOCATION = 'base:allocation'
/** The name of the write-intent map's context. */
export const WRITE_INTENT = 'md-bitmap:write-intent'

/** One member as {@link BlockStatusMirror} shows it. */
export interface BlockStatusMember {
  /** Its path (or URL). */
  readonly path: string
  /** `'in-sync'` for a member whose data is the mirror's. */
  readonly state: string
  /** Write-mostly members may lag behind acknowledged writes: never a source. */
  readonly writeMostly: boolean
}

/** What the contexts need of a mirror (a `Mirror` has it). */
export interface BlockStatusMirror {
  /** The members, in slot order. */
  readonly members: readonly BlockStatusMember[]
  /** The write-intent bitmap, or null for a mirror without one. */
  readonly bitmap: {
    /** The byte ranges whose bits are set. */
    dirtyChunks(): ByteRange[]
  } | null
  /** The changed-block tracking bitmaps, by name (a `Mirror` has them). */
  tracked?(): readonly {
    /** The tracking bitmap's name: its context is `qemu:dirty-bitmap:NAME`. */
    readonly name: string
  }[]
  /** The ranges tracking bitmap `name` has set. */
  changes?(name: string): ByteRange[]
}

/** Whether `target` offers what {@link mirrorMetaContexts} needs. */
export function isBlockStatusMirror(target: object): target is BlockStatusMirror {
  return 'members' in target && 'bitmap' in target && Array.isArray((target as BlockStatusMirror).members)
}

/** Cuts `ranges` (sorted, disjoint) to [offset, offset + length) as descriptors: `flags` inside, `outside` between. */
function describe(offset: number, length: number, ranges: Iterable<{ offset: number; length: number; flags: number }>, between: number): StatusExtent[] {
  const out: StatusExtent[] = []
  const push = (len: number, flags: number) => {
    if (len <= 0) return
    const last = out[out.length - 1]
    if (last && last.flags === flags) last.length += len
    else out.push({ length: len, flags })
  }
  const end = offset + length
  let at = offset
  for (const r of ranges) {
    if (r.offset + r.length <= at) continue
    if (r.offset >= end) break
    push(Math.min(r.offset, end) - at, between)
    at = Math.max(at, r.offset)
    const stop = Math.min(end, r.offset + r.length)
    push(stop - at, r.flags)
    at = stop
    if (at >= end) break
  }
  push(end - at, between)
  return out
}

/** The most data ranges one `base:allocation` answer lists (8 bytes each on the wire). */
export const MAX_ALLOCATION_RANGES = 65536

/** `base:allocation` of the file `path()` names (null: unknown, all data). */
export function allocationContext(path: () => string | null): MetaContext {
  return {
    name: BASE_ALLOCATION,
    async extents(offset, length) {
      const p = path()
      const allData = [{ length, flags: 0 }]
      if (p === null) return allData
      let found
      try {
        found = await allocatedRanges(p, offset, length, MAX_ALLOCATION_RANGES)
      } catch {
        return allData
      }
      // Cut short only where the list was: past the file's end (never, for a member) reads zeroes.
      const covered = found.ranges.length === MAX_ALLOCATION_RANGES ? found.end - offset : length
      return describe(offset, covered, found.ranges.map((r) => ({ ...r, flags: 0 })), NBD_STATE_HOLE | NBD_STATE_ZERO)
    },
  }
}

/** `md-bitmap:write-intent` of `bitmap()` (null: no bitmap, nothing dirty). */
export function writeIntentContext(bitmap: () => BlockStatusMirror['bitmap']): MetaContext {
  return {
    name: WRITE_INTENT,
    async extents(offset, length) {
      const dirty = bitmap()?.dirtyChunks() ?? []
      return describe(offset, length, dirty.map((r) => ({ ...r, flags: MD_STATE_DIRTY })), 0)
    },
  }
}

/** `qemu:dirty-bitmap:NAME` of the tracking bitmap whose set ranges `changes()` lists. */
export function dirtyBitmapContext(name: string, changes: () => ByteRange[]): MetaContext {
  return {
    name: DIRTY_BITMAP_PREFIX + name,
    async extents(offset, length) {
      return describe(offset, length, changes().map((r) => ({ ...r, flags: QEMU_STATE_DIRTY })), 0)
    },
  }
}

/**
 * The contexts a served mirror offers now: `base:allocation`, `md-bitmap:write-intent`,
 * and `qemu:dirty-bitmap:NAME` for each tracking bitmap.
 */
export function mirrorMetaContexts(mirror: BlockStatusMirror): MetaContext[] {
  const source = () => mirror.members.find((m) => m.state === 'in-sync' && !m.writeMostly && !isNbdUrl(m.path))?.path ?? null
  const tracked = (mirror.tracked?.() ?? []).map(({ name }) => dirtyBitmapContext(name, () => mirror.changes!(name)))
  return [allocationContext(source), writeIntentContext(() => mirror.bitmap), ...tracked]
}
