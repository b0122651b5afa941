/**
 * Self-describing data: every 512-byte sector a writer writes names the write it belongs
 * to and where it belongs, so whoever reads the disk after a crash can tell, sector by
 * sector, which write a sector holds, that it was never written, or that it is garbage.
 * The demo and the crash tests write it and check it.
 *
 * A tagged sector is 32 copies of four 32-bit words (host order, little-endian on every
 * platform the package ships for):
 *
 *   [TAG_MAGIC, id, sector, id ^ sector ^ TAG_KEY]
 *
 * `sector` is the absolute sector number (byte offset / 512) and `id` the write's id,
 * never 0: a sector of zeros is one never written.
 *
 * @internal
 * @module
 */

/** Bytes per tagged sector. */
export const SECTOR = 512
const TAG_MAGIC = 0x4754444d // 'MDTG'
const TAG_KEY = 0x5a5a5a5a
const WORDS = SECTOR / 4

/** `data` as 32-bit words (its byte offset and length must be multiples of 4). */
export function wordsOf(data: Uint8Array): Uint32Array {
  return new Uint32Array(data.buffer, data.byteOffset, data.length >>> 2)
}

/** Fills `buf`, to be written at byte `offset`, with the tagged sectors of write `id`. */
export function tagSectors(buf: Uint8Array, id: number, offset: number): void {
  const words = wordsOf(buf)
  for (let s = 0; s < buf.length / SECTOR; s++) {
    const sector = offset / SECTOR + s
    const base = s * WORDS
    for (let w = 0; w < WORDS; w += 4) {
      words[base + w] = TAG_MAGIC
      words[base + w + 1] = id
      words[base + w + 2] = sector
      words[base + w + 3] = (id ^ sector ^ TAG_KEY) >>> 0
    }
  }
}

/**
 * The write id sector `index` of `words` holds, read from the absolute sector `sector`
 * (by default the same number: `words` read from offset 0): 0 for a sector of zeros,
 * -1 for anything that is not a whole tagged sector of that place.
 */
export function sectorTag(words: Uint32Array, index: number, sector = index): number {
  const base = index * WORDS
  if (words[base] === 0) {
    for (let w = 1; w < WORDS; w++) if (words[base + w] !== 0) return -1
    return 0
  }
  const id = words[base + 1]
  if (words[base] !== TAG_MAGIC || id === 0 || words[base + 2] !== sector || words[base + 3] !== (id ^ sector ^ TAG_KEY) >>> 0) return -1
  for (let w = 4; w < WORDS; w++) if (words[base + w] !== words[base + (w & 3)]) return -1
  return id
}
