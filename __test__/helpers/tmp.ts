/**
 * Temporary directories for tests, on a disk filesystem: bitmaps refuse volatile
 * filesystems (tmpfs), and mdadm and the O_DIRECT readers need a real block device
 * under the file.
 *
 *   const dir = diskTempDir('md-bitmap-x-')
 *   test.after.always(() => removeDir(dir))
 */
import { mkdtempSync, rmSync, statfsSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

const TMPFS_MAGIC = 0x01021994

/**
 * A fresh directory on a disk filesystem (not tmpfs: bitmaps refuse volatile
 * filesystems, and mdadm opens with O_DIRECT). Remove it with {@link removeDir}.
 */
export function diskTempDir(prefix: string): string {
  for (const parent of ['/var/tmp', tmpdir(), process.cwd()]) {
    try {
      if (statfsSync(parent).type === TMPFS_MAGIC) continue
      return mkdtempSync(join(parent, prefix))
    } catch {
      // next
    }
  }
  throw new Error('no disk-backed directory for test files')
}

/** Removes `dir` and everything in it; nothing when `dir` is undefined or empty. */
export function removeDir(dir: string | undefined): void {
  if (dir) rmSync(dir, { recursive: true, force: true })
}
