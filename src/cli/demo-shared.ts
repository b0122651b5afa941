/**
 * What the demo's parent (`demo.ts`) and its writer child (`demo-writer.ts`) share:
 * how members are opened (the write-mostly one slowed) and the data the writer writes.
 *
 * ## The data
 *
 * The writer writes blocks of {@link BLOCK} bytes at block-aligned offsets. Every 4 KiB
 * page of a block names itself: a header (magic, the run's id, block number, the
 * write's generation, page index) and a fill derived from them. A block's generation
 * counts the writes to it, so after the crash the verifier can tell, page by page,
 * which write a page holds — and that it is not older than the last write the writer
 * saw acknowledged (a torn write that was never acknowledged may leave pages of two
 * generations: each page still names one of them).
 *
 * @internal
 * @module
 */
import { FileMember, SlowMember, type Member, type OpenMember } from '../member'
import { allocAligned } from '../io/aligned'

/** Bytes per demo write. */
export const BLOCK = 64 * 1024
/** The unit a page names itself in. */
export const PAGE = 4096
const MAGIC = 0x4f4d4544 // "DEMO"
const ZERO_PAGE = new Uint8Array(PAGE)

/** How the demo opens members: the write-mostly one slowed by `slowMs` per write. `onSlowWrite` gets each slow write's latency (ms). */
export function demoOpenMember(slowMs: number, onSlowWrite?: (ms: number) => void): OpenMember {
  return async (spec) => {
    const file = await FileMember.open(spec.path)
    if (!spec.writeMostly) return file
    const slow = new SlowMember(file, slowMs)
    if (!onSlowWrite) return slow
    return timed(slow, onSlowWrite)
  }
}

function timed(inner: Member, record: (ms: number) => void): Member {
  return {
    get path() {
      return inner.path
    },
    get size() {
      return inner.size
    },
    get alignment() {
      return inner.alignment
    },
    read: (t, o) => inner.read(t, o),
    async write(d, o) {
      const t0 = performance.now()
      await inner.write(d, o)
      record(performance.now() - t0)
    },
    flush: () => inner.flush(),
    close: () => inner.close(),
  }
}

function fillWord(run: number, block: number, gen: number, page: number): number {
  let x = (Math.imul(run ^ 0x9e3779b9, 2654435761) ^ Math.imul(block + 1, 40503) ^ Math.imul(gen + 7, 69069) ^ Math.imul(page + 3, 1103515245)) >>> 0
  x ^= x >>> 15
  x = Math.imul(x, 0x2c1b3c6d) >>> 0
  x ^= x >>> 12
  return x >>> 0
}

/** Writes the content of one page of (block, gen) into `page` (PAGE bytes). */
export function fillPage(page: Uint8Array, run: number, block: number, gen: number, index: number): void {
  const dv = new DataView(page.buffer, page.byteOffset, PAGE)
  const w = fillWord(run, block, gen, index)
  for (let i = 0; i < PAGE; i += 4) dv.setUint32(i, (w + i) >>> 0, true)
  dv.setUint32(0, MAGIC, true)
  dv.setUint32(4, run, true)
  dv.setUint32(8, block, true)
  dv.setUint32(12, gen, true)
  dv.setUint32(16, index, true)
}

/** The BLOCK bytes of write `gen` to `block`, in an aligned buffer. */
export function blockData(run: number, block: number, gen: number): Uint8Array {
  const buf = allocAligned(BLOCK, PAGE)
  for (let p = 0; p < BLOCK / PAGE; p++) fillPage(buf.subarray(p * PAGE, (p + 1) * PAGE), run, block, gen, p)
  return buf
}

/**
 * What a page of `block` holds: its generation if it is a valid page of this run's
 * block (page index `index`), 0 if it is all zeros (never written), or -1 if it is
 * neither (corrupt, or another block's data).
 */
export function pageGeneration(page: Uint8Array, run: number, block: number, index: number, scratch: Uint8Array): number {
  const dv = new DataView(page.buffer, page.byteOffset, PAGE)
  if (dv.getUint32(0, true) !== MAGIC) return Buffer.compare(page, ZERO_PAGE) === 0 ? 0 : -1
  const gen = dv.getUint32(12, true)
  if (dv.getUint32(4, true) !== run || dv.getUint32(8, true) !== block || dv.getUint32(16, true) !== index || gen === 0) return -1
  fillPage(scratch, run, block, gen, index)
  return Buffer.compare(page, scratch) === 0 ? gen : -1
}
