/**
 * Structured replies (`NBD_OPT_STRUCTURED_REPLY`), the server's side: the chunk header
 * and the chunks it sends — `OFFSET_DATA` and `OFFSET_HOLE` for reads, `BLOCK_STATUS`
 * for `NBD_CMD_BLOCK_STATUS`, `ERROR` for a failed request, `NONE` to end a reply.
 * Pure functions over bytes.
 *
 * A chunk: magic 0x668e33ef (32 bits), flags (16; `DONE` on the last chunk of a
 * reply), type (16), the request's cookie (64), the payload's length (32), payload.
 *
 * A read's reply "where holes pay" ({@link readChunks}): the data is cut at a
 * granularity (64 KiB, a multiple of the export's minimum block size), and each run
 * of all-zero pieces goes out as one `OFFSET_HOLE` (12 bytes instead of the zeroes), the
 * rest as `OFFSET_DATA`; a read shorter than two pieces, or with `NBD_CMD_FLAG_DF`
 * (one chunk only), goes out as a single `OFFSET_DATA`.
 *
 * @module
 */
import { STRUCTURED_REPLY_MAGIC } from './constants'

/** Structured reply chunk flags. */
export const ReplyFlag = { DONE: 1 << 0 } as const

/** Structured reply chunk types. */
export const ReplyType = {
  NONE: 0,
  OFFSET_DATA: 1,
  OFFSET_HOLE: 2,
  BLOCK_STATUS: 5,
  ERROR: 2 ** 15 + 1,
  ERROR_OFFSET: 2 ** 15 + 2,
} as const

/** The length of a structured reply chunk header. */
export const CHUNK_HEADER_LENGTH = 20

/** A chunk header, then `payloadHead` (the part of the payload encoded here). */
function chunk(flags: number, type: number, cookie: bigint, length: number, payloadHead = 0): { b: Uint8Array; v: DataView } {
  const b = new Uint8Array(CHUNK_HEADER_LENGTH + payloadHead)
  const v = new DataView(b.buffer)
  v.setUint32(0, STRUCTURED_REPLY_MAGIC)
  v.setUint16(4, flags)
  v.setUint16(6, type)
  v.setBigUint64(8, BigInt.asUintN(64, cookie))
  v.setUint32(16, length)
  return { b, v }
}

/** `NBD_REPLY_TYPE_NONE` with `DONE`: a reply without payload, or the end of one. */
export function encodeDoneChunk(cookie: bigint): Uint8Array {
  return chunk(ReplyFlag.DONE, ReplyType.NONE, cookie, 0).b
}

/** The header of an `OFFSET_DATA` chunk (the data follows it on the wire). */
export function encodeOffsetDataHeader(cookie: bigint, offset: number, dataLength: number, done: boolean): Uint8Array {
  const { b, v } = chunk(done ? ReplyFlag.DONE : 0, ReplyType.OFFSET_DATA, cookie, 8 + dataLength, 8)
  v.setBigUint64(20, BigInt(offset))
  return b
}

/** An `OFFSET_HOLE` chunk: `length` bytes of zeroes at `offset`. */
export function encodeOffsetHole(cookie: bigint, offset: number, length: number, done: boolean): Uint8Array {
  const { b, v } = chunk(done ? ReplyFlag.DONE : 0, ReplyType.OFFSET_HOLE, cookie, 12, 12)
  v.setBigUint64(20, BigInt(offset))
  v.setUint32(28, length)
  return b
}

/** An `ERROR` chunk (with `DONE`): the error value and a message for humans. */
export function encodeErrorChunk(cookie: bigint, error: number, message: string): Uint8Array {
  const text = new TextEncoder().encode(message).subarray(0, 1024)
  const { b, v } = chunk(ReplyFlag.DONE, ReplyType.ERROR, cookie, 6 + text.length, 6 + text.length)
  v.setUint32(20, error >>> 0)
  v.setUint16(24, text.length)
  b.set(text, 26)
  return b
}

/** One block status descriptor: `length` bytes with status `flags`. */
export interface StatusExtent {
  /** Bytes described, from where the previous descriptor ended. */
  length: number
  /** Status flags, the context's (`base:allocation`: 1 hole, 2 zero). */
  flags: number
}

/** A `BLOCK_STATUS` chunk: the context's id, then its descriptors. */
export function encodeBlockStatusChunk(cookie: bigint, contextId: number, extents: readonly StatusExtent[], done: boolean): Uint8Array {
  const n = 4 + 8 * extents.length
  const { b, v } = chunk(done ? ReplyFlag.DONE : 0, ReplyType.BLOCK_STATUS, cookie, n, n)
  v.setUint32(20, contextId)
  extents.forEach((e, i) => {
    v.setUint32(24 + 8 * i, e.length)
    v.setUint32(28 + 8 * i, e.flags >>> 0)
  })
  return b
}

/** The granularity at which a read is searched for zeroes. */
export const HOLE_PIECE = 64 * 1024
const ZEROES = Buffer.alloc(HOLE_PIECE)

/**
 * The chunks of a successful read of `data` at `offset`: buffers to write in order
 * (headers, data views, hole chunks), the last one flagged `DONE`. See the module
 * comment for where holes are used.
 */
export function readChunks(cookie: bigint, offset: number, data: Uint8Array, oneChunk: boolean): Uint8Array[] {
  if (oneChunk || data.length < 2 * HOLE_PIECE) return [encodeOffsetDataHeader(cookie, offset, data.length, true), data]
  // Runs of pieces, each all zero or not.
  const runs: { at: number; length: number; zero: boolean }[] = []
  for (let at = 0; at < data.length; at += HOLE_PIECE) {
    const n = Math.min(HOLE_PIECE, data.length - at)
    const zero = Buffer.from(data.buffer, data.byteOffset + at, n).equals(n === HOLE_PIECE ? ZEROES : ZEROES.subarray(0, n))
    const last = runs[runs.length - 1]
    if (last && last.zero === zero) last.length += n
    else runs.push({ at, length: n, zero })
  }
  const out: Uint8Array[] = []
  runs.forEach((r, i) => {
    const done = i === runs.length - 1
    if (r.zero) out.push(encodeOffsetHole(cookie, offset + r.at, r.length, done))
    else out.push(encodeOffsetDataHeader(cookie, offset + r.at, r.length, done), data.subarray(r.at, r.at + r.length))
  })
  return out
}
