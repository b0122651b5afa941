/**
 * Where a command writes: its report to `out` (stdout), progress and warnings to
 * `err` (stderr). Kept behind an interface so the commands can be run in-process.
 *
 * @internal
 * @module
 */

export interface Io {
  out(text: string | Uint8Array): void
  err(text: string): void
  /** Whether stderr is a terminal (progress bars are drawn only there). */
  readonly errIsTTY: boolean
  /** Terminal width for progress bars. */
  readonly columns: number
}

/** The process's own stdout and stderr. */
export function processIo(): Io {
  return {
    out: (t) => void process.stdout.write(t),
    err: (t) => void process.stderr.write(t),
    errIsTTY: process.stderr.isTTY === true,
    columns: process.stderr.columns || 80,
  }
}
