/**
 * Temporary directories for tests, on a disk filesystem: bitmaps refuse volatile
 * filesystems (tmpfs), and mdadm and the O_DIRECT readers need a real block device
 * under the file.
 *
 *   const dir = diskTempDir('md-bitmap-x-')
 *   test.after.always(() => removeDir(dir))
 */
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { volatileFilesystem } from '../../src/io/volatile'
import { PAGE, writeWhole } from './io'

/**
 * A fresh directory on a disk filesystem (not tmpfs or ramfs, by the library's own
 * {@link volatileFilesystem}: bitmaps refuse volatile filesystems, and mdadm opens
 * with O_DIRECT). Remove it with {@link removeDir}.
 */
export function diskTempDir(prefix: string): string {
  for (const parent of ['/var/tmp', tmpdir(), process.cwd()]) {
    try {
      if (volatileFilesystem(parent)) continue
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

/** Runs `body` with a file of `pages` zeroed pages in a fresh directory on disk, removed after. */
export async function withPagesFile<T>(pages: number, body: (file: string) => Promise<T>): Promise<T> {
  const dir = diskTempDir('md-bitmap-pages-')
  try {
    const file = join(dir, 'pages')
    writeWhole(file, new Uint8Array(pages * PAGE))
    return await body(file)
  } finally {
    removeDir(dir)
  }
}
