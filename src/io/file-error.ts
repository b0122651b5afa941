/**
 * What a failed file operation means and what to do about it: every error out of the
 * I/O layer goes through {@link fileError}, so the hints live here once.
 *
 * @internal
 * @module
 */
import { MdBitmapError, toMdBitmapError } from '../errors'

/** What to do about a system error, by errno name. */
const HINTS: Readonly<Record<string, string>> = {
  ENOENT: 'check the path: the file, or a folder on the way to it, does not exist',
  ENOTDIR: 'check the path: a component on the way is not a folder',
  EISDIR: 'it is a folder; give the path of a file',
  EEXIST: 'pick another path, or remove the file first',
  EACCES: 'permission denied; check the file mode, or run as a user who may access it',
  EPERM: 'operation not permitted; check the file attributes (lsattr), or run with the privileges needed',
  EROFS: 'the filesystem is mounted read-only; remount it read-write, or use another one',
  ENOSPC: 'the filesystem is full; free some space on it, or use another one',
  EDQUOT: 'the disk quota is used up; free some space, or raise the quota',
  EIO: 'the device reported an I/O error; check the kernel log (dmesg) and the disk',
  EMFILE: 'this process has too many open files; raise the limit (ulimit -n)',
  ENFILE: 'the system has too many open files; close some, or raise fs.file-max',
  ENAMETOOLONG: 'the path is too long; use a shorter one',
  ELOOP: 'too many symbolic links on the way; check the path',
  EBUSY: 'the file or device is in use by someone else',
}

/**
 * `e`, thrown by a file operation, as an {@link MdBitmapError} whose message reads
 * `context: what the system said; what to do` (`context` says what was attempted on
 * which path, e.g. `cannot create /var/lib/x.bitmap`).
 */
export function fileError(e: unknown, context: string): MdBitmapError {
  const code = (e as { code?: unknown } | null)?.code
  return toMdBitmapError(e, { context, hint: typeof code === 'string' ? HINTS[code] : undefined })
}
