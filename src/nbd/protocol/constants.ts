/**
 * The numbers of the NBD wire protocol: magics, handshake and transmission flags,
 * option, reply, information and command types, error values, and the fixed lengths
 * of the protocol's headers. All integers on the wire are big-endian.
 *
 * @internal
 * @module
 */

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

/** Bit 31 of an option reply type: set on every error reply. */
export const REP_ERR = 2 ** 31
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
