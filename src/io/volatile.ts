/**
 * The one answer to "does this filesystem survive a reboot?". A bitmap on a filesystem
 * kept in memory (tmpfs, ramfs) is gone after a crash, and with it the record of which
 * chunks to resync; so bitmaps refuse such filesystems unless told otherwise.
 *
 * For a file already judged by the native `check()` (`file-check.ts`), the answer comes
 * from its `fsType` (the core names the filesystem from its statfs magic); for any
 * other path, a folder or the folder a file is about to be created in, from statfs(2)
 * here. Both read the one list below.
 *
 * @internal
 * @module
 */
import { statfsSync } from 'node:fs'
import type { CheckInfo } from '../native/binding'
import { fileError } from './file-error'

/** Filesystems whose contents do not survive a reboot: the name `check()` reports, and the statfs magic. */
const VOLATILE_FILESYSTEMS: readonly { name: string; magic: number }[] = [
  { name: 'tmpfs', magic: 0x01021994 },
  { name: 'ramfs', magic: 0x858458f6 },
]

/**
 * The name of the volatile filesystem (`'tmpfs'`, `'ramfs'`) that holds `where`, or
 * null when it is on one that survives a reboot. `where` is either what the native
 * `check()` reported on a file, or the path of an existing file or folder (one
 * synchronous statfs(2) call).
 */
export function volatileFilesystem(where: CheckInfo | string): string | null {
  if (typeof where !== 'string') return VOLATILE_FILESYSTEMS.find((f) => f.name === where.fsType)?.name ?? null
  let magic: number
  try {
    magic = statfsSync(where).type
  } catch (e) {
    throw fileError(e, `cannot tell which filesystem holds ${where}`)
  }
  return VOLATILE_FILESYSTEMS.find((f) => f.magic === magic)?.name ?? null
}
