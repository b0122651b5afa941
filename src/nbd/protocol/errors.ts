/**
 * The NBD code's errors: {@link NbdError}, and the mapping between the protocol's
 * error values and reply types and md-bitmap's error codes (see
 * {@link MdBitmapErrorCode} for the codes and what each means).
 *
 * @module
 */
import { MdBitmapError, type ErrnoCode, type MdBitmapErrorCode } from '../../errors'
import { NbdErrno, Opt, REP_ERR, Rep } from './constants'

/** An error of the NBD client or server: an {@link MdBitmapError} with NBD details. */
export class NbdError extends MdBitmapError {
  /** The error value of an error reply (transmission phase). */
  readonly nbdErrno?: number
  /** The reply type of an option error reply (handshake). */
  readonly optionReply?: number

  constructor(code: MdBitmapErrorCode, message: string, options?: { cause?: unknown; nbdErrno?: number; optionReply?: number }) {
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

const ERRNO_NAMES: Record<number, ErrnoCode> = Object.fromEntries(Object.entries(NbdErrno).map(([k, v]) => [v, k as keyof typeof NbdErrno]))

/**
 * The errno name for an error value of a reply. Values the protocol does not define
 * are taken as EINVAL, as the protocol asks of clients.
 */
export function errnoName(value: number): ErrnoCode {
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

const OPTION_ERROR_CODES: Record<number, MdBitmapErrorCode> = {
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
