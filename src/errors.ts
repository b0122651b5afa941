/**
 * Every error md-bitmap raises is an {@link MdBitmapError}: a string `code` to branch
 * on ({@link MdBitmapErrorCode}: an errno name from the operating system, listed in
 * {@link ErrnoCode}, or one of md-bitmap's own, listed in {@link LibraryErrorCode}),
 * and a message that says what happened and what to do about it. Anything thrown by
 * something else becomes one through the one normaliser, {@link toMdBitmapError}.
 *
 * @module
 */

/**
 * The codes of md-bitmap's own errors, each with what it means: raised by the native
 * core (file checks, extent maps, page stores), the bitmap, the mirror, the NBD client
 * and server, and the `md-bitmap` command.
 *
 * @enum
 */
export const LibraryErrorCode = {
  // -- the native core: extents, file checks, page stores
  /** The file has a hole: blocks never allocated. */
  EEXTENT_HOLE: 'EEXTENT_HOLE',
  /** An extent was allocated (fallocate) but never written. */
  EEXTENT_UNWRITTEN: 'EEXTENT_UNWRITTEN',
  /** An extent's delayed allocation is not resolved yet: no block is assigned. */
  EEXTENT_DELALLOC: 'EEXTENT_DELALLOC',
  /** Data kept inline in filesystem metadata, or packed in a shared tail block. */
  EEXTENT_INLINE: 'EEXTENT_INLINE',
  /** Data compressed or encrypted on disk, so its bytes are not the file's bytes. */
  EEXTENT_ENCODED: 'EEXTENT_ENCODED',
  /** Blocks shared with another file (reflink or snapshot). */
  EEXTENT_SHARED: 'EEXTENT_SHARED',
  /** An extent not aligned to the device's blocks. */
  EEXTENT_NOT_ALIGNED: 'EEXTENT_NOT_ALIGNED',
  /** The filesystem does not say where the data is. */
  EEXTENT_UNKNOWN: 'EEXTENT_UNKNOWN',
  /** FIEMAP addresses are not device offsets (btrfs): device mode is impossible. */
  EDEVICE_NOT_PHYSICAL: 'EDEVICE_NOT_PHYSICAL',
  /** The filesystem is not on one block device. */
  EDEVICE_NOT_SINGLE: 'EDEVICE_NOT_SINGLE',
  /** The filesystem cannot map its blocks (tmpfs, FIBMAP refused). */
  EFIEMAP_UNSUPPORTED: 'EFIEMAP_UNSUPPORTED',
  /** The file cannot be written page by page in place (file mode). */
  EFILE_MODE_UNSUPPORTED: 'EFILE_MODE_UNSUPPORTED',
  /** The file cannot be written on its block device directly (device mode). */
  EDEVICE_MODE_UNSUPPORTED: 'EDEVICE_MODE_UNSUPPORTED',
  /** The file could not be pinned (made immutable) against moves for device mode. */
  EDEVICE_PIN: 'EDEVICE_PIN',
  /** A device-mode write would fall outside the file's extents. */
  EOUT_OF_EXTENTS: 'EOUT_OF_EXTENTS',
  /** An I/O or a range past the end of the file, bitmap, mirror or export. */
  EOUT_OF_RANGE: 'EOUT_OF_RANGE',
  /** An offset, length or buffer not aligned as direct I/O (or the export) needs. */
  EALIGN: 'EALIGN',
  /** The page store, bitmap, mirror or member was closed. */
  ECLOSED: 'ECLOSED',
  /** The native addon could not be loaded. */
  ENATIVE_LOAD: 'ENATIVE_LOAD',
  /** The path is not a regular file. */
  ENOT_REGULAR_FILE: 'ENOT_REGULAR_FILE',
  /**
   * The bitmap or mirror is held open by another process, or by another open in this
   * one (one owner at a time); the message names the holder's pid and, for a mirror
   * with one, its control socket. A holder that dies releases it once its writes in
   * flight have landed: an open waits for that up to 2 s (or its `lockWaitMs`), then
   * fails with this code saying the holder has exited; retry, or open with a longer
   * `lockWaitMs`.
   */
  ELOCKED: 'ELOCKED',
  /** Something failed in a way md-bitmap did not foresee: a bug; please report it. */
  EINTERNAL: 'EINTERNAL',

  // -- bitmap files
  /** The file does not start with the md bitmap magic. */
  EBADMAGIC: 'EBADMAGIC',
  /** A bitmap version other than 3 or 4. */
  EBADVERSION: 'EBADVERSION',
  /** A clustered (version 5) bitmap: not supported. */
  ECLUSTERED: 'ECLUSTERED',
  /** A lockless (version 6) bitmap: not supported. */
  ELOCKLESS: 'ELOCKLESS',
  /** A chunk size that is not a power of two, or under 512. */
  EBADCHUNK: 'EBADCHUNK',
  /** A daemon sleep of 0 or over a day. */
  EBADDAEMON: 'EBADDAEMON',
  /** A write-behind limit over 16383. */
  EBADWRITEBEHIND: 'EBADWRITEBEHIND',
  /** A sync size of 0, or beyond a safe integer. */
  EBADSIZE: 'EBADSIZE',
  /** The file is shorter than its chunks need. */
  ESHORTFILE: 'ESHORTFILE',
  /** Fewer than 256 bytes to decode a superblock from. */
  ESHORTBUFFER: 'ESHORTBUFFER',
  /** The bitmap belongs to another array (its uuid differs). */
  EUUID: 'EUUID',
  /** A bitmap on a filesystem that does not survive a reboot (tmpfs, ramfs). */
  EVOLATILE: 'EVOLATILE',

  // -- mirrors
  /** The mirror's metadata file is missing, corrupt or does not match. */
  EMIRROR_METADATA: 'EMIRROR_METADATA',
  /** No member in sync is left to serve the request. */
  EMIRROR_FAILED: 'EMIRROR_FAILED',
  /** A write reached no member that may acknowledge it. */
  EMIRROR_WRITE: 'EMIRROR_WRITE',
  /** Every member that could serve a read failed it. */
  EMIRROR_READ: 'EMIRROR_READ',
  /** A member is missing, too small, or in the wrong state for the request. */
  EMIRROR_MEMBER: 'EMIRROR_MEMBER',
  /** The request would leave no member in sync. */
  EMIRROR_LAST_MEMBER: 'EMIRROR_LAST_MEMBER',
  /** A resync, recovery or check is already running. */
  EMIRROR_BUSY: 'EMIRROR_BUSY',
  /** The operation was aborted through its `AbortSignal`. */
  EABORTED: 'EABORTED',
  /** No changed-block tracking bitmap of that name is tracked by the mirror. */
  ETRACK_UNKNOWN: 'ETRACK_UNKNOWN',
  /** A tracking bitmap of that name, or on that file, exists already (or the file is the mirror's write-intent bitmap). */
  ETRACK_EXISTS: 'ETRACK_EXISTS',
  /** A tracking bitmap's size or chunk size does not fit the mirror (its chunk size must be the mirror's or a power-of-two multiple). */
  ETRACK_GEOMETRY: 'ETRACK_GEOMETRY',

  // -- NBD
  /** The NBD peer sent bytes that break the protocol. */
  ENBD_PROTOCOL: 'ENBD_PROTOCOL',
  /** The NBD server speaks the oldstyle handshake, which is not supported. */
  ENBD_OLDSTYLE: 'ENBD_OLDSTYLE',
  /** The NBD connection is gone; every pending and later request fails with it. */
  ENBD_DISCONNECTED: 'ENBD_DISCONNECTED',
  /** An NBD request, connection or handshake took longer than its timeout. */
  ENBD_TIMEOUT: 'ENBD_TIMEOUT',
  /** Not an NBD URL this client understands. */
  ENBD_URL: 'ENBD_URL',
  /** `NBD_REP_ERR_UNSUP`: the server does not know the option. */
  ENBD_UNSUP: 'ENBD_UNSUP',
  /** `NBD_REP_ERR_POLICY`: forbidden by the server's policy. */
  ENBD_POLICY: 'ENBD_POLICY',
  /** `NBD_REP_ERR_INVALID`: the option was malformed. */
  ENBD_INVALID: 'ENBD_INVALID',
  /** `NBD_REP_ERR_PLATFORM`: not supported on the server's platform. */
  ENBD_PLATFORM: 'ENBD_PLATFORM',
  /** `NBD_REP_ERR_TLS_REQD`: the server wants TLS first. */
  ENBD_TLS_REQUIRED: 'ENBD_TLS_REQUIRED',
  /** The NBD TLS handshake failed (no common suite, an unknown pre-shared key, the peer hung up). */
  ENBD_TLS: 'ENBD_TLS',
  /** The NBD peer's TLS certificate does not verify (unknown CA, wrong host name, expired, none given). */
  ENBD_TLS_CERTIFICATE: 'ENBD_TLS_CERTIFICATE',
  /** The NBD server will not start TLS (it has no TLS, or does not speak fixed newstyle). */
  ENBD_TLS_REFUSED: 'ENBD_TLS_REFUSED',
  /** `NBD_REP_ERR_UNKNOWN`: no export of that name. */
  ENBD_UNKNOWN_EXPORT: 'ENBD_UNKNOWN_EXPORT',
  /** `NBD_REP_ERR_SHUTDOWN`: the server is shutting down. */
  ENBD_SHUTDOWN: 'ENBD_SHUTDOWN',
  /** `NBD_REP_ERR_BLOCK_SIZE_REQD`: the server wants the client to honour block sizes. */
  ENBD_BLOCK_SIZE_REQUIRED: 'ENBD_BLOCK_SIZE_REQUIRED',
  /** `NBD_REP_ERR_TOO_BIG`: the option's data was too large. */
  ENBD_TOO_BIG: 'ENBD_TOO_BIG',
  /** Another NBD option error reply. */
  ENBD_OPTION_ERROR: 'ENBD_OPTION_ERROR',

  // -- the md-bitmap command
  /** Command line: an unknown command or option, a malformed or missing argument (exit 2). */
  EUSAGE: 'EUSAGE',
  /** Command line: `demo` found members that differ or an acknowledged write missing (exit 3). */
  EVERIFY: 'EVERIFY',
  /** Command line: interrupted by SIGINT/SIGTERM before finishing (exit 130). */
  EINTERRUPTED: 'EINTERRUPTED',
  /** Command line: the demo's writer stopped before the demo killed it. */
  EDEMO_WRITER: 'EDEMO_WRITER',
} as const

/** A code of md-bitmap's own errors: one of {@link LibraryErrorCode}. */
export type LibraryErrorCode = (typeof LibraryErrorCode)[keyof typeof LibraryErrorCode]

/**
 * The errno names md-bitmap's operations meet, passed through from the operating
 * system (file, device and socket calls) or used with their usual meaning. An
 * {@link MdBitmapError} with one of these codes carries the OS error number in
 * `errno` when it came from a system call.
 *
 * @enum
 */
export const ErrnoCode = {
  /** Permission denied by the file mode or an access check. */
  EACCES: 'EACCES',
  /** Operation not permitted: missing privileges or file attributes (immutable). */
  EPERM: 'EPERM',
  /** No such file or directory. */
  ENOENT: 'ENOENT',
  /** The file exists already. */
  EEXIST: 'EEXIST',
  /** A path component is not a directory. */
  ENOTDIR: 'ENOTDIR',
  /** The path is a directory where a file was needed. */
  EISDIR: 'EISDIR',
  /** The path is too long. */
  ENAMETOOLONG: 'ENAMETOOLONG',
  /** Too many symbolic links on the way. */
  ELOOP: 'ELOOP',
  /** The filesystem is mounted read-only, or the export is read-only. */
  EROFS: 'EROFS',
  /** No space left on the device. */
  ENOSPC: 'ENOSPC',
  /** The disk quota is used up. */
  EDQUOT: 'EDQUOT',
  /** The file would grow beyond what the filesystem or the limits allow. */
  EFBIG: 'EFBIG',
  /** The device reported an I/O error. */
  EIO: 'EIO',
  /** The file or device is in use. */
  EBUSY: 'EBUSY',
  /** An argument is out of range or malformed. */
  EINVAL: 'EINVAL',
  /** Out of memory. */
  ENOMEM: 'ENOMEM',
  /** A value does not fit its type (an offset beyond 2^63, an NBD overflow reply). */
  EOVERFLOW: 'EOVERFLOW',
  /** The operation is not supported (by the filesystem, device or NBD server). */
  ENOTSUP: 'ENOTSUP',
  /** The operation is not supported on this object. */
  EOPNOTSUPP: 'EOPNOTSUPP',
  /** The system call is not implemented by this kernel. */
  ENOSYS: 'ENOSYS',
  /** The ioctl does not apply to this file or device. */
  ENOTTY: 'ENOTTY',
  /** No such device or address. */
  ENXIO: 'ENXIO',
  /** No such device. */
  ENODEV: 'ENODEV',
  /** A bad file descriptor. */
  EBADF: 'EBADF',
  /** This process has too many open files. */
  EMFILE: 'EMFILE',
  /** The system has too many open files. */
  ENFILE: 'ENFILE',
  /** The resource is temporarily unavailable; try again. */
  EAGAIN: 'EAGAIN',
  /** A system call was interrupted by a signal. */
  EINTR: 'EINTR',
  /** The operation was cancelled before it completed. */
  ECANCELED: 'ECANCELED',
  /** A stale file handle (NFS). */
  ESTALE: 'ESTALE',
  /** The filesystem found its structures corrupted. */
  EUCLEAN: 'EUCLEAN',
  /** The address (TCP port or Unix socket) is in use. */
  EADDRINUSE: 'EADDRINUSE',
  /** The address cannot be bound on this host. */
  EADDRNOTAVAIL: 'EADDRNOTAVAIL',
  /** Nothing listens at the address: the connection was refused. */
  ECONNREFUSED: 'ECONNREFUSED',
  /** The peer reset the connection. */
  ECONNRESET: 'ECONNRESET',
  /** The connection was aborted. */
  ECONNABORTED: 'ECONNABORTED',
  /** Writing to a connection the peer has closed. */
  EPIPE: 'EPIPE',
  /** The connection timed out. */
  ETIMEDOUT: 'ETIMEDOUT',
  /** No route to the host. */
  EHOSTUNREACH: 'EHOSTUNREACH',
  /** The network is unreachable. */
  ENETUNREACH: 'ENETUNREACH',
  /** The host name does not resolve (DNS). */
  ENOTFOUND: 'ENOTFOUND',
  /** The host name could not be resolved now (DNS); try again. */
  EAI_AGAIN: 'EAI_AGAIN',
  /** The peer or the server is shutting down (an NBD error reply). */
  ESHUTDOWN: 'ESHUTDOWN',
} as const

/**
 * An errno name: one of {@link ErrnoCode}. An errno name not listed there, which no
 * md-bitmap operation is known to meet, is passed through unchanged all the same.
 */
export type ErrnoCode = (typeof ErrnoCode)[keyof typeof ErrnoCode]

/** Every code an {@link MdBitmapError} can carry: one of md-bitmap's own, or an errno name. */
export type MdBitmapErrorCode = LibraryErrorCode | ErrnoCode

/** Every code of {@link MdBitmapErrorCode}, md-bitmap's own first. */
export const MD_BITMAP_ERROR_CODES: readonly MdBitmapErrorCode[] = [...Object.values(LibraryErrorCode), ...Object.values(ErrnoCode)]

/** An error raised by md-bitmap. */
export class MdBitmapError extends Error {
  /** Stable, machine-readable: see {@link MdBitmapErrorCode} for every code and its meaning. */
  readonly code: MdBitmapErrorCode
  /** The OS error number, when the error came from a system call. */
  readonly errno?: number

  constructor(code: MdBitmapErrorCode, message: string, options?: { cause?: unknown; errno?: number }) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause })
    this.name = 'MdBitmapError'
    this.code = code
    if (options?.errno !== undefined) this.errno = options.errno
  }
}

/**
 * The one way anything thrown becomes an {@link MdBitmapError}. An `MdBitmapError`
 * passes through unchanged. Anything else keeps its code when it has an errno-style
 * one (`EIO`, `ENOSPC`, the native core's `EEXTENT_HOLE`, …) and its errno; otherwise
 * (Node's `ERR_…` codes included) it gets `fallback` (default `EIO`). With `context` ("cannot write /x/y"), the message
 * reads `context: original message`; `hint` is appended after `; ` to say what to do.
 */
export function toMdBitmapError(
  e: unknown,
  options: { fallback?: MdBitmapErrorCode; context?: string; hint?: string } = {},
): MdBitmapError {
  if (e instanceof MdBitmapError && options.context === undefined && options.hint === undefined) return e
  const err = e as { code?: unknown; errno?: unknown; message?: unknown }
  // An errno-style code from the OS or the native core is kept as it is (see ErrnoCode);
  // Node's own `ERR_…` codes name a misuse, not an outcome, and get the fallback.
  const code = typeof err?.code === 'string' && /^E(?!RR_)[A-Z0-9_]+$/.test(err.code) ? (err.code as MdBitmapErrorCode) : options.fallback ?? 'EIO'
  let message = typeof err?.message === 'string' ? err.message : String(e)
  if (options.context !== undefined) message = `${options.context}: ${message}`
  if (options.hint !== undefined) message = `${message}; ${options.hint}`
  return new MdBitmapError(code, message, {
    cause: e,
    errno: typeof err?.errno === 'number' ? err.errno : e instanceof MdBitmapError ? e.errno : undefined,
  })
}
