/**
 * The md bitmap superblock: the 256 bytes at the start of a Linux md write-intent bitmap
 * file, and the bit array that follows it.
 *
 * ## Layout (all integers little-endian)
 *
 * | offset | size | field | here |
 * |---|---|---|---|
 * | 0 | 4 | magic `0x6d746962` ("bitm") | checked, never stored in {@link Superblock} |
 * | 4 | 4 | version | `version` (3 or 4) |
 * | 8 | 16 | uuid | `uuid` (16 raw bytes, in file order) |
 * | 24 | 8 | events | `events` (bigint) |
 * | 32 | 8 | events_cleared | `eventsCleared` (bigint) |
 * | 40 | 8 | sync_size, 512-byte sectors | `syncSize` (number) |
 * | 48 | 4 | state | `state` |
 * | 52 | 4 | chunksize, bytes | `chunkSize` |
 * | 56 | 4 | daemon_sleep, seconds | `daemonSleep` |
 * | 60 | 4 | write_behind | `writeBehind` |
 * | 64 | 4 | sectors_reserved | `sectorsReserved` |
 * | 68 | 4 | nodes | `nodes` |
 * | 72 | 64 | cluster_name | `clusterName` |
 * | 136 | 120 | padding | written as zeros, ignored when read (as the kernel does) |
 *
 * ## Number types
 *
 * - `events` and `eventsCleared` are `bigint`: they are counters that only grow and may
 *   use all 64 bits; any u64 is accepted.
 * - `syncSize` is a `number` of sectors. Every real array fits: a safe integer of
 *   sectors is up to 2^53 − 1 sectors, 4 EiB. A file whose sync_size is larger is
 *   refused with `EBADSIZE`. {@link chunkCount} is computed without ever forming
 *   `syncSize × 512` (which could pass 2^53), so it is exact for every accepted size.
 * - Every other field is a `number` holding a u32.
 *
 * ## Versions and bit order
 *
 * Chunk `c` is bit `c` of the bit array that starts at byte 256.
 * - Version 4 (written by this module) numbers the bits little-endian: bit `c` is
 *   byte ⌊c/8⌋, mask `1 << (c mod 8)`.
 * - Version 3 is "host-endian": the kernel used its native `unsigned long` bit
 *   operations, so bit `c` is bit `c mod W` of the `W`-bit word ⌊c/W⌋ stored in the
 *   host's byte order (`W` = the kernel's word size). On a little-endian host that is
 *   byte for byte the same as version 4; on a big-endian one the bytes of each word
 *   are reversed. {@link getBit} and friends read version 3 with the byte order of the
 *   machine running this code (`os.endianness()`), which is right as long as the file
 *   is used on the kind of machine that wrote it — the only case version 3 supports.
 * - The kernel also treats a version-4 bitmap as host-endian when its state has
 *   {@link STATE_HOSTENDIAN} set (it copies state into its flags on load, and writes
 *   its flags back, so a version-3 bitmap once loaded carries that bit too).
 *   {@link bitVersion} tells which layout a superblock's bits use.
 * - Version 5 (clustered) and 6 (lockless) are refused by name (`ECLUSTERED`,
 *   `ELOCKLESS`); anything else is `EBADVERSION`.
 *
 * ## State
 *
 * `state` keeps the bits the kernel stored ({@link STATE_STALE},
 * {@link STATE_HOSTENDIAN}, and any other flag bits some kernel chose to persist),
 * except {@link STATE_WRITE_ERROR}: it only means something inside a running kernel
 * (older kernels wrote it out; newer ones clear it before writing), so {@link decode}
 * drops it and {@link encode} refuses it.
 *
 * ## UUID
 *
 * Kept as the 16 bytes in file order. {@link mdadmUuid} formats them the way
 * `mdadm --examine-bitmap` prints them: four groups of 8 lower-case hex digits
 * separated by colons, bytes in file order (`00112233:44556677:8899aabb:ccddeeff`).
 *
 * ## Errors
 *
 * Everything throws {@link MdBitmapError}. `decode` uses: `ESHORTBUFFER`, `EBADMAGIC`,
 * `EBADVERSION`, `ECLUSTERED`, `ELOCKLESS`, `EBADCHUNK`, `EBADDAEMON`,
 * `EBADWRITEBEHIND`, `EBADSIZE`, `ESHORTFILE`, `EUUID`. `encode` uses the same codes
 * for the same faults, and `EINVAL` for a value of the wrong type or out of its field's
 * range (not an integer, not a u32, a uuid that is not 16 bytes, …).
 *
 * @module
 */
import { endianness, arch } from 'node:os'
import { MdBitmapError, type MdBitmapErrorCode } from '../errors'

/** `"bitm"` read as a little-endian u32. */
export const BITMAP_MAGIC = 0x6d746962
/** Size of the superblock; the bit array starts at this byte offset. */
export const SUPERBLOCK_SIZE = 256
/** The host-endian version. New bitmaps are version 4; a version-3 file is kept as found, as the kernel does (its bits in this host's order). */
export const BITMAP_MAJOR_HOSTENDIAN = 3
/** The version this module writes: little-endian bit order. */
export const BITMAP_MAJOR = 4
/** Clustered md bitmaps (one bitmap per node); refused with `ECLUSTERED`. */
export const BITMAP_MAJOR_CLUSTERED = 5
/** Lockless bitmaps of newer kernels; refused with `ELOCKLESS`. */
export const BITMAP_MAJOR_LOCKLESS = 6

/** State bit: the bitmap is out of date; every chunk must be resynced. */
export const STATE_STALE = 0x2
/** State bit: a bitmap write failed. In-kernel only: never stored by this module. */
export const STATE_WRITE_ERROR = 0x4
/** State bit: the bit array is host-endian (as in version 3). */
export const STATE_HOSTENDIAN = 0x8000

/** Largest allowed `write_behind` (the kernel's COUNTER_MAX). */
export const MAX_WRITE_BEHIND = 16383
/** Largest allowed `daemon_sleep`, in seconds: one day. */
export const MAX_DAEMON_SLEEP = 86400
/** Smallest chunk size, in bytes: one sector. */
export const MIN_CHUNK_SIZE = 512

const U64_MAX = (1n << 64n) - 1n
const U32_MAX = 0xffffffff
const CLUSTER_NAME_SIZE = 64

/** The decoded md bitmap superblock. See the module comment for the field types. */
export interface Superblock {
  /** 3 (host-endian bits: read, and written back as found) or 4 (little-endian bits: what new bitmaps use). */
  version: 3 | 4
  /** The array's UUID: 16 bytes, in file order. Format it with {@link mdadmUuid}. */
  uuid: Uint8Array
  /** Bitmap event count (u64). */
  events: bigint
  /** Event count when bits were last cleared (u64). */
  eventsCleared: bigint
  /** Size of the data covered, in 512-byte sectors; a positive safe integer. */
  syncSize: number
  /**
   * State flags: 0x2 STALE (every chunk must be resynced), 0x8000 HOSTENDIAN (the bits
   * are host-endian, as in version 3), and any other bit some kernel stored; never
   * 0x4 WRITE_ERROR, which only has a meaning inside a running kernel.
   */
  state: number
  /** Bytes of data per bit: a power of two, 512 ..= 2^31. */
  chunkSize: number
  /** Seconds between daemon passes: 1 ..= 86400. */
  daemonSleep: number
  /** Maximum outstanding write-behind writes, 0 ..= 16383; 0 = write-behind off. */
  writeBehind: number
  /** Sectors reserved for the bitmap (internal bitmaps; u32). */
  sectorsReserved: number
  /** Cluster nodes (u32); 0 outside clustered bitmaps. */
  nodes: number
  /**
   * The cluster name: the bytes of the field up to the first NUL, one character per
   * byte (latin1), so any stored bytes survive a decode/encode round trip. At most 64
   * characters, each U+0001..U+00FF.
   */
  clusterName: string
}

/**
 * What {@link encode} needs: `uuid`, `syncSize` and `chunkSize`; every other field has a
 * default (version 4, events 0, state 0, daemonSleep 5, the rest 0 or empty).
 */
export type SuperblockInput = Pick<Superblock, 'uuid' | 'syncSize' | 'chunkSize'> &
  Partial<Omit<Superblock, 'uuid' | 'syncSize' | 'chunkSize' | 'version'>> & {
    /** 4 (default) or 3; any other number is refused with the code `decode` uses for it. */
    version?: number
  }

/** Options for {@link decode}. */
export interface DecodeOptions {
  /**
   * The UUID the bitmap must carry (16 bytes, or a string of 32 hex digits with any
   * `:`/`-`/`.`/space separators such as mdadm's form); `EUUID` when it differs.
   */
  uuid?: Uint8Array | string
  /** The size of the whole file in bytes; `ESHORTFILE` when too short for the chunks. */
  fileSize?: number
}

function fail(code: MdBitmapErrorCode, message: string): never {
  throw new MdBitmapError(code, message)
}

function hex32(n: number): string {
  return '0x' + n.toString(16).padStart(8, '0')
}

function checkU32(name: string, v: unknown): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 0 || v > U32_MAX) {
    fail('EINVAL', `${name} must be an integer 0..${U32_MAX}, got ${String(v)}`)
  }
  return v
}

function checkU64(name: string, v: unknown): bigint {
  if (typeof v !== 'bigint' || v < 0n || v > U64_MAX) {
    fail('EINVAL', `${name} must be a bigint 0..2^64-1, got ${typeof v === 'bigint' ? v : String(v)}`)
  }
  return v
}

function checkVersion(version: number): void {
  if (version === BITMAP_MAJOR || version === BITMAP_MAJOR_HOSTENDIAN) return
  if (version === BITMAP_MAJOR_CLUSTERED) {
    fail(
      'ECLUSTERED',
      'bitmap version 5 is a clustered md bitmap (one bitmap per cluster node), which md-bitmap does not support; use a non-clustered version 4 bitmap',
    )
  }
  if (version === BITMAP_MAJOR_LOCKLESS) {
    fail(
      'ELOCKLESS',
      'bitmap version 6 is a lockless md bitmap (llbitmap), a different format that md-bitmap does not support; use a version 4 bitmap',
    )
  }
  fail(
    'EBADVERSION',
    `unknown bitmap version ${version}: only versions 3 and 4 can be read; the file is corrupt or was written by a newer tool`,
  )
}

function checkChunk(chunkSize: number): void {
  if (chunkSize < MIN_CHUNK_SIZE || (chunkSize & (chunkSize - 1)) !== 0) {
    fail(
      'EBADCHUNK',
      `bitmap chunk size ${chunkSize} is invalid: it must be a power of two of at least ${MIN_CHUNK_SIZE} bytes; the superblock is corrupt, recreate the bitmap`,
    )
  }
}

function checkDaemon(daemonSleep: number): void {
  if (daemonSleep < 1 || daemonSleep > MAX_DAEMON_SLEEP) {
    fail(
      'EBADDAEMON',
      `bitmap daemon sleep ${daemonSleep}s is out of range: it must be 1..${MAX_DAEMON_SLEEP} seconds; the superblock is corrupt, recreate the bitmap`,
    )
  }
}

function checkWriteBehind(writeBehind: number): void {
  if (writeBehind > MAX_WRITE_BEHIND) {
    fail(
      'EBADWRITEBEHIND',
      `bitmap write-behind limit ${writeBehind} is out of range: it must be 0..${MAX_WRITE_BEHIND}; the superblock is corrupt, recreate the bitmap`,
    )
  }
}

/** Accepts a 16-byte array or a hex string (see {@link DecodeOptions.uuid}); EINVAL otherwise. */
export function parseUuid(uuid: Uint8Array | string): Uint8Array {
  if (uuid instanceof Uint8Array) {
    if (uuid.length !== 16) fail('EINVAL', `a uuid must be 16 bytes, got ${uuid.length}`)
    return Uint8Array.from(uuid)
  }
  if (typeof uuid === 'string') {
    const digits = uuid.replace(/[:\-. ]/g, '')
    if (/^[0-9a-fA-F]{32}$/.test(digits)) {
      const out = new Uint8Array(16)
      for (let i = 0; i < 16; i++) out[i] = parseInt(digits.slice(2 * i, 2 * i + 2), 16)
      return out
    }
  }
  return fail('EINVAL', `a uuid must be 16 bytes or 32 hex digits (optionally separated by ':', '-', '.'), got ${String(uuid)}`)
}

/**
 * The uuid the way `mdadm --examine-bitmap` prints it: four groups of 8 lower-case hex
 * digits joined by `:`, the bytes in file order (mdadm 4.2 on a little-endian host
 * loads each group as a u32 and byte-swaps it back; on big-endian it loads it as is;
 * both print the bytes in order).
 */
export function mdadmUuid(uuid: Uint8Array): string {
  const b = parseUuid(uuid)
  const hex = Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('')
  return `${hex.slice(0, 8)}:${hex.slice(8, 16)}:${hex.slice(16, 24)}:${hex.slice(24, 32)}`
}

function clusterNameBytes(name: unknown): Uint8Array {
  if (typeof name !== 'string' || name.length > CLUSTER_NAME_SIZE) {
    fail('EINVAL', `clusterName must be a string of at most ${CLUSTER_NAME_SIZE} characters, got ${String(name)}`)
  }
  const out = new Uint8Array(CLUSTER_NAME_SIZE)
  for (let i = 0; i < name.length; i++) {
    const c = name.charCodeAt(i)
    if (c === 0 || c > 0xff) {
      fail('EINVAL', `clusterName characters must be U+0001..U+00FF (one byte each), got U+${c.toString(16).padStart(4, '0')} at ${i}`)
    }
    out[i] = c
  }
  return out
}

/** Number of chunks (bits): ⌈syncSize × 512 / chunkSize⌉, exact for every valid superblock. */
export function chunkCount(sb: Pick<Superblock, 'syncSize' | 'chunkSize'>): number {
  const sectorsPerChunk = sb.chunkSize / 512
  // Division by a power of two is exact in floating point, so floor + remainder is exact.
  return Math.floor(sb.syncSize / sectorsPerChunk) + (sb.syncSize % sectorsPerChunk === 0 ? 0 : 1)
}

/** Bytes of the bit array: ⌈chunks / 8⌉. */
export function bitmapBytes(sb: Pick<Superblock, 'syncSize' | 'chunkSize'>): number {
  return Math.ceil(chunkCount(sb) / 8)
}

/** The smallest file that holds the superblock and every bit: 256 + ⌈chunks / 8⌉ bytes. */
export function minFileSize(sb: Pick<Superblock, 'syncSize' | 'chunkSize'>): number {
  return SUPERBLOCK_SIZE + bitmapBytes(sb)
}

/** {@link minFileSize} rounded up to whole pages (default 4096 bytes), the size files are created at. */
export function pagedFileSize(sb: Pick<Superblock, 'syncSize' | 'chunkSize'>, pageSize = 4096): number {
  if (!Number.isSafeInteger(pageSize) || pageSize <= 0) fail('EINVAL', `pageSize must be a positive integer, got ${pageSize}`)
  return Math.ceil(minFileSize(sb) / pageSize) * pageSize
}

/** Which bit layout a superblock's array uses: 3 (host-endian) or 4 (little-endian). */
export function bitVersion(sb: Pick<Superblock, 'version' | 'state'>): 3 | 4 {
  return sb.version === BITMAP_MAJOR_HOSTENDIAN || (sb.state & STATE_HOSTENDIAN) !== 0 ? 3 : 4
}

/**
 * Validates every field and returns the complete superblock (defaults filled in, uuid
 * copied). Throws the codes listed in the module comment.
 */
export function normalize(input: SuperblockInput): Superblock {
  if (input === null || typeof input !== 'object') fail('EINVAL', 'a superblock must be an object')
  const version = checkU32('version', input.version ?? BITMAP_MAJOR)
  checkVersion(version)
  const uuid = parseUuid(input.uuid)
  const events = checkU64('events', input.events ?? 0n)
  const eventsCleared = checkU64('eventsCleared', input.eventsCleared ?? 0n)
  const syncSize = input.syncSize
  if (typeof syncSize !== 'number' || !Number.isSafeInteger(syncSize) || syncSize < 0) {
    fail('EINVAL', `syncSize must be a positive safe integer of sectors, got ${String(syncSize)}`)
  }
  if (syncSize === 0) fail('EBADSIZE', 'syncSize is 0 sectors: a bitmap must cover at least one sector')
  const state = checkU32('state', input.state ?? 0)
  if (state & STATE_WRITE_ERROR) {
    fail('EINVAL', `state ${hex32(state)} has WRITE_ERROR (0x4) set, which is never stored; clear that bit`)
  }
  const chunkSize = checkU32('chunkSize', input.chunkSize)
  checkChunk(chunkSize)
  const daemonSleep = checkU32('daemonSleep', input.daemonSleep ?? 5)
  checkDaemon(daemonSleep)
  const writeBehind = checkU32('writeBehind', input.writeBehind ?? 0)
  checkWriteBehind(writeBehind)
  const sectorsReserved = checkU32('sectorsReserved', input.sectorsReserved ?? 0)
  const nodes = checkU32('nodes', input.nodes ?? 0)
  const clusterName = input.clusterName ?? ''
  clusterNameBytes(clusterName)
  return {
    version: version as 3 | 4,
    uuid,
    events,
    eventsCleared,
    syncSize,
    state,
    chunkSize,
    daemonSleep,
    writeBehind,
    sectorsReserved,
    nodes,
    clusterName,
  }
}

/**
 * The 256-byte superblock for `input` (version 4 unless `input.version` is 3).
 * Throws {@link MdBitmapError} for any invalid field: the codes `decode` uses for the same
 * faults, and `EINVAL` for a value of the wrong type or out of its field's range.
 */
export function encode(input: SuperblockInput): Uint8Array {
  const sb = normalize(input)
  const out = new Uint8Array(SUPERBLOCK_SIZE)
  const dv = new DataView(out.buffer)
  dv.setUint32(0, BITMAP_MAGIC, true)
  dv.setUint32(4, sb.version, true)
  out.set(sb.uuid, 8)
  dv.setBigUint64(24, sb.events, true)
  dv.setBigUint64(32, sb.eventsCleared, true)
  dv.setBigUint64(40, BigInt(sb.syncSize), true)
  dv.setUint32(48, sb.state, true)
  dv.setUint32(52, sb.chunkSize, true)
  dv.setUint32(56, sb.daemonSleep, true)
  dv.setUint32(60, sb.writeBehind, true)
  dv.setUint32(64, sb.sectorsReserved, true)
  dv.setUint32(68, sb.nodes, true)
  out.set(clusterNameBytes(sb.clusterName), 72)
  return out
}

/**
 * Reads and validates the superblock at the start of `buf` (only the first 256 bytes
 * are looked at). Checks, in order: length, magic, version, chunk size, daemon sleep,
 * write-behind, sync size, then `opts.fileSize` and `opts.uuid` when given.
 */
export function decode(buf: Uint8Array, opts: DecodeOptions = {}): Superblock {
  if (!(buf instanceof Uint8Array)) fail('EINVAL', 'decode needs a Uint8Array (or Buffer)')
  if (buf.length < SUPERBLOCK_SIZE) {
    fail(
      'ESHORTBUFFER',
      `a bitmap superblock is ${SUPERBLOCK_SIZE} bytes but only ${buf.length} were given; read at least the first ${SUPERBLOCK_SIZE} bytes of the file (a shorter file is not a bitmap)`,
    )
  }
  const dv = new DataView(buf.buffer, buf.byteOffset, SUPERBLOCK_SIZE)
  const magic = dv.getUint32(0, true)
  if (magic !== BITMAP_MAGIC) {
    fail(
      'EBADMAGIC',
      `not an md bitmap: magic is ${hex32(magic)}, expected ${hex32(BITMAP_MAGIC)} ("bitm"); check that the path names a bitmap file, or create a new bitmap`,
    )
  }
  const version = dv.getUint32(4, true)
  checkVersion(version)
  const chunkSize = dv.getUint32(52, true)
  checkChunk(chunkSize)
  const daemonSleep = dv.getUint32(56, true)
  checkDaemon(daemonSleep)
  const writeBehind = dv.getUint32(60, true)
  checkWriteBehind(writeBehind)
  const syncSize64 = dv.getBigUint64(40, true)
  if (syncSize64 === 0n) {
    fail('EBADSIZE', 'bitmap sync_size is 0 sectors: the superblock covers no data; it is corrupt or unfinished, recreate the bitmap')
  }
  if (syncSize64 > BigInt(Number.MAX_SAFE_INTEGER)) {
    fail(
      'EBADSIZE',
      `bitmap sync_size ${syncSize64} sectors is larger than 2^53-1 sectors (4 EiB), which md-bitmap does not support; the superblock is probably corrupt`,
    )
  }
  const syncSize = Number(syncSize64)
  const nameEnd = buf.subarray(72, 72 + CLUSTER_NAME_SIZE).indexOf(0)
  const nameBytes = buf.subarray(72, 72 + (nameEnd < 0 ? CLUSTER_NAME_SIZE : nameEnd))
  const sb: Superblock = {
    version: version as 3 | 4,
    uuid: new Uint8Array(buf.subarray(8, 24)),
    events: dv.getBigUint64(24, true),
    eventsCleared: dv.getBigUint64(32, true),
    syncSize,
    state: (dv.getUint32(48, true) & ~STATE_WRITE_ERROR) >>> 0,
    chunkSize,
    daemonSleep,
    writeBehind,
    sectorsReserved: dv.getUint32(64, true),
    nodes: dv.getUint32(68, true),
    clusterName: String.fromCharCode(...nameBytes),
  }
  if (opts.fileSize !== undefined) {
    if (typeof opts.fileSize !== 'number' || !Number.isSafeInteger(opts.fileSize) || opts.fileSize < 0) {
      fail('EINVAL', `fileSize must be a non-negative integer, got ${String(opts.fileSize)}`)
    }
    const need = minFileSize(sb)
    if (opts.fileSize < need) {
      fail(
        'ESHORTFILE',
        `the bitmap file is ${opts.fileSize} bytes but its ${chunkCount(sb)} chunks need ${need} (256 + ${bitmapBytes(sb)}); the file was truncated: recreate the bitmap, or restore the file`,
      )
    }
  }
  if (opts.uuid !== undefined) {
    const want = parseUuid(opts.uuid)
    if (want.some((b, i) => b !== sb.uuid[i])) {
      fail(
        'EUUID',
        `the bitmap belongs to array ${mdadmUuid(sb.uuid)}, not ${mdadmUuid(want)}; use the bitmap file made for this array, or create a new one`,
      )
    }
  }
  return sb
}

// ---------------------------------------------------------------------------------
// Bit array

/**
 * How bit numbers map to bytes: `'le'` is version 4 (and version 3 on little-endian
 * hosts); `'be64'` / `'be32'` are version 3 on big-endian hosts with 64- / 32-bit words.
 */
export type BitOrder = 'le' | 'be64' | 'be32'

const ARCH_32 = new Set(['arm', 'ia32', 'mips', 'mipsel', 'ppc', 's390', 'x32'])

/** The order of version-3 (host-endian) bits on this machine. */
export const HOST_BIT_ORDER: BitOrder = endianness() === 'LE' ? 'le' : ARCH_32.has(arch()) ? 'be32' : 'be64'

/** The byte index and mask of bit `c` in a bit array laid out in `order`. */
export function bitLocation(c: number, order: BitOrder = 'le'): { byte: number; mask: number } {
  if (!Number.isSafeInteger(c) || c < 0) fail('EINVAL', `bit index must be a non-negative integer, got ${c}`)
  const mask = 1 << c % 8
  if (order === 'le') return { byte: Math.floor(c / 8), mask }
  const wordBytes = order === 'be64' ? 8 : 4
  const wordBits = wordBytes * 8
  const word = Math.floor(c / wordBits)
  const inWord = c % wordBits
  return { byte: word * wordBytes + (wordBytes - 1 - Math.floor(inWord / 8)), mask }
}

function orderOf(version: number): BitOrder {
  if (version === BITMAP_MAJOR) return 'le'
  if (version === BITMAP_MAJOR_HOSTENDIAN) return HOST_BIT_ORDER
  return fail('EINVAL', `bit layout version must be 3 or 4, got ${version}`)
}

function locate(bits: Uint8Array, c: number, version: number): { byte: number; mask: number } {
  const loc = bitLocation(c, orderOf(version))
  if (loc.byte >= bits.length) {
    fail('EINVAL', `bit ${c} is outside the ${bits.length}-byte bit array`)
  }
  return loc
}

/**
 * Whether chunk `c` is dirty. `bits` is the bit array (the file from byte 256 on);
 * `version` is the layout, 4 (little-endian) or 3 (host-endian); pass
 * {@link bitVersion}(sb) to honour {@link STATE_HOSTENDIAN}.
 */
export function getBit(bits: Uint8Array, c: number, version: number = BITMAP_MAJOR): boolean {
  const { byte, mask } = locate(bits, c, version)
  return (bits[byte] & mask) !== 0
}

/** Sets bit `c`; returns whether it was already set. See {@link getBit}. */
export function setBit(bits: Uint8Array, c: number, version: number = BITMAP_MAJOR): boolean {
  const { byte, mask } = locate(bits, c, version)
  const was = (bits[byte] & mask) !== 0
  bits[byte] |= mask
  return was
}

/** Clears bit `c`; returns whether it was set. See {@link getBit}. */
export function clearBit(bits: Uint8Array, c: number, version: number = BITMAP_MAJOR): boolean {
  const { byte, mask } = locate(bits, c, version)
  const was = (bits[byte] & mask) !== 0
  bits[byte] &= ~mask
  return was
}

const POPCOUNT = Uint8Array.from({ length: 256 }, (_, i) => {
  let n = 0
  for (let v = i; v; v &= v - 1) n++
  return n
})

/** Number of set bits among chunks `0 .. chunks-1` (the "dirty" count mdadm prints). */
export function dirtyCount(bits: Uint8Array, chunks: number, version: number = BITMAP_MAJOR): number {
  if (!Number.isSafeInteger(chunks) || chunks < 0) fail('EINVAL', `chunks must be a non-negative integer, got ${chunks}`)
  const order = orderOf(version)
  if (order !== 'le') {
    let n = 0
    for (let c = 0; c < chunks; c++) if (getBit(bits, c, version)) n++
    return n
  }
  const whole = Math.floor(chunks / 8)
  if (Math.ceil(chunks / 8) > bits.length) fail('EINVAL', `${chunks} chunks need ${Math.ceil(chunks / 8)} bytes, the bit array has ${bits.length}`)
  let n = 0
  for (let i = 0; i < whole; i++) n += POPCOUNT[bits[i]]
  const rest = chunks % 8
  if (rest) n += POPCOUNT[bits[whole] & ((1 << rest) - 1)]
  return n
}
