/**
 * Outside views of a bitmap file, for tests: `mdadm --examine-bitmap` (mdadm -X) as
 * the external judge, and {@link readDisk}, the file as it is on disk (O_DIRECT, so
 * never a stale page cache), decoded independently of src/.
 *
 *   const x = examineBitmap(path)   // runs mdadm -X and parses its report
 *   t.is(x.dirty, bitmap.stats().dirty)
 *
 * The report of Debian's mdadm 4.2 looks like:
 *
 * ```
 *         Filename : /var/tmp/x.bitmap
 *            Magic : 6d746962
 *          Version : 4
 *             UUID : 5d635348:4a834865:ca5fcb1f:12c786b1
 *           Events : 0
 *   Events Cleared : 0
 *            State : OK
 *        Chunksize : 4 KB
 *           Daemon : 3s flush period
 *       Write Mode : Allow write behind, max 12
 *        Sync Size : 500
 *           Bitmap : 125 bits (chunks), 2 dirty (1.6%)
 * ```
 *
 * `Sync Size` is printed in KiB, rounded down (sync_size / 2), followed by a human size
 * for large arrays; `Chunksize` in B / KB / MB / GB.
 */
import { execFileSync } from 'node:child_process'
import { readFileSync, statSync } from 'node:fs'
import { fromBytes } from '../../src/cli/bitmap-file'
import { mdadmReport } from '../../src/cli/examine'
import { which } from './env'
import { readDirect } from './io'

export interface MdadmBitmap {
  filename: string
  /** The magic as mdadm prints it: 8 hex digits. */
  magic: string
  version: number
  /** Four colon-separated groups of 8 hex digits. */
  uuid: string
  events: bigint
  eventsCleared: bigint
  /** 'OK', 'Out of date', … as printed. */
  state: string
  /** Bytes per chunk, from the printed human size. */
  chunkSize: number
  /** Seconds. */
  daemonSleep: number
  /** 0 for 'Normal', else the printed max. */
  writeBehind: number
  /** sync_size / 2 rounded down (KiB), as printed. */
  syncSizeKiB: number
  bits: number
  dirty: number
  /** Every `Key : value` line, raw. */
  raw: Record<string, string>
  /** The whole report. */
  text: string
}

/** The capability name for {@link requires}. */
export const MDADM = 'mdadm'

const UNITS: Record<string, number> = { B: 1, KB: 1024, MB: 1024 ** 2, GB: 1024 ** 3 }

/** Parses the text of `mdadm -X`; throws when a field is missing or malformed. */
export function parseExamineBitmap(text: string): MdadmBitmap {
  const raw: Record<string, string> = {}
  for (const line of text.split('\n')) {
    const m = /^\s*([A-Za-z][A-Za-z ]*?)\s+:\s?(.*)$/.exec(line)
    if (m) raw[m[1]] = m[2].trim()
  }
  const field = (k: string): string => {
    const v = raw[k]
    if (v === undefined) throw new Error(`mdadm -X printed no "${k}" line:\n${text}`)
    return v
  }
  const match = (k: string, re: RegExp): RegExpExecArray => {
    const v = field(k)
    const m = re.exec(v)
    if (!m) throw new Error(`mdadm -X "${k}" is "${v}", not ${re}:\n${text}`)
    return m
  }
  const chunk = match('Chunksize', /^(\d+) (B|KB|MB|GB)$/)
  const wm = field('Write Mode')
  let writeBehind: number
  if (wm === 'Normal') writeBehind = 0
  else {
    const m = /^Allow write behind, max (\d+)$/.exec(wm)
    if (!m) throw new Error(`mdadm -X "Write Mode" is "${wm}":\n${text}`)
    writeBehind = Number(m[1])
  }
  const bitmap = match('Bitmap', /^(\d+) bits \(chunks\), (\d+) dirty \(/)
  return {
    filename: field('Filename'),
    magic: match('Magic', /^([0-9a-f]+)$/)[1],
    version: Number(match('Version', /^(\d+)$/)[1]),
    uuid: match('UUID', /^([0-9a-f]{8}(?::[0-9a-f]{8}){3})$/)[1],
    events: BigInt(match('Events', /^(\d+)$/)[1]),
    eventsCleared: BigInt(match('Events Cleared', /^(\d+)$/)[1]),
    state: field('State'),
    chunkSize: Number(chunk[1]) * UNITS[chunk[2]],
    daemonSleep: Number(match('Daemon', /^(\d+)s flush period$/)[1]),
    writeBehind,
    syncSizeKiB: Number(match('Sync Size', /^(\d+)/)[1]),
    bits: Number(bitmap[1]),
    dirty: Number(bitmap[2]),
    raw,
    text,
  }
}

/**
 * `md-bitmap examine`'s report for the same file (computed in-process from src/cli,
 * reading the file with O_DIRECT as mdadm does) must be mdadm's text exactly: every
 * file a test hands to mdadm is also a check of the command. Throws on a difference.
 */
function crossCheckExamine(path: string, mdadmText: string): void {
  const size = statSync(path).size
  const data = size % 4096 === 0 ? readDirect(path, 0, size) : new Uint8Array(readFileSync(path))
  const ours = mdadmReport(fromBytes(path, data, size), path).bytes.toString('utf8')
  if (ours !== mdadmText) {
    throw new Error(`md-bitmap examine differs from mdadm -X on ${path}\n--- mdadm -X\n${mdadmText}--- md-bitmap examine\n${ours}`)
  }
}

/** Runs `mdadm -X path` and parses the report (and checks `md-bitmap examine` against it). */
export function examineBitmap(path: string): MdadmBitmap {
  const mdadm = which('mdadm')
  if (!mdadm) throw new Error('mdadm not found')
  let out: string
  try {
    out = execFileSync(mdadm, ['--examine-bitmap', path], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] })
  } catch (e) {
    const x = e as { stdout?: string; stderr?: string; status?: number }
    // mdadm may exit non-zero on some states while still printing the report.
    if (x.stdout && /Bitmap :/.test(x.stdout)) out = x.stdout
    else throw new Error(`mdadm -X ${path} failed (status ${x.status}): ${x.stderr ?? e}`)
  }
  crossCheckExamine(path, out)
  return parseExamineBitmap(out)
}

/** What mdadm prints for a superblock's state word. */
export function mdadmState(state: number): string {
  return state & 0x2 ? 'Out of date' : 'OK'
}

// ---------------------------------------------------------------------------------
// The file on disk

export interface DiskBitmap {
  bytes: Uint8Array
  magic: number
  version: number
  events: bigint
  eventsCleared: bigint
  syncSize: bigint
  state: number
  chunkSize: number
  daemonSleep: number
  writeBehind: number
  /** Whether chunk c's bit is set. */
  bit(c: number): boolean
  /** Set bits among the first `chunks`. */
  dirtyList(chunks: number): number[]
}

/**
 * The whole file read with O_DIRECT and its superblock decoded by hand (version 4, or
 * version 3 on a little-endian host: bit c is byte 256 + ⌊c/8⌋, mask 1 << c%8).
 */
export function readDisk(path: string): DiskBitmap {
  const size = statSync(path).size
  const bytes = readDirect(path, 0, size)
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.length)
  const bit = (c: number) => (bytes[256 + (c >> 3)] & (1 << (c & 7))) !== 0
  return {
    bytes,
    magic: dv.getUint32(0, true),
    version: dv.getUint32(4, true),
    events: dv.getBigUint64(24, true),
    eventsCleared: dv.getBigUint64(32, true),
    syncSize: dv.getBigUint64(40, true),
    state: dv.getUint32(48, true),
    chunkSize: dv.getUint32(52, true),
    daemonSleep: dv.getUint32(56, true),
    writeBehind: dv.getUint32(60, true),
    bit,
    dirtyList(chunks: number) {
      const out: number[] = []
      for (let c = 0; c < chunks; c++) if (bit(c)) out.push(c)
      return out
    },
  }
}
