/**
 * Waiting in tests: a plain delay, and polling for a condition with a deadline that
 * says what was awaited when it passes.
 */

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms))
}

/** Polls `cond` every few milliseconds until it holds (or throws after `ms`). */
export async function until(cond: () => boolean, ms = 5000, what = 'condition'): Promise<void> {
  const t0 = Date.now()
  while (!cond()) {
    if (Date.now() - t0 > ms) throw new Error(`timed out after ${ms} ms waiting for ${what}`)
    await sleep(2)
  }
}
