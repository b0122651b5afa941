/**
 * Encoders and decoders of the transmission phase: request headers and simple reply
 * headers. Handles ("cookies") are 64 bits and kept as `bigint`; offsets are 64 bits,
 * decoded as `bigint` and checked against the export's size by the server before they
 * become numbers.
 *
 * @internal
 * @module
 */
import { REQUEST_HEADER_LENGTH, REQUEST_MAGIC, SIMPLE_REPLY_LENGTH, SIMPLE_REPLY_MAGIC, STRUCTURED_REPLY_MAGIC } from './constants'
import { protocolError } from './errors'
import { need, view } from './wire'

/** A request header, as sent by a client. */
export interface RequestHeader {
  flags: number
  type: number
  cookie: bigint
  offset: bigint
  length: number
}

export function encodeRequest(r: { flags?: number; type: number; cookie: bigint; offset?: number | bigint; length?: number }): Uint8Array {
  const b = new Uint8Array(REQUEST_HEADER_LENGTH)
  const v = view(b)
  v.setUint32(0, REQUEST_MAGIC)
  v.setUint16(4, r.flags ?? 0)
  v.setUint16(6, r.type)
  v.setBigUint64(8, BigInt.asUintN(64, r.cookie))
  v.setBigUint64(16, BigInt(r.offset ?? 0))
  v.setUint32(24, r.length ?? 0)
  return b
}

export function decodeRequestHeader(b: Uint8Array): RequestHeader {
  const v = need(b, REQUEST_HEADER_LENGTH, 'request header')
  const magic = v.getUint32(0)
  if (magic !== REQUEST_MAGIC) throw protocolError(`a request has magic 0x${magic.toString(16)}, not 0x${REQUEST_MAGIC.toString(16)}`)
  return { flags: v.getUint16(4), type: v.getUint16(6), cookie: v.getBigUint64(8), offset: v.getBigUint64(16), length: v.getUint32(24) }
}

export function encodeSimpleReply(error: number, cookie: bigint): Uint8Array {
  const b = new Uint8Array(SIMPLE_REPLY_LENGTH)
  const v = view(b)
  v.setUint32(0, SIMPLE_REPLY_MAGIC)
  v.setUint32(4, error >>> 0)
  v.setBigUint64(8, BigInt.asUintN(64, cookie))
  return b
}

/** Decodes a 16-byte simple reply header; structured replies were never negotiated, so they are errors. */
export function decodeReplyHeader(b: Uint8Array): { error: number; cookie: bigint } {
  const v = need(b, SIMPLE_REPLY_LENGTH, 'reply header')
  const magic = v.getUint32(0)
  if (magic === STRUCTURED_REPLY_MAGIC) throw protocolError('the server sent a structured reply, which was not negotiated')
  if (magic !== SIMPLE_REPLY_MAGIC) throw protocolError(`a reply has magic 0x${magic.toString(16)}, not 0x${SIMPLE_REPLY_MAGIC.toString(16)}`)
  return { error: v.getUint32(4), cookie: v.getBigUint64(8) }
}
