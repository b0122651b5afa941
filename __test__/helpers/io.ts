/**
 * Byte-level helpers for tests: recognisable page patterns, direct (O_DIRECT) reads of
 * files and block devices, whole-file writes, and comparisons that say where they differ.
 */
import { createHash, randomBytes } from 'node:crypto'
import * as fs from 'node:fs'
import { allocAligned } from '../../src'
import { Prng } from '../../src/cli/demo/prng'

export const PAGE = 4096

/** A marker no real data contains by chance, unique per test run. */
export function newMarker(): Buffer {
  return Buffer.concat([Buffer.from('MDBT'), randomBytes(12)])
}

/**
 * A page that names itself: the 16-byte marker, the page index as a u32 LE, then bytes
 * derived from (index, seed), so two pages (or two rounds over one page) never match.
 */
export function patternPage(marker: Buffer, index: number, seed = 0, size = PAGE): Uint8Array {
  const page = allocAligned(size, PAGE)
  marker.copy(page, 0)
  new DataView(page.buffer, page.byteOffset).setUint32(16, index, true)
  new DataView(page.buffer, page.byteOffset).setUint32(20, seed, true)
  const prng = new Prng((index * 2654435761 + seed * 40503 + 1) >>> 0)
  for (let i = 24; i < size; i++) page[i] = prng.next() & 0xff
  return page
}

/** Reads [offset, offset+length) of a file or block device with O_DIRECT. */
export function readDirect(path: string, offset: number, length: number): Uint8Array {
  const buf = allocAligned(length, PAGE)
  const fd = fs.openSync(path, fs.constants.O_RDONLY | fs.constants.O_DIRECT)
  try {
    let done = 0
    while (done < length) {
      const n = fs.readSync(fd, buf, done, Math.min(1 << 22, length - done), offset + done)
      if (n === 0) throw new Error(`short direct read of ${path}: ${done} of ${length} bytes at ${offset}`)
      done += n
    }
  } finally {
    fs.closeSync(fd)
  }
  return buf
}

/** Ordinary (page-cache) read of a whole file. */
export function readBuffered(path: string): Buffer {
  return fs.readFileSync(path)
}

/** The size of a block device, from sysfs. */
export function deviceSize(dev: string): number {
  const name = dev.replace(/^\/dev\//, '')
  return Number(fs.readFileSync(`/sys/class/block/${name}/size`, 'utf8').trim()) * 512
}

/** Writes `data` as the whole content of `path` and fsyncs it. */
export function writeWhole(path: string, data: Uint8Array): void {
  const fd = fs.openSync(path, 'w')
  try {
    let done = 0
    while (done < data.length) done += fs.writeSync(fd, data, done, data.length - done, done)
    fs.fsyncSync(fd)
  } finally {
    fs.closeSync(fd)
  }
}

export function sha(data: Uint8Array): string {
  return createHash('sha256').update(data).digest('hex')
}

/** Offsets of the `unit`-sized blocks where `a` and `b` differ. */
export function changedBlocks(a: Uint8Array, b: Uint8Array, unit = PAGE): number[] {
  if (a.length !== b.length) throw new Error(`lengths differ: ${a.length} vs ${b.length}`)
  const out: number[] = []
  for (let o = 0; o < a.length; o += unit) {
    if (Buffer.compare(a.subarray(o, o + unit), b.subarray(o, o + unit)) !== 0) out.push(o)
  }
  return out
}

/** Every offset (a multiple of `step`) at which `needle` starts in `hay`. */
export function findAligned(hay: Uint8Array, needle: Uint8Array, step = 512): number[] {
  const out: number[] = []
  const h = Buffer.from(hay.buffer, hay.byteOffset, hay.length)
  let at = h.indexOf(needle)
  while (at !== -1) {
    if (at % step === 0) out.push(at)
    at = h.indexOf(needle, at + 1)
  }
  return out
}

/** The first differing byte of two equal-length arrays, or -1. */
export function firstDiff(a: Uint8Array, b: Uint8Array): number {
  if (a.length !== b.length) return Math.min(a.length, b.length)
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return i
  return -1
}
