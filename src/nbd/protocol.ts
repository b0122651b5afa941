/**
 * The NBD (network block device) wire protocol: constants, encoders and decoders of the
 * fixed newstyle handshake, the options and their replies, the transmission requests
 * and simple replies, and incremental parsers for the two directions of the
 * transmission phase. Pure functions over bytes, with no socket in sight: every
 * decoder either returns a value or throws an {@link NbdError}, whatever the bytes.
 *
 * All integers on the wire are big-endian (network order). Handles ("cookies") are 64
 * bits and kept as `bigint`; offsets are 64 bits, decoded as `bigint` and checked
 * against the export's size before they become numbers.
 *
 * Error codes raised by the NBD code (besides the errno names of error replies:
 * `EPERM`, `EIO`, `ENOMEM`, `EINVAL`, `ENOSPC`, `EOVERFLOW`, `ENOTSUP`, `ESHUTDOWN`):
 *
 * | code | meaning |
 * |---|---|
 * | `ENBD_PROTOCOL` | the peer sent bytes that break the protocol |
 * | `ENBD_OLDSTYLE` | the server speaks the oldstyle handshake (not supported) |
 * | `ENBD_DISCONNECTED` | the connection is gone; every pending and later request fails with it |
 * | `ENBD_TIMEOUT` | a request (or the connection and handshake) took longer than its timeout |
 * | `ENBD_URL` | not an NBD URL this client understands |
 * | `ENBD_UNSUP` | `NBD_REP_ERR_UNSUP`: the server does not know the option |
 * | `ENBD_POLICY` | `NBD_REP_ERR_POLICY`: forbidden by the server's policy |
 * | `ENBD_INVALID` | `NBD_REP_ERR_INVALID`: the option was malformed |
 * | `ENBD_PLATFORM` | `NBD_REP_ERR_PLATFORM`: not supported on the server's platform |
 * | `ENBD_TLS_REQUIRED` | `NBD_REP_ERR_TLS_REQD`: the server wants TLS first |
 * | `ENBD_UNKNOWN_EXPORT` | `NBD_REP_ERR_UNKNOWN`: no export of that name |
 * | `ENBD_SHUTDOWN` | `NBD_REP_ERR_SHUTDOWN`: the server is shutting down |
 * | `ENBD_BLOCK_SIZE_REQUIRED` | `NBD_REP_ERR_BLOCK_SIZE_REQD` |
 * | `ENBD_TOO_BIG` | `NBD_REP_ERR_TOO_BIG`: the option's data was too large |
 * | `ENBD_OPTION_ERROR` | another option error reply |
 *
 * @module
 */
import { MdBitmapError } from '../errors'

// ---------------------------------------------------------------------------------
// Constants

/** 'NBDMAGIC', the first 8 bytes a server sends. */
export const NBD_MAGIC = 0x4e42444d41474943n
/** 'IHAVEOPT': the newstyle greeting's second word, and the magic of every option. */
export const IHAVEOPT = 0x49484156454f5054n
/** The second word of an oldstyle greeting. */
export const OLDSTYLE_MAGIC = 0x00420281861253n
/** The magic of every option reply. */
export const OPTION_REPLY_MAGIC = 0x3e889045565a9n
export const REQUEST_MAGIC = 0x25609513
export const SIMPLE_REPLY_MAGIC = 0x67446698
export const STRUCTURED_REPLY_MAGIC = 0x668e33ef

/** Handshake flags (server, 16 bits). */
export const FLAG_FIXED_NEWSTYLE = 1 << 0
export const FLAG_NO_ZEROES = 1 << 1
/** Client flags (32 bits). */
export const FLAG_C_FIXED_NEWSTYLE = 1 << 0
export const FLAG_C_NO_ZEROES = 1 << 1

/** Option numbers. */
export const Opt = {
  EXPORT_NAME: 1,
  ABORT: 2,
  LIST: 3,
  PEEK_EXPORT: 4,
  STARTTLS: 5,
  INFO: 6,
  GO: 7,
  STRUCTURED_REPLY: 8,
  LIST_META_CONTEXT: 9,
  SET_META_CONTEXT: 10,
  EXTENDED_HEADERS: 11,
} as const

const REP_ERR = 2 ** 31
/** Option reply types. */
export const Rep = {
  ACK: 1,
  SERVER: 2,
  INFO: 3,
  META_CONTEXT: 4,
  ERR_UNSUP: REP_ERR + 1,
  ERR_POLICY: REP_ERR + 2,
  ERR_INVALID: REP_ERR + 3,
  ERR_PLATFORM: REP_ERR + 4,
  ERR_TLS_REQD: REP_ERR + 5,
  ERR_UNKNOWN: REP_ERR + 6,
  ERR_SHUTDOWN: REP_ERR + 7,
  ERR_BLOCK_SIZE_REQD: REP_ERR + 8,
  ERR_TOO_BIG: REP_ERR + 9,
  ERR_EXT_HEADER_REQD: REP_ERR + 10,
} as const

/** Information types of NBD_OPT_INFO / NBD_OPT_GO. */
export const Info = { EXPORT: 0, NAME: 1, DESCRIPTION: 2, BLOCK_SIZE: 3 } as const

/** Transmission flags (16 bits). */
export const TxFlag = {
  HAS_FLAGS: 1 << 0,
  READ_ONLY: 1 << 1,
  SEND_FLUSH: 1 << 2,
  SEND_FUA: 1 << 3,
  ROTATIONAL: 1 << 4,
  SEND_TRIM: 1 << 5,
  SEND_WRITE_ZEROES: 1 << 6,
  SEND_DF: 1 << 7,
  CAN_MULTI_CONN: 1 << 8,
  SEND_RESIZE: 1 << 9,
  SEND_CACHE: 1 << 10,
  SEND_FAST_ZERO: 1 << 11,
} as const

/** Request types. */
export const Cmd = { READ: 0, WRITE: 1, DISC: 2, FLUSH: 3, TRIM: 4, CACHE: 5, WRITE_ZEROES: 6, BLOCK_STATUS: 7, RESIZE: 8 } as const

/** Command flags (16 bits). */
export const CmdFlag = { FUA: 1 << 0, NO_HOLE: 1 << 1, DF: 1 << 2, REQ_ONE: 1 << 3, FAST_ZERO: 1 << 4 } as const

/** Error values of replies. */
export const NbdErrno = { EPERM: 1, EIO: 5, ENOMEM: 12, EINVAL: 22, ENOSPC: 28, EOVERFLOW: 75, ENOTSUP: 95, ESHUTDOWN: 108 } as const

/** The longest string (export name, message) the protocol allows. */
export const MAX_STRING = 4096
/** The largest READ/WRITE payload a peer should send without negotiation (32 MiB). */
export const DEFAULT_MAX_PAYLOAD = 32 * 2 ** 20
/** The default TCP port. */
export const DEFAULT_PORT = 10809

export const GREETING_LENGTH = 18
export const OPTION_HEADER_LENGTH = 16
export const OPTION_REPLY_HEADER_LENGTH = 20
export const REQUEST_HEADER_LENGTH = 28
export const SIMPLE_REPLY_LENGTH = 16
export const EXPORT_NAME_REPLY_LENGTH = 10

// ---------------------------------------------------------------------------------
// Errors

/** An error of the NBD client or server: an {@link MdBitmapError} with NBD details. */
export class NbdError extends MdBitmapError {
  /** The error value of an error reply (transmission phase). */
  readonly nbdErrno?: number
  /** The reply type of an option error reply (handshake). */
  readonly optionReply?: number

  constructor(code: string, message: string, options?: { cause?: unknown; nbdErrno?: number; optionReply?: number }) {
    super(code, message, options?.cause === undefined ? undefined : { cause: options.cause })
    this.name = 'NbdError'
    if (options?.nbdErrno !== undefined) this.nbdErrno = options.nbdErrno
    if (options?.optionReply !== undefined) this.optionReply = options.optionReply
  }
}

/** An `ENBD_PROTOCOL` error: the peer broke the protocol. */
export function protocolError(message: string): NbdError {
  return new NbdError('ENBD_PROTOCOL', message)
}

const ERRNO_NAMES: Record<number, string> = Object.fromEntries(Object.entries(NbdErrno).map(([k, v]) => [v, k]))

/**
 * The errno name for an error value of a reply. Values the protocol does not define
 * are taken as EINVAL, as the protocol asks of clients.
 */
export function errnoName(value: number): string {
  return ERRNO_NAMES[value] ?? 'EINVAL'
}

/** The error value a server sends for an error with `code` (an errno name or a project code). */
export function errnoValue(code: string | undefined, write = false): number {
  switch (code) {
    case 'EPERM':
    case 'EACCES':
    case 'EROFS':
      return NbdErrno.EPERM
    case 'ENOMEM':
      return NbdErrno.ENOMEM
    case 'EINVAL':
    case 'EALIGN':
      return NbdErrno.EINVAL
    case 'EOUT_OF_RANGE':
      return write ? NbdErrno.ENOSPC : NbdErrno.EINVAL
    case 'ENOSPC':
    case 'EDQUOT':
    case 'EFBIG':
      return NbdErrno.ENOSPC
    case 'EOVERFLOW':
      return NbdErrno.EOVERFLOW
    case 'ENOTSUP':
    case 'EOPNOTSUPP':
      return NbdErrno.ENOTSUP
    case 'ECLOSED':
    case 'ESHUTDOWN':
      return NbdErrno.ESHUTDOWN
    default:
      return NbdErrno.EIO
  }
}

/** The typed error for an error value of a reply. */
export function replyError(value: number, what: string): NbdError {
  const name = errnoName(value)
  const known = ERRNO_NAMES[value] !== undefined
  return new NbdError(name, `${what}: the server replied ${name}${known ? '' : ` (error value ${value}, not one the protocol defines)`}`, { nbdErrno: value })
}

const OPTION_ERROR_CODES: Record<number, string> = {
  [Rep.ERR_UNSUP]: 'ENBD_UNSUP',
  [Rep.ERR_POLICY]: 'ENBD_POLICY',
  [Rep.ERR_INVALID]: 'ENBD_INVALID',
  [Rep.ERR_PLATFORM]: 'ENBD_PLATFORM',
  [Rep.ERR_TLS_REQD]: 'ENBD_TLS_REQUIRED',
  [Rep.ERR_UNKNOWN]: 'ENBD_UNKNOWN_EXPORT',
  [Rep.ERR_SHUTDOWN]: 'ENBD_SHUTDOWN',
  [Rep.ERR_BLOCK_SIZE_REQD]: 'ENBD_BLOCK_SIZE_REQUIRED',
  [Rep.ERR_TOO_BIG]: 'ENBD_TOO_BIG',
}

/** Whether an option reply type is an error (bit 31). */
export function isOptionError(type: number): boolean {
  return type >= REP_ERR
}

/** The typed error for an option error reply; `data` is its payload (a message, maybe). */
export function optionError(option: number, type: number, data: Uint8Array): NbdError {
  const code = OPTION_ERROR_CODES[type] ?? 'ENBD_OPTION_ERROR'
  const text = safeText(data)
  const name = OPTION_NAMES[option] ?? `option ${option}`
  return new NbdError(code, `the server refused ${name} with ${REPLY_NAMES[type] ?? `error reply ${type - REP_ERR}`}${text ? `: ${text}` : ''}`, { optionReply: type })
}

const OPTION_NAMES: Record<number, string> = Object.fromEntries(Object.entries(Opt).map(([k, v]) => [v, `NBD_OPT_${k}`]))
const REPLY_NAMES: Record<number, string> = Object.fromEntries(Object.entries(Rep).map(([k, v]) => [v, `NBD_REP_${k}`]))

/** A message from the peer, printable, cut to a sane length; '' if it is not UTF-8. */
function safeText(data: Uint8Array): string {
  try {
    return new TextDecoder('utf-8', { fatal: true })
      .decode(data.subarray(0, 512))
      .replace(/[^\x20-\x7e\u00a0-\uffff]/g, '?')
  } catch {
    return ''
  }
}

// ---------------------------------------------------------------------------------
// Small helpers

function view(b: Uint8Array): DataView {
  return new DataView(b.buffer, b.byteOffset, b.byteLength)
}

function need(b: Uint8Array, n: number, what: string): DataView {
  if (!(b instanceof Uint8Array) || b.length < n) throw protocolError(`${what}: expected ${n} bytes, got ${b?.length ?? 0}`)
  return view(b)
}

const utf8 = new TextEncoder()

/** Encodes an NBD string, checking its length. */
export function encodeString(s: string, what = 'name'): Uint8Array {
  const b = utf8.encode(s)
  if (b.length > MAX_STRING) throw new NbdError('EINVAL', `${what} is ${b.length} bytes long; NBD strings may be at most ${MAX_STRING}`)
  if (b.includes(0)) throw new NbdError('EINVAL', `${what} contains a NUL character, which NBD strings may not`)
  return b
}

/** Decodes an NBD string: valid UTF-8, no NUL, at most 4096 bytes. */
export function decodeString(b: Uint8Array, what = 'name'): string {
  if (b.length > MAX_STRING) throw protocolError(`${what} is ${b.length} bytes long; NBD strings may be at most ${MAX_STRING}`)
  if (b.includes(0)) throw protocolError(`${what} contains a NUL byte`)
  try {
    return new TextDecoder('utf-8', { fatal: true }).decode(b)
  } catch {
    throw protocolError(`${what} is not valid UTF-8`)
  }
}

function u64ToSafe(v: bigint, what: string): number {
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw protocolError(`${what} ${v} is beyond 2^53`)
  return Number(v)
}

// ---------------------------------------------------------------------------------
// Handshake

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

// ---------------------------------------------------------------------------------
// Transmission

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

// ---------------------------------------------------------------------------------
// Byte queues and incremental parsers

/** A FIFO of received chunks, taken from in exact sizes without needless copies. */
export class ByteQueue {
  private chunks: Uint8Array[] = []
  private head = 0
  /** Bytes queued. */
  length = 0

  push(chunk: Uint8Array): void {
    if (chunk.length === 0) return
    this.chunks.push(chunk)
    this.length += chunk.length
  }

  /** Removes and returns the first `n` bytes (a view when they lie in one chunk, else a copy). */
  take(n: number): Uint8Array {
    if (n > this.length) throw new RangeError(`take(${n}) with ${this.length} bytes queued`)
    if (n === 0) return new Uint8Array(0)
    const first = this.chunks[0]
    if (first.length - this.head >= n) {
      const out = first.subarray(this.head, this.head + n)
      this.advance(n)
      return out
    }
    const out = new Uint8Array(n)
    this.copyTo(out, 0, n)
    return out
  }

  /** Moves the first `n` bytes into `target` at `at`. */
  copyTo(target: Uint8Array, at: number, n: number): void {
    if (n > this.length) throw new RangeError(`copyTo(${n}) with ${this.length} bytes queued`)
    let done = 0
    while (done < n) {
      const c = this.chunks[0]
      const k = Math.min(n - done, c.length - this.head)
      target.set(c.subarray(this.head, this.head + k), at + done)
      done += k
      this.advance(k)
    }
  }

  /** Drops the first `n` bytes. */
  skip(n: number): void {
    if (n > this.length) throw new RangeError(`skip(${n}) with ${this.length} bytes queued`)
    let left = n
    while (left > 0) {
      const k = Math.min(left, this.chunks[0].length - this.head)
      left -= k
      this.advance(k)
    }
  }

  /** Removes and returns everything queued. */
  drain(): Uint8Array[] {
    const out = this.chunks.map((c, i) => (i === 0 ? c.subarray(this.head) : c))
    this.chunks = []
    this.head = 0
    this.length = 0
    return out
  }

  private advance(k: number): void {
    this.head += k
    this.length -= k
    if (this.head === this.chunks[0].length) {
      this.chunks.shift()
      this.head = 0
    }
  }
}

/** A reply decoded by {@link ReplyParser}. */
export interface Reply {
  cookie: bigint
  error: number
}

/**
 * What the client expects for a cookie: `undefined` (no such request in flight: the
 * server broke the protocol), `null` (a reply without payload), or the buffer a
 * successful read's payload goes into.
 */
export type ReplyLookup = (cookie: bigint) => Uint8Array | null | undefined

/**
 * The client's side of the transmission phase: fed the bytes from the server in any
 * chunking, returns the replies completed, with read payloads written straight into
 * the buffers the lookup gives. Throws ENBD_PROTOCOL on anything else; it is unusable
 * after a throw.
 */
export class ReplyParser {
  private readonly q = new ByteQueue()
  private current: { cookie: bigint; error: number; target: Uint8Array; got: number } | null = null
  private dead: NbdError | null = null

  constructor(private readonly lookup: ReplyLookup) {}

  feed(chunk: Uint8Array): Reply[] {
    if (this.dead) throw this.dead
    this.q.push(chunk)
    const out: Reply[] = []
    try {
      for (;;) {
        const cur = this.current
        if (cur) {
          const k = Math.min(this.q.length, cur.target.length - cur.got)
          this.q.copyTo(cur.target, cur.got, k)
          cur.got += k
          if (cur.got < cur.target.length) break
          out.push({ cookie: cur.cookie, error: cur.error })
          this.current = null
          continue
        }
        if (this.q.length < SIMPLE_REPLY_LENGTH) break
        const { error, cookie } = decodeReplyHeader(this.q.take(SIMPLE_REPLY_LENGTH))
        const target = this.lookup(cookie)
        if (target === undefined) throw protocolError(`the server replied to handle 0x${cookie.toString(16)}, which no request in flight has`)
        if (error === 0 && target !== null && target.length > 0) this.current = { cookie, error, target, got: 0 }
        else out.push({ cookie, error })
      }
    } catch (e) {
      this.dead = e instanceof NbdError ? e : protocolError(String(e))
      throw this.dead
    }
    return out
  }
}

/** A request decoded by {@link RequestParser}. */
export interface Request extends RequestHeader {
  /** A write's payload. */
  data?: Uint8Array
  /** A write whose payload was larger than the parser's limit: it was read and dropped. */
  tooBig?: boolean
}

/**
 * The server's side of the transmission phase: fed the bytes from the client in any
 * chunking, returns the requests completed (a write with its payload). Payloads above
 * `maxPayload` are consumed and dropped (the request comes out with `tooBig`), so a
 * hostile length cannot make the server allocate. Throws ENBD_PROTOCOL on a bad
 * magic; it is unusable after a throw.
 */
export class RequestParser {
  private readonly q = new ByteQueue()
  private current: { req: Request; data: Uint8Array | null; left: number } | null = null
  private dead: NbdError | null = null

  constructor(
    private readonly maxPayload: number = DEFAULT_MAX_PAYLOAD,
    private readonly alloc: (n: number) => Uint8Array = (n) => new Uint8Array(n),
  ) {}

  feed(chunk: Uint8Array): Request[] {
    if (this.dead) throw this.dead
    this.q.push(chunk)
    const out: Request[] = []
    try {
      for (;;) {
        const cur = this.current
        if (cur) {
          const k = Math.min(this.q.length, cur.left)
          if (cur.data) this.q.copyTo(cur.data, cur.data.length - cur.left, k)
          else this.q.skip(k)
          cur.left -= k
          if (cur.left > 0) break
          if (cur.data) cur.req.data = cur.data
          else cur.req.tooBig = true
          out.push(cur.req)
          this.current = null
          continue
        }
        if (this.q.length < REQUEST_HEADER_LENGTH) break
        const req: Request = decodeRequestHeader(this.q.take(REQUEST_HEADER_LENGTH))
        if (req.type === Cmd.WRITE && req.length > 0) {
          this.current = { req, data: req.length <= this.maxPayload ? this.alloc(req.length) : null, left: req.length }
        } else {
          out.push(req)
        }
      }
    } catch (e) {
      this.dead = e instanceof NbdError ? e : protocolError(String(e))
      throw this.dead
    }
    return out
  }
}

// ---------------------------------------------------------------------------------
// Addresses

/** Where an NBD export is: a TCP host and port, or a Unix socket; and the export's name. */
export type NbdAddress =
  | {
      /** A TCP connection. */
      kind: 'tcp'
      /** The server's host name or address. */
      host: string
      /** The server's TCP port. */
      port: number
      /** The export's name ('' for the default export). */
      exportName: string
    }
  | {
      /** A Unix socket connection. */
      kind: 'unix'
      /** The socket's path. */
      socket: string
      /** The export's name ('' for the default export). */
      exportName: string
    }

/** Whether `s` is an NBD URL (`nbd://`, `nbd+unix://`, or the TLS forms, which are refused later). */
export function isNbdUrl(s: string): boolean {
  return /^nbds?(\+(tcp|unix))?:\/\//i.test(s)
}

/**
 * Parses the standard NBD URI forms: `nbd://host[:port][/export]` (port 10809 by
 * default; `[v6]` hosts allowed) and `nbd+unix:///export?socket=/path`. The export
 * name is the path after the first slash, percent-decoded (empty = the default export).
 */
export function parseNbdUrl(url: string): NbdAddress {
  const bad = (why: string) => new NbdError('ENBD_URL', `${url}: ${why}; NBD URLs look like nbd://HOST:PORT/EXPORT or nbd+unix:///EXPORT?socket=PATH`)
  const m = /^([a-z+]+):\/\/([^/?#]*)(\/[^?#]*)?(\?[^#]*)?$/i.exec(url)
  if (!m) throw bad('not a URL')
  const scheme = m[1].toLowerCase()
  if (scheme === 'nbds' || scheme === 'nbds+unix' || scheme === 'nbds+tcp') throw bad('TLS (nbds) is not supported')
  let exportName: string
  try {
    exportName = decodeURIComponent((m[3] ?? '').slice(1))
  } catch {
    throw bad('the export name is not valid percent-encoding')
  }
  const query = new URLSearchParams((m[4] ?? '').slice(1))
  if (scheme === 'nbd+unix') {
    if (m[2] !== '') throw bad('a Unix socket URL has no host')
    const socket = query.get('socket')
    if (!socket) throw bad('a Unix socket URL needs ?socket=PATH')
    return { kind: 'unix', socket, exportName }
  }
  if (scheme !== 'nbd' && scheme !== 'nbd+tcp') throw bad(`unknown scheme ${scheme}`)
  const hp = /^(?:\[([0-9a-f:.]+)\]|([^:[\]]+))(?::(\d{1,5}))?$/i.exec(m[2])
  if (!hp) throw bad('no host')
  const port = hp[3] === undefined ? DEFAULT_PORT : Number(hp[3])
  if (port < 1 || port > 65535) throw bad(`port ${hp[3]} is out of range`)
  return { kind: 'tcp', host: hp[1] ?? hp[2], port, exportName }
}

/** The URL of an address, in the standard form (what {@link parseNbdUrl} reads back). */
export function formatNbdUrl(a: NbdAddress): string {
  const name = encodeURIComponent(a.exportName).replace(/%2F/gi, '/')
  if (a.kind === 'unix') return `nbd+unix:///${name}?socket=${encodeURIComponent(a.socket).replace(/%2F/gi, '/')}`
  const host = a.host.includes(':') ? `[${a.host}]` : a.host
  return `nbd://${host}:${a.port}/${name}`
}
