/**
 * The mirror's own metadata: which members it has, their roles and states, the event
 * count each was last in sync at, and whether the mirror was shut down cleanly. It is
 * a small JSON file beside the bitmap, replaced atomically (`io/replace.ts`: temp
 * file, fsync, rename, fsync of the folder), so a crash leaves either the old or the
 * new version.
 *
 * @module
 */
import { MdBitmapError } from '../errors'
import { readWholeFile } from '../io/files'
import { replaceFile } from '../io/replace'

/** A member's state. */
export type MemberState =
  /** Holds the mirror's data; reads and writes go to it. */
  | 'in-sync'
  /** Being recovered: writes go to it, reads never; a resync completes it. */
  | 'recovering'
  /** Failed: nothing goes to it until {@link Mirror.reAdd}. */
  | 'faulty'
  /** Taken out by {@link Mirror.removeMember}; its slot waits for {@link Mirror.reAdd}. */
  | 'removed'

export interface MemberRecord {
  path: string
  writeMostly: boolean
  state: MemberState
  /** The mirror's event count when the member was last known in sync. */
  events: bigint
  /** A recovering member's recovery copies every chunk (not only the dirty ones). */
  fullRecovery?: boolean
  /** Why the member is faulty. */
  error?: { code: string; message: string }
}

/** A changed-block tracking bitmap the mirror keeps (see `tracking.ts`). */
export interface TrackingRecord {
  /** The name it is tracked under (the NBD context `qemu:dirty-bitmap:NAME`). */
  name: string
  /** The bitmap file (absolute). */
  path: string
}

export interface MirrorMetadata {
  uuid: string
  size: number
  chunkSize: number
  /** Bumped at every open and every member state change. */
  events: bigint
  /** Closed cleanly: no write was in flight. */
  clean: boolean
  /** The bitmap file (absolute), or null for a mirror without one. */
  bitmap: string | null
  behindMemoryLimit: number
  /** Without a bitmap: where an unfinished full resync resumes (bytes), or null. */
  resyncFrom: number | null
  members: MemberRecord[]
  /** The changed-block tracking bitmaps, opened and resumed with the mirror; absent when none was ever tracked. */
  tracking?: TrackingRecord[]
}

const FORMAT = 'md-bitmap-mirror'
const VERSION = 1

/** Where the metadata of a mirror whose bitmap is `bitmapPath` lives. */
export function metadataPathFor(bitmapPath: string): string {
  return `${bitmapPath}.mirror.json`
}

function bad(path: string, why: string, cause?: unknown): MdBitmapError {
  return new MdBitmapError('EMIRROR_METADATA', `${path}: ${why}; restore it from a backup, or recreate the mirror with Mirror.create and resync`, { cause })
}

/** Reads and checks a metadata file. */
export async function readMetadata(path: string): Promise<MirrorMetadata> {
  let text: string
  try {
    text = (await readWholeFile(path)).toString('utf8')
  } catch (e) {
    if ((e as MdBitmapError).code !== 'ENOENT') throw e
    throw new MdBitmapError('EMIRROR_METADATA', `${path} does not exist: no mirror was created with this bitmap (Mirror.create makes one)`, { cause: e })
  }
  let j: Record<string, unknown>
  try {
    j = JSON.parse(text)
  } catch (e) {
    throw bad(path, 'not valid JSON', e)
  }
  if (j?.format !== FORMAT) throw bad(path, `not a mirror metadata file (format ${JSON.stringify(j?.format)})`)
  if (j.version !== VERSION) throw bad(path, `version ${JSON.stringify(j.version)} is not supported (this library reads version ${VERSION})`)
  const int = (v: unknown, what: string): number => {
    if (!Number.isSafeInteger(v) || (v as number) < 0) throw bad(path, `${what} is not a non-negative integer`)
    return v as number
  }
  const big = (v: unknown, what: string): bigint => {
    if (typeof v !== 'string' || !/^\d+$/.test(v)) throw bad(path, `${what} is not a decimal string`)
    return BigInt(v)
  }
  if (typeof j.uuid !== 'string' || !/^[0-9a-f]{32}$/.test(j.uuid)) throw bad(path, 'uuid is not 32 hex digits')
  if (!Array.isArray(j.members) || j.members.length === 0) throw bad(path, 'no members')
  const states = new Set(['in-sync', 'recovering', 'faulty', 'removed'])
  const members = j.members.map((m: Record<string, unknown>, i: number): MemberRecord => {
    if (typeof m?.path !== 'string' || !m.path) throw bad(path, `member ${i} has no path`)
    if (!states.has(m.state as string)) throw bad(path, `member ${i} has state ${JSON.stringify(m.state)}`)
    const rec: MemberRecord = {
      path: m.path,
      writeMostly: m.writeMostly === true,
      state: m.state as MemberState,
      events: big(m.events, `member ${i} events`),
    }
    if (m.fullRecovery === true) rec.fullRecovery = true
    if (m.error && typeof m.error === 'object') rec.error = m.error as MemberRecord['error']
    return rec
  })
  const tracking = j.tracking
  if (tracking !== undefined && (!Array.isArray(tracking) || tracking.some((r) => typeof r?.name !== 'string' || !r.name || typeof r?.path !== 'string' || !r.path))) {
    throw bad(path, 'tracking is not a list of { name, path }')
  }
  return {
    ...(tracking ? { tracking: (tracking as TrackingRecord[]).map((r) => ({ name: r.name, path: r.path })) } : {}),
    uuid: j.uuid,
    size: int(j.size, 'size'),
    chunkSize: int(j.chunkSize, 'chunkSize'),
    events: big(j.events, 'events'),
    clean: j.clean === true,
    bitmap: typeof j.bitmap === 'string' ? j.bitmap : null,
    behindMemoryLimit: int(j.behindMemoryLimit, 'behindMemoryLimit'),
    resyncFrom: j.resyncFrom === null || j.resyncFrom === undefined ? null : int(j.resyncFrom, 'resyncFrom'),
    members,
  }
}

/** Replaces the metadata file atomically and durably. */
export async function writeMetadata(path: string, meta: MirrorMetadata): Promise<void> {
  const text = JSON.stringify(
    {
      format: FORMAT,
      version: VERSION,
      ...meta,
      events: meta.events.toString(),
      members: meta.members.map((m) => ({ ...m, events: m.events.toString() })),
    },
    null,
    2,
  )
  await replaceFile(path, text + '\n')
}
