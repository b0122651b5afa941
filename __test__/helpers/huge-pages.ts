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

/** kB of huge pages backing each of this process's mappings, by start address (`/proc/self/smaps`). */
export function hugePagesByMapping(): Map<string, number> {
  const out = new Map<string, number>()
  let at = ''
  for (const line of readFileSync('/proc/self/smaps', 'utf8').split('\n')) {
    const head = /^([0-9a-f]+)-[0-9a-f]+ /.exec(line)
    if (head) at = head[1]
    const huge = /^AnonHugePages:\s+(\d+) kB/.exec(line)
    if (huge) out.set(at, Number(huge[1]))
  }
  return out
}

/**
 * kB of huge pages gained since `before` ({@link hugePagesByMapping}): each mapping's
 * growth, a new mapping's whole. A mapping freed meanwhile takes nothing away, as it
 * would from the process's total: a collection during a test (set off by any
 * allocation, the reading of `/proc` included) can free earlier tests' huge pages, and a
 * CI run saw 4 MiB written count as +2048 kB that way.
 */
export function hugeKbGained(before: Map<string, number>): number {
  let gained = 0
  for (const [at, kb] of hugePagesByMapping()) gained += Math.max(0, kb - (before.get(at) ?? 0))
  return gained
}
