/**
 * The bitmap daemon: every `daemonSleep` seconds, one pass of lazy bit clearing.
 *
 * A pass, in order:
 * 0. If the target has a `beforeClear` hook and some chunk may be cleared, run it:
 *    the mirror makes its members' completed writes durable there (fdatasync), so a
 *    bit is never cleared over data still in a device's volatile cache.
 * 1. If `events_cleared` changed since the superblock was last written, write the
 *    superblock and wait for it: a bit may be cleared on disk only once the
 *    superblock says which events the clearing accounts for (a member that returns
 *    with an older event count than `events_cleared` cannot trust the bitmap).
 * 2. Each candidate chunk steps down: 2 → 1, then 1 → 0 with its bit cleared in the
 *    page image. Nothing is cleared while the mirror is degraded, while a chunk is
 *    NEEDED or in resync, or if another `events_cleared` update arrived meanwhile.
 * 3. The pages whose bits were cleared are written; the pass waits for them, writers
 *    never do.
 *
 * Passes never overlap. The timer is unref'd, so it never keeps a process alive.
 *
 * @module
 */

/**
 * What a daemon pass works on. A {@link Bitmap} hands its daemon a private object
 * with these, so none of them is part of the bitmap's public API.
 */
export interface DaemonTarget {
  /** Whether the superblock must be written before any bit may be cleared. */
  readonly superblockDirty: boolean
  /** Whether clearing is allowed at all (false while degraded or kicked). */
  readonly mayClear: boolean
  /** Writes the superblock (with the current events_cleared) and waits for it. */
  syncSuperblock(): Promise<void>
  /** Steps every candidate chunk once; clears bits in the image; returns how many changed. */
  stepCandidates(mayClear: boolean): number
  /** Writes the pages whose bits were cleared. */
  writeClearedPages(): Promise<void>
  /** Whether some chunk is a candidate for a step (so a pass may clear a bit). */
  readonly hasCandidates: boolean
  /** Runs before candidates step; must not reject. */
  beforeClear?: () => Promise<void>
}

/** One pass; returns how many chunks changed state (0: nothing left to do). */
export async function daemonPass(target: DaemonTarget): Promise<number> {
  // Taken once: clearing allowed only if it was allowed (and members flushed) before
  // the awaits below, and still is after them.
  const mayClear = target.mayClear
  if (target.beforeClear && target.hasCandidates && mayClear) await target.beforeClear()
  if (target.superblockDirty) await target.syncSuperblock()
  // Re-read: an endWrite during the superblock write may have asked for another update.
  const changed = target.stepCandidates(mayClear && target.mayClear && !target.superblockDirty)
  await target.writeClearedPages()
  return changed
}

/** Runs passes on a timer, one at a time. */
export class Daemon {
  private timer: NodeJS.Timeout | undefined
  private running: Promise<number> | undefined

  constructor(
    private readonly target: DaemonTarget,
    private readonly onError: (e: unknown) => void,
  ) {}

  /** Starts the timer: a pass every `seconds`. */
  start(seconds: number): void {
    this.stop()
    this.timer = setInterval(() => {
      this.pass().catch(this.onError)
    }, seconds * 1000)
    this.timer.unref()
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer)
    this.timer = undefined
  }

  /** One pass now, or the one already running. */
  pass(): Promise<number> {
    this.running ??= daemonPass(this.target).finally(() => {
      this.running = undefined
    })
    return this.running
  }

  /** Passes until nothing changes (at most `limit`): every idle chunk is cleared. */
  async drain(limit = 4): Promise<void> {
    for (let i = 0; i < limit; i++) {
      await this.running
      if ((await this.pass()) === 0 && !this.target.superblockDirty) return
    }
  }
}
