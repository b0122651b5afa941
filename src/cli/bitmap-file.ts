/**
 * Reading a bitmap file for inspection, never writing it: the superblock and as much
 * of the bit array as the file holds, read as it is on disk (`io/uncached-read.ts`:
 * O_DIRECT, so a bitmap written in device mode, under the page cache, is seen as it
 * is on disk; ordinary reads where O_DIRECT is refused).
 *
 * Unlike {@link Bitmap.open} this leaves the file alone: a stale bitmap stays stale,
 * and a truncated one is still reported (as mdadm does), with `bitsInFile` below
 * `chunks`.
 *
 * @internal
 * @module
 */
import { MdBitmapError, toMdBitmapError } from '../errors'
import { readFileStart, type FileStart } from '../io/uncached-read'
import { HOST_BIT_ORDER, SUPERBLOCK_SIZE, bitVersion, bitmapBytes, chunkCount, decode, getBit, type Superblock } from '../bitmap/superblock'

/** A bitmap file as read from disk. */
export interface BitmapFile {
  /** The path as given. */
  path: string
  fileSize: number
  /** The superblock, validated by {@link decode}. */
  sb: Superblock
  /** The state word exactly as stored (decode drops WRITE_ERROR; mdadm does not). */
  rawState: number
  /** Chunks the superblock describes: ⌈sync_size × 512 / chunksize⌉. */
  chunks: number
  /** Chunks whose bit the file holds: `chunks`, or fewer when the file is truncated. */
  bitsInFile: number
  /** The bit array (from byte 256), `⌈bitsInFile / 8⌉` bytes. */
  bits: Uint8Array
  /** The 256 bytes of the superblock as stored. */
  header: Uint8Array
}

/** The first read: the superblock and the first bits. */
const HEAD = 4096

/**
 * Builds a {@link BitmapFile} from the file's first bytes: `data` holds the file from
 * offset 0, at least its first `min(fileSize, 256 + ⌈chunks / 8⌉)` bytes.
 */
export function fromBytes(path: string, data: Uint8Array, fileSize: number): BitmapFile {
  if (fileSize < SUPERBLOCK_SIZE) {
    throw new MdBitmapError(
      'ESHORTFILE',
      `${path} is ${fileSize} bytes, too short for the ${SUPERBLOCK_SIZE}-byte superblock of a bitmap; it is not a bitmap file`,
    )
  }
  let sb: Superblock
  try {
    sb = decode(data)
  } catch (e) {
    throw toMdBitmapError(e, { context: path })
  }
  const rawState = new DataView(data.buffer, data.byteOffset, SUPERBLOCK_SIZE).getUint32(48, true)
  const chunks = chunkCount(sb)
  const bytesInFile = Math.min(bitmapBytes(sb), fileSize - SUPERBLOCK_SIZE)
  const bitsInFile = Math.min(chunks, bytesInFile * 8)
  const bits = data.subarray(SUPERBLOCK_SIZE, SUPERBLOCK_SIZE + Math.ceil(bitsInFile / 8))
  if (bits.length < Math.ceil(bitsInFile / 8)) throw new MdBitmapError('EIO', `${path}: short read of the bit array`)
  return { path, fileSize, sb, rawState, chunks, bitsInFile, bits, header: data.subarray(0, SUPERBLOCK_SIZE) }
}

/** Reads a bitmap file's superblock and bit array, leaving the file untouched. */
export async function readBitmapFile(path: string): Promise<BitmapFile> {
  const head = await readStart(path, HEAD)
  const parsed = fromBytes(path, head.data, Math.min(head.fileSize, head.data.length))
  const want = Math.min(head.fileSize, SUPERBLOCK_SIZE + bitmapBytes(parsed.sb))
  const all = want <= head.data.length ? head : await readStart(path, want)
  if (all.data.length < want) {
    throw new MdBitmapError('EIO', `${path}: read ${all.data.length} of ${want} bytes; the file changed while being read, try again`)
  }
  return fromBytes(path, all.data, all.fileSize)
}

function readStart(path: string, length: number): Promise<FileStart> {
  return readFileStart(path, length).catch((e: MdBitmapError) => {
    if (e.code !== 'ENOT_REGULAR_FILE') throw e
    throw toMdBitmapError(e, { hint: 'give the path of a bitmap file (mdadm --examine-bitmap reads internal bitmaps of md devices)' })
  })
}

/** A byte range of the data covered by the bitmap. */
export interface ByteRange {
  offset: number
  length: number
}

/**
 * The set chunks of a complete bitmap file as byte ranges of the data, adjacent chunks
 * merged, the last one cut at the data's end. Bits are read in the file's layout
 * (version 3 / HOSTENDIAN in this host's order). Throws ESHORTFILE for a truncated file.
 */
export function dirtyRanges(f: BitmapFile): { chunks: number[]; ranges: ByteRange[] } {
  if (f.bitsInFile < f.chunks) {
    throw new MdBitmapError(
      'ESHORTFILE',
      `${f.path} holds bits for ${f.bitsInFile} of its ${f.chunks} chunks: the file was truncated, so which chunks are dirty is unknown; treat the whole device as dirty and recreate the bitmap`,
    )
  }
  const cs = f.sb.chunkSize
  const size = f.sb.syncSize * 512
  const version = bitVersion(f.sb)
  const chunks: number[] = []
  const ranges: ByteRange[] = []
  if (version === 4 || HOST_BIT_ORDER === 'le') {
    // Bit c is byte c/8, mask 1 << c%8: skip the clean bytes.
    for (let i = 0; i < f.bits.length; i++) {
      const b = f.bits[i]
      if (b === 0) continue
      for (let k = 0; k < 8 && i * 8 + k < f.chunks; k++) if (b & (1 << k)) chunks.push(i * 8 + k)
    }
  } else {
    for (let c = 0; c < f.chunks; c++) if (getBit(f.bits, c, 3)) chunks.push(c)
  }
  for (const c of chunks) {
    const offset = c * cs
    const length = Math.min(cs, size - offset)
    const last = ranges[ranges.length - 1]
    if (last && last.offset + last.length === offset) last.length += length
    else ranges.push({ offset, length })
  }
  return { chunks, ranges }
}
