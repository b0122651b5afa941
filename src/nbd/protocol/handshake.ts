/**
 * Encoders and decoders of the fixed newstyle handshake: the greeting and client
 * flags, option requests and option replies, the information of NBD_OPT_INFO /
 * NBD_OPT_GO, the NBD_OPT_EXPORT_NAME reply and the NBD_OPT_LIST replies. Pure
 * functions over bytes: every decoder returns a value or throws an {@link NbdError},
 * whatever the bytes.
 *
 * @internal
 * @module
 */
import {
  EXPORT_NAME_REPLY_LENGTH,
  GREETING_LENGTH,
  IHAVEOPT,
  Info,
  MAX_STRING,
  NBD_MAGIC,
  OLDSTYLE_MAGIC,
  OPTION_HEADER_LENGTH,
  OPTION_REPLY_HEADER_LENGTH,
  OPTION_REPLY_MAGIC,
} from './constants'
import { NbdError, protocolError } from './errors'
import { decodeString, encodeString, need, u64ToSafe, view } from './wire'

/** The server's greeting: NBDMAGIC, IHAVEOPT, handshake flags. */
export function encodeGreeting(flags: number): Uint8Array {
  const b = new Uint8Array(GREETING_LENGTH)
  const v = view(b)
  v.setBigUint64(0, NBD_MAGIC)
  v.setBigUint64(8, IHAVEOPT)
  v.setUint16(16, flags)
  return b
}

/** Decodes the server's 18-byte greeting; throws ENBD_OLDSTYLE or ENBD_PROTOCOL. */
export function decodeGreeting(b: Uint8Array): { flags: number } {
  const v = need(b, GREETING_LENGTH, 'greeting')
  if (v.getBigUint64(0) !== NBD_MAGIC) throw protocolError('the server did not greet with NBDMAGIC: not an NBD server')
  const second = v.getBigUint64(8)
  if (second === OLDSTYLE_MAGIC) throw new NbdError('ENBD_OLDSTYLE', 'the server speaks the oldstyle NBD handshake, which this client does not support (it has no export names)')
  if (second !== IHAVEOPT) throw protocolError(`the server's greeting has magic 0x${second.toString(16)}, neither newstyle nor oldstyle`)
  return { flags: v.getUint16(16) }
}

export function encodeClientFlags(flags: number): Uint8Array {
  const b = new Uint8Array(4)
  view(b).setUint32(0, flags >>> 0)
  return b
}

export function decodeClientFlags(b: Uint8Array): number {
  return need(b, 4, 'client flags').getUint32(0)
}

/** An option request: IHAVEOPT, option, length, data. */
export function encodeOption(option: number, data: Uint8Array = new Uint8Array(0)): Uint8Array {
  const b = new Uint8Array(OPTION_HEADER_LENGTH + data.length)
  const v = view(b)
  v.setBigUint64(0, IHAVEOPT)
  v.setUint32(8, option >>> 0)
  v.setUint32(12, data.length)
  b.set(data, OPTION_HEADER_LENGTH)
  return b
}

/** Decodes the 16-byte header of an option request (server side). */
export function decodeOptionHeader(b: Uint8Array): { option: number; length: number } {
  const v = need(b, OPTION_HEADER_LENGTH, 'option header')
  if (v.getBigUint64(0) !== IHAVEOPT) throw protocolError(`an option does not start with IHAVEOPT (got 0x${v.getBigUint64(0).toString(16)})`)
  return { option: v.getUint32(8), length: v.getUint32(12) }
}

/** An option reply: magic, option, reply type, length, data. */
export function encodeOptionReply(option: number, type: number, data: Uint8Array = new Uint8Array(0)): Uint8Array {
  const b = new Uint8Array(OPTION_REPLY_HEADER_LENGTH + data.length)
  const v = view(b)
  v.setBigUint64(0, OPTION_REPLY_MAGIC)
  v.setUint32(8, option >>> 0)
  v.setUint32(12, type >>> 0)
  v.setUint32(16, data.length)
  b.set(data, OPTION_REPLY_HEADER_LENGTH)
  return b
}

/** Decodes the 20-byte header of an option reply (client side). */
export function decodeOptionReplyHeader(b: Uint8Array): { option: number; type: number; length: number } {
  const v = need(b, OPTION_REPLY_HEADER_LENGTH, 'option reply header')
  const magic = v.getBigUint64(0)
  if (magic !== OPTION_REPLY_MAGIC) throw protocolError(`an option reply has magic 0x${magic.toString(16)}, not 0x${OPTION_REPLY_MAGIC.toString(16)}`)
  return { option: v.getUint32(8), type: v.getUint32(12), length: v.getUint32(16) }
}

/** The data of NBD_OPT_INFO / NBD_OPT_GO: export name and the information requested. */
export function encodeInfoRequest(name: string, infos: number[]): Uint8Array {
  const n = encodeString(name, 'export name')
  if (infos.length > 0xffff) throw new NbdError('EINVAL', 'too many information requests')
  const b = new Uint8Array(4 + n.length + 2 + 2 * infos.length)
  const v = view(b)
  v.setUint32(0, n.length)
  b.set(n, 4)
  v.setUint16(4 + n.length, infos.length)
  infos.forEach((t, i) => v.setUint16(6 + n.length + 2 * i, t))
  return b
}

/** Decodes the data of NBD_OPT_INFO / NBD_OPT_GO (server side). */
export function decodeInfoRequest(b: Uint8Array): { name: string; infos: number[] } {
  const v = need(b, 6, 'NBD_OPT_GO data')
  const len = v.getUint32(0)
  if (len > MAX_STRING || 4 + len + 2 > b.length) throw protocolError(`NBD_OPT_GO data: a name of ${len} bytes does not fit in ${b.length} bytes`)
  const name = decodeString(b.subarray(4, 4 + len), 'export name')
  const count = v.getUint16(4 + len)
  if (b.length !== 6 + len + 2 * count) throw protocolError(`NBD_OPT_GO data is ${b.length} bytes; ${count} information requests after a ${len}-byte name make ${6 + len + 2 * count}`)
  const infos: number[] = []
  for (let i = 0; i < count; i++) infos.push(v.getUint16(6 + len + 2 * i))
  return { name, infos }
}

/** NBD_INFO_EXPORT: size and transmission flags. */
export function encodeInfoExport(size: number, flags: number): Uint8Array {
  const b = new Uint8Array(12)
  const v = view(b)
  v.setUint16(0, Info.EXPORT)
  v.setBigUint64(2, BigInt(size))
  v.setUint16(10, flags)
  return b
}

/** NBD_INFO_BLOCK_SIZE: minimum, preferred and maximum block sizes. */
export function encodeInfoBlockSize(min: number, preferred: number, max: number): Uint8Array {
  const b = new Uint8Array(14)
  const v = view(b)
  v.setUint16(0, Info.BLOCK_SIZE)
  v.setUint32(2, min)
  v.setUint32(6, preferred)
  v.setUint32(10, max)
  return b
}

/** NBD_INFO_NAME or NBD_INFO_DESCRIPTION: a string. */
export function encodeInfoString(type: typeof Info.NAME | typeof Info.DESCRIPTION, s: string): Uint8Array {
  const t = encodeString(s, type === Info.NAME ? 'export name' : 'description')
  const b = new Uint8Array(2 + t.length)
  view(b).setUint16(0, type)
  b.set(t, 2)
  return b
}

/** Block size constraints of an export. */
export interface BlockSize {
  /** The smallest unit of I/O, in bytes: offsets and lengths are multiples of it. */
  min: number
  /** The size the server prefers, in bytes. */
  preferred: number
  /** The largest request payload, in bytes. */
  max: number
}

/** One NBD_REP_INFO payload, decoded. */
export type InfoReply =
  | { type: 'export'; size: number; flags: number }
  | { type: 'name'; name: string }
  | { type: 'description'; description: string }
  | { type: 'block-size'; blockSize: BlockSize }
  | { type: 'unknown'; info: number }

const isPow2 = (n: number) => n > 0 && (n & (n - 1)) === 0

/** Decodes an NBD_REP_INFO payload, checking its length and the block size rules. */
export function decodeInfo(b: Uint8Array): InfoReply {
  const v = need(b, 2, 'NBD_REP_INFO')
  const info = v.getUint16(0)
  switch (info) {
    case Info.EXPORT: {
      if (b.length !== 12) throw protocolError(`NBD_INFO_EXPORT is ${b.length} bytes, not 12`)
      return { type: 'export', size: u64ToSafe(v.getBigUint64(2), 'export size'), flags: v.getUint16(10) }
    }
    case Info.NAME:
      return { type: 'name', name: decodeString(b.subarray(2), 'export name') }
    case Info.DESCRIPTION:
      return { type: 'description', description: decodeString(b.subarray(2), 'description') }
    case Info.BLOCK_SIZE: {
      if (b.length !== 14) throw protocolError(`NBD_INFO_BLOCK_SIZE is ${b.length} bytes, not 14`)
      const min = v.getUint32(2)
      const preferred = v.getUint32(6)
      const max = v.getUint32(10)
      if (!isPow2(min) || min > 65536) throw protocolError(`minimum block size ${min} is not a power of two up to 64 KiB`)
      if (!isPow2(preferred) || preferred < Math.max(512, min)) throw protocolError(`preferred block size ${preferred} is not a power of two of at least max(512, minimum ${min})`)
      if (max !== 0xffffffff && (max < min || max % min !== 0)) throw protocolError(`maximum block size ${max} is not a multiple of the minimum ${min}`)
      return { type: 'block-size', blockSize: { min, preferred, max } }
    }
    default:
      return { type: 'unknown', info }
  }
}

/** The reply to NBD_OPT_EXPORT_NAME: size, flags, and 124 zeroes unless NO_ZEROES. */
export function encodeExportNameReply(size: number, flags: number, noZeroes: boolean): Uint8Array {
  const b = new Uint8Array(EXPORT_NAME_REPLY_LENGTH + (noZeroes ? 0 : 124))
  const v = view(b)
  v.setBigUint64(0, BigInt(size))
  v.setUint16(8, flags)
  return b
}

export function decodeExportNameReply(b: Uint8Array): { size: number; flags: number } {
  const v = need(b, EXPORT_NAME_REPLY_LENGTH, 'NBD_OPT_EXPORT_NAME reply')
  return { size: u64ToSafe(v.getBigUint64(0), 'export size'), flags: v.getUint16(8) }
}

/** The data of an NBD_REP_SERVER reply to NBD_OPT_LIST: a name and an optional description. */
export function encodeServerReply(name: string, description = ''): Uint8Array {
  const n = encodeString(name, 'export name')
  const d = encodeString(description, 'description')
  const b = new Uint8Array(4 + n.length + d.length)
  view(b).setUint32(0, n.length)
  b.set(n, 4)
  b.set(d, 4 + n.length)
  return b
}

export function decodeServerReply(b: Uint8Array): { name: string; description: string } {
  const v = need(b, 4, 'NBD_REP_SERVER')
  const len = v.getUint32(0)
  if (len > b.length - 4) throw protocolError(`NBD_REP_SERVER names ${len} bytes in a ${b.length}-byte reply`)
  return { name: decodeString(b.subarray(4, 4 + len), 'export name'), description: decodeString(b.subarray(4 + len), 'description') }
}
