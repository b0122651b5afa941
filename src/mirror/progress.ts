/**
 * Progress calls of a sync action (resync, check): at most one per interval, and
 * always the last one.
 *
 * @module
 */

/**
 * Returns `report(force)`: calls `onProgress` with `make(elapsedMs)` unless the last
 * call was less than `intervalMs` ago (`force` calls anyway). Without `onProgress`,
 * does nothing.
 */
export function progressReporter<P>(onProgress: ((p: P) => void) | undefined, intervalMs: number, t0: number, make: (elapsedMs: number) => P): (force: boolean) => void {
  let last = 0
  return (force) => {
    const now = performance.now()
    if (!onProgress || (!force && now - last < intervalMs)) return
    last = now
    onProgress(make(now - t0))
  }
}
