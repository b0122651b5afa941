/**
 * Every error md-bitmap raises is an {@link MdBitmapError}: a string `code` to branch
 * on, and a message that says what happened and what to do about it.
 *
 * Codes are either errno names from the operating system (`EIO`, `ENOSPC`, `EPERM`, …)
 * or the project's own:
 *
 * | code | meaning |
 * |---|---|
 * | `EEXTENT_HOLE` | the file has a hole: blocks never allocated |
 * | `EEXTENT_UNWRITTEN` | allocated with fallocate but never written |
 * | `EEXTENT_DELALLOC` | delayed allocation not yet resolved |
 * | `EEXTENT_INLINE` | data kept inline in filesystem metadata |
 * | `EEXTENT_ENCODED` | data compressed or encrypted on disk |
 * | `EEXTENT_SHARED` | blocks shared with another file (reflink) |
 * | `EEXTENT_NOT_ALIGNED` | an extent not aligned to the device's blocks |
 * | `EEXTENT_UNKNOWN` | the filesystem does not say where the data is |
 * | `EDEVICE_NOT_PHYSICAL` | FIEMAP addresses are not device offsets (btrfs) |
 * | `EDEVICE_NOT_SINGLE` | the filesystem is not on one block device |
 * | `EFIEMAP_UNSUPPORTED` | the filesystem cannot map its blocks (tmpfs) |
 * | `EFILE_MODE_UNSUPPORTED` | the file cannot be written in place |
 * | `EDEVICE_MODE_UNSUPPORTED` | the file cannot be written on its device directly |
 * | `EDEVICE_PIN` | the file could not be pinned (made immutable) for device mode |
 * | `EOUT_OF_EXTENTS` | a device-mode write would fall outside the file's extents |
 * | `EOUT_OF_RANGE` | an I/O past the end of the file |
 * | `EALIGN` | an offset, length or buffer not aligned for direct I/O |
 * | `ECLOSED` | the page store was closed |
 * | `ENATIVE_LOAD` | the native addon could not be loaded |
 * | `ENOT_REGULAR_FILE` | the path is not a regular file |
 * | `EINVAL` | an argument is out of range |
 * | `EBADMAGIC` | the file does not start with the md bitmap magic |
 * | `EBADVERSION` | a bitmap version other than 3 or 4 |
 * | `ECLUSTERED` | a clustered (version 5) bitmap, not supported |
 * | `ELOCKLESS` | a lockless (version 6) bitmap, not supported |
 * | `EBADCHUNK` | chunk size not a power of two, or under 512 |
 * | `EBADDAEMON` | daemon sleep 0 or over a day |
 * | `EBADWRITEBEHIND` | write-behind over 16383 |
 * | `EBADSIZE` | sync size 0 (or beyond a safe integer) |
 * | `ESHORTFILE` | the file is shorter than its chunks need |
 * | `ESHORTBUFFER` | fewer than 256 bytes to decode |
 * | `EUUID` | the bitmap belongs to another array |
 * | `EVOLATILE` | a bitmap on a filesystem that does not survive a reboot (tmpfs) |
 * | `EMIRROR_METADATA` | the mirror's metadata file is missing, corrupt or does not match |
 * | `EMIRROR_FAILED` | no member in sync is left to serve the request |
 * | `EMIRROR_WRITE` | a write reached no member that may acknowledge it |
 * | `EMIRROR_READ` | every member that could serve a read failed it |
 * | `EMIRROR_MEMBER` | a member is missing, too small, or in the wrong state for the request |
 * | `EMIRROR_LAST_MEMBER` | the request would leave no member in sync |
 * | `EMIRROR_BUSY` | a resync or recovery is already running |
 * | `EABORTED` | the operation was aborted through its `AbortSignal` |
 *
 * @module
 */

/** An error raised by md-bitmap. */
export class MdBitmapError extends Error {
  /** Stable, machine-readable: an errno name or one of the codes listed in this module. */
  readonly code: string
  /** The OS error number, when the error came from a system call. */
  readonly errno?: number

  constructor(code: string, message: string, options?: { cause?: unknown; errno?: number }) {
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
 * it gets `fallback` (default `EIO`). With `context` ("cannot write /x/y"), the message
 * reads `context: original message`; `hint` is appended after `; ` to say what to do.
 */
export function toMdBitmapError(
  e: unknown,
  options: { fallback?: string; context?: string; hint?: string } = {},
): MdBitmapError {
  if (e instanceof MdBitmapError && options.context === undefined && options.hint === undefined) return e
  const err = e as { code?: unknown; errno?: unknown; message?: unknown }
  const code = typeof err?.code === 'string' && /^E[A-Z0-9_]+$/.test(err.code) ? err.code : options.fallback ?? 'EIO'
  let message = typeof err?.message === 'string' ? err.message : String(e)
  if (options.context !== undefined) message = `${options.context}: ${message}`
  if (options.hint !== undefined) message = `${message}; ${options.hint}`
  return new MdBitmapError(code, message, {
    cause: e,
    errno: typeof err?.errno === 'number' ? err.errno : e instanceof MdBitmapError ? e.errno : undefined,
  })
}
