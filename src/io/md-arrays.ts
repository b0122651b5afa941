/**
 * Whether the Linux md driver uses a file as the bitmap of an active array: such a
 * file belongs to the kernel and must not be written by anyone else.
 *
 * The kernel says so in /proc/mdstat, on the array's "bitmap:" line, which ends with
 * `file: PATH` for a bitmap in a file (/sys/block/mdX/md/bitmap/location only says
 * "file", not which one). The path is the one the kernel resolved, so it is compared
 * with this file's real path. Besides, the kernel denies write access to a file it
 * uses as a bitmap (opening it for writing fails `ETXTBSY`); the mdstat check gives
 * the clear answer before that.
 *
 * @internal
 * @module
 */
import { readFile, realpath } from 'node:fs/promises'

/** The bitmap files the "bitmap:" lines of an mdstat text name, with their arrays. */
export function bitmapFilesInMdstat(mdstat: string): { array: string; file: string }[] {
  const out: { array: string; file: string }[] = []
  let array = ''
  for (const line of mdstat.split('\n')) {
    const head = /^(md\S*)\s*:/.exec(line)
    if (head) array = head[1]
    const m = /^\s+bitmap:.*\bfile:\s*(.+?)\s*$/.exec(line)
    if (m && array) out.push({ array, file: m[1] })
  }
  return out
}

/**
 * The md array (`md0`, …) whose bitmap is `path`, from /proc/mdstat; null when no
 * active array uses it, or when there is no md driver.
 */
export async function mdArrayUsingBitmap(path: string, mdstatPath = '/proc/mdstat'): Promise<string | null> {
  let text: string
  try {
    text = await readFile(mdstatPath, 'utf8')
  } catch {
    return null
  }
  const files = bitmapFilesInMdstat(text)
  if (files.length === 0) return null
  const mine = await realpath(path).catch(() => path)
  for (const { array, file } of files) {
    if (file === mine || (await realpath(file).catch(() => file)) === mine) return array
  }
  return null
}
