/**
 * Transparent huge pages, as the tests see them: whether the kernel gives them to
 * memory advised for them, and how much of this process's memory they back.
 */
import { readFileSync } from 'node:fs'

/** Whether `/sys/kernel/mm/transparent_hugepage/enabled` is `always` or `madvise`. */
export function hugePagesOn(): boolean {
  try {
    return !readFileSync('/sys/kernel/mm/transparent_hugepage/enabled', 'utf8').includes('[never]')
  } catch {
    return false
  }
}

/** kB of this process's anonymous memory backed by huge pages (`/proc/self/smaps_rollup`). */
export function anonHugeKb(): number {
  const m = /^AnonHugePages:\s+(\d+) kB/m.exec(readFileSync('/proc/self/smaps_rollup', 'utf8'))
  return m ? Number(m[1]) : 0
}
