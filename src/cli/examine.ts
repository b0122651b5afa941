/**
 * `md-bitmap examine FILE`: the report `mdadm --examine-bitmap FILE` prints (Debian's
 * mdadm 4.2), line for line, or the decoded fields as JSON.
 *
 * What mdadm prints, and how each value is formed (its format is the spec matched
 * here; the code is this project's own):
 *
 * ```
 *         Filename : <the path exactly as given>
 *            Magic : <magic, 8 lower-case hex digits>
 *          Version : <version>
 *             UUID : <4 groups of 8 hex digits: the 16 bytes in file order>
 *           Events : <events>                  ┐ only when nodes == 0
 *   Events Cleared : <events_cleared>          │
 *            State : OK | Out of date | Unknown┘ (the whole state word: 0, 2, anything else)
 *        Chunksize : <chunksize shifted right by 10 while non-zero> B|KB|MB|GB|TB
 *           Daemon : <daemon_sleep>s flush period
 *       Write Mode : Normal | Allow write behind, max <write_behind>
 *        Sync Size : <sync_size / 2><human size of sync_size × 512>
 *           Bitmap : <bits> bits (chunks), <dirty> dirty (<percent %2.1f>%)
 * ```
 *
 * - Labels are right-aligned so the colons line up in column 17.
 * - The human size (mdadm's util.c) is empty below 5000 KiB; below 2 GiB it is
 *   ` (x.xx MiB y.yy MB)`, below 2 TiB ` (x.xx GiB y.yy GB)`, else ` (x.xx TiB y.yy TB)`,
 *   each a count of hundredths rounded half up, in 64-bit integers that wrap for
 *   sizes past about 41 PiB: see {@link humanSize} for the figure mdadm then prints.
 * - `bits` is the chunk count, ⌈sync_size × 512 / chunksize⌉, or the bits the file
 *   actually holds when it is shorter (then mdadm also warns on stderr that the file
 *   "is not large enough"). `dirty` counts set bits among them, bit c at byte c/8,
 *   mask 1 << c%8. The percentage is 100.0 × dirty / bits (1 when bits is 0) printed
 *   with one decimal, glibc rounding the exact binary value half to even.
 * - When `nodes` is non-zero (a clustered superblock) Events, Events Cleared, State and
 *   Bitmap are not printed; instead `Cluster nodes`, `Cluster name` (padded to 64
 *   columns), and for each node mdadm 4.2 tries to read that node's bitmap, which for
 *   a bitmap file fails: `   Unable to read bitmap on node: <i>`.
 *
 * Files mdadm would print with warnings but md-bitmap cannot use (bad magic, unknown
 * version, chunk size not a power of two, …) are refused with the decode error instead.
 *
 * @internal
 * @module
 */
import { SUPERBLOCK_SIZE, bitVersion, mdadmUuid, STATE_HOSTENDIAN, STATE_STALE, STATE_WRITE_ERROR } from '../bitmap/superblock'
import { readBitmapFile, type BitmapFile } from './bitmap-file'
import { parse } from './args'
import { errorLine, EXIT_FAILED } from './errors'
import type { Io } from './io'

export const HELP = `Usage: md-bitmap examine FILE... [--json]

Prints what \`mdadm --examine-bitmap FILE\` prints for the bitmap file FILE, line for
line: magic, version, uuid, events, state, chunk size, daemon sleep, write mode, sync
size and the number of bits and dirty bits. The file is only read (with O_DIRECT, so a
bitmap written in device mode is seen as it is on disk), never changed.

A truncated file is reported as mdadm reports it (only the bits it holds), with a
warning on stderr. A file that is not a usable bitmap (bad magic, unknown or clustered
version, invalid chunk size, ...) is an error naming what is wrong. Several files are
reported one after the other, as mdadm does (with --json: an array).

Options:
  --json      the decoded superblock and bit counts as JSON (events as strings)
  -h, --help  this help`

/**
 * mdadm's human_size of a byte count, as Debian's mdadm 4.2 binary computes it.
 *
 * The C computes centi-units as `(bytes * 200 / 2^k + 1) / 2` in signed 64-bit
 * integers and prints `c / 100` and `c % 100`. In the branch for 2 TiB and up,
 * `bytes * 200` leaves the 64-bit range past about 41 PiB; the compiler, free to
 * assume no signed overflow (so every value non-negative), divides by shifting and
 * splits hundredths as unsigned numbers. The wrapped result is what mdadm prints, so
 * it is reproduced here: wrap to 64 bits, arithmetic shifts, then unsigned `/ 100`
 * and `% 100`. For sizes that do not overflow this is plain rounding half up.
 */
export function humanSize(byteCount: bigint): string {
  const b = BigInt.asIntN(64, byteCount)
  if (b < 5000n * 1024n) return ''
  const centi = (shift: bigint, decimal: bigint): [bigint, bigint] => {
    const cBin = (BigInt.asIntN(64, b * 200n) >> shift) + 1n
    const cDec = b / (decimal / 200n) + 1n
    return [BigInt.asUintN(64, cBin >> 1n), BigInt.asUintN(64, cDec >> 1n)]
  }
  const fmt = (c: bigint) => `${c / 100n}.${(c % 100n).toString().padStart(2, '0')}`
  const [bin, dec, units] =
    b < 2n << 30n ? [...centi(20n, 1_000_000n), ['MiB', 'MB']] : b < 2n << 40n ? [...centi(30n, 1_000_000_000n), ['GiB', 'GB']] : [...centi(40n, 1_000_000_000_000n), ['TiB', 'TB']]
  return ` (${fmt(bin as bigint)} ${(units as string[])[0]} ${fmt(dec as bigint)} ${(units as string[])[1]})`
}

/** mdadm's human_chunksize. */
export function humanChunk(chunkSize: number): string {
  const units = ['B', 'KB', 'MB', 'GB', 'TB']
  let v = chunkSize
  let i = 0
  while (v >= 1024) {
    v = Math.floor(v / 1024)
    i++
  }
  return `${v} ${units[i]}`
}

/** printf("%2.1f", v) for a finite non-negative double: exact value, ties to even. */
export function printf1(v: number): string {
  // A double is a tie at the tenths only if v×10 ends in exactly .5, which for a
  // binary fraction means v×4 is an odd integer (v = n + 0.25 or n + 0.75).
  const x4 = v * 4
  if (Number.isInteger(x4) && x4 % 2 !== 0) {
    const lo = Math.floor(v * 10) // exact: v×10 = n×10 + 2.5 or + 7.5
    const tenths = lo % 2 === 0 ? lo : lo + 1
    return `${Math.floor(tenths / 10)}.${tenths % 10}`
  }
  return v.toFixed(1)
}

/** Bits set among the first `n` bits of `bits`, bit c at byte c/8, mask 1 << c%8 (mdadm's count). */
export function countDirty(bits: Uint8Array, n: number): number {
  let count = 0
  const whole = Math.floor(n / 8)
  for (let i = 0; i < whole; i++) {
    let b = bits[i]
    while (b) {
      b &= b - 1
      count++
    }
  }
  const rest = n % 8
  if (rest) {
    let b = bits[whole] & ((1 << rest) - 1)
    while (b) {
      b &= b - 1
      count++
    }
  }
  return count
}

/** mdadm's state name: the whole state word must be 0 or 2. */
function stateName(state: number): string {
  return state === 0 ? 'OK' : state === STATE_STALE ? 'Out of date' : 'Unknown'
}

const label = (name: string) => name.padStart(16) + ' : '

/**
 * mdadm prints the cluster name with `%s` from the 64-byte field, which stops at the
 * first NUL; a name that fills all 64 bytes runs on into the padding (zeros in every
 * file written by mdadm, the kernel or md-bitmap). Read the same bytes: up to the
 * first NUL within the superblock.
 */
function clusterNameBytes(header: Uint8Array): Buffer {
  const field = header.subarray(72, SUPERBLOCK_SIZE)
  const end = field.indexOf(0)
  return Buffer.from(field.subarray(0, end < 0 ? field.length : end))
}

/**
 * The report of `mdadm --examine-bitmap` for a file read by {@link readBitmapFile}
 * (or built with `fromBytes`), `filename` printed as given. Returns the stdout bytes
 * (the file name in UTF-8, the cluster name as its raw bytes, as mdadm writes them),
 * the same as text, and the warning mdadm writes to stderr, if any.
 */
export function mdadmReport(f: BitmapFile, filename: string = f.path): { bytes: Buffer; text: string; warning?: string } {
  const sb = f.sb
  const parts: Buffer[] = []
  const add = (name: string, value: string | Buffer) => {
    parts.push(Buffer.from(label(name)), typeof value === 'string' ? Buffer.from(value) : value, Buffer.from('\n'))
  }
  add('Filename', filename)
  add('Magic', '6d746962')
  add('Version', String(sb.version))
  add('UUID', mdadmUuid(sb.uuid))
  if (sb.nodes === 0) {
    add('Events', sb.events.toString())
    add('Events Cleared', sb.eventsCleared.toString())
    add('State', stateName(f.rawState))
  }
  add('Chunksize', humanChunk(sb.chunkSize))
  add('Daemon', `${sb.daemonSleep}s flush period`)
  add('Write Mode', sb.writeBehind ? `Allow write behind, max ${sb.writeBehind}` : 'Normal')
  add('Sync Size', `${BigInt(sb.syncSize) / 2n}${humanSize(BigInt(sb.syncSize) * 512n)}`)
  let warning: string | undefined
  if (sb.nodes === 0) {
    const dirty = countDirty(f.bits, f.bitsInFile)
    add('Bitmap', `${f.bitsInFile} bits (chunks), ${dirty} dirty (${printf1((100.0 * dirty) / (f.bitsInFile || 1))}%)`)
    if (f.bitsInFile < f.chunks) {
      warning = `ESHORTFILE: the file holds bits for ${f.bitsInFile} of ${f.chunks} chunks: it is not large enough for array size ${sb.syncSize} sectors (mdadm reports only the bits present); recreate or restore the bitmap`
    }
  } else {
    add('Cluster nodes', String(sb.nodes))
    const name = clusterNameBytes(f.header)
    add('Cluster name', name.length >= 64 ? name : Buffer.concat([name, Buffer.alloc(64 - name.length, 0x20)]))
    // mdadm 4.2 looks for each node's bitmap in a block device's metadata; a file has none.
    for (let i = 0; i < sb.nodes; i++) parts.push(Buffer.from(`   Unable to read bitmap on node: ${i}\n`))
    warning = `ECLUSTERED: the superblock says ${sb.nodes} cluster node(s); per-node bitmaps live on clustered md devices, not in a bitmap file, so they are not shown`
  }
  const bytes = Buffer.concat(parts)
  return { bytes, text: bytes.toString('latin1'), warning }
}

/** The decoded fields, for `--json`. */
export function examineJson(f: BitmapFile): Record<string, unknown> {
  const sb = f.sb
  const dirty = countDirty(f.bits, f.bitsInFile)
  const flags: string[] = []
  if (f.rawState & STATE_STALE) flags.push('stale')
  if (f.rawState & STATE_WRITE_ERROR) flags.push('write-error')
  if (f.rawState & STATE_HOSTENDIAN) flags.push('hostendian')
  return {
    filename: f.path,
    fileSize: f.fileSize,
    magic: '6d746962',
    version: sb.version,
    bitLayout: bitVersion(sb) === 4 ? 'little-endian' : 'host-endian',
    uuid: mdadmUuid(sb.uuid),
    events: sb.events.toString(),
    eventsCleared: sb.eventsCleared.toString(),
    state: f.rawState,
    stateFlags: flags,
    stateText: stateName(f.rawState),
    stale: (f.rawState & STATE_STALE) !== 0,
    chunkSize: sb.chunkSize,
    daemonSleep: sb.daemonSleep,
    writeBehind: sb.writeBehind,
    syncSize: sb.syncSize,
    sizeBytes: sb.syncSize * 512,
    sectorsReserved: sb.sectorsReserved,
    nodes: sb.nodes,
    clusterName: sb.clusterName,
    chunks: f.chunks,
    bitsInFile: f.bitsInFile,
    truncated: f.bitsInFile < f.chunks,
    dirty,
    dirtyPercent: f.bitsInFile ? (100 * dirty) / f.bitsInFile : 0,
  }
}

/** Runs `examine`. */
export async function examine(argv: string[], io: Io): Promise<number> {
  const { values, positionals } = parse('examine', argv, { json: { type: 'boolean' } }, { min: 1, max: Infinity, names: 'a bitmap FILE' })
  if (values.help) {
    io.out(HELP + '\n')
    return 0
  }
  // Several files are reported one after the other, as mdadm does; a file that fails
  // gets its one error line and the others are still reported (exit status 1).
  let failed = false
  const json: Record<string, unknown>[] = []
  for (const path of positionals) {
    let f: BitmapFile
    try {
      f = await readBitmapFile(path)
    } catch (e) {
      if (positionals.length === 1) throw e
      io.err(errorLine(e) + '\n')
      failed = true
      continue
    }
    if (values.json) {
      json.push(examineJson(f))
      continue
    }
    const { bytes, warning } = mdadmReport(f, path)
    io.out(bytes)
    if (warning) io.err(`md-bitmap: warning: ${warning}\n`)
  }
  if (values.json) io.out(JSON.stringify(positionals.length === 1 ? json[0] : json, null, 2) + '\n')
  return failed ? EXIT_FAILED : 0
}
