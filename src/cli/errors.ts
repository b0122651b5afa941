/**
 * How the `md-bitmap` command fails: one line on stderr, `md-bitmap: <CODE>: <message>`,
 * and an exit status from this table (also printed by `md-bitmap --help`):
 *
 * | status | meaning |
 * |---|---|
 * | 0 | success |
 * | 1 | the operation failed: I/O error, not a bitmap, corrupt file, mirror error, … (the code says which) |
 * | 2 | usage error: unknown command or option, missing or malformed argument (code `EUSAGE`) |
 * | 3 | verification failed: `demo` found members that differ or an acknowledged write missing (code `EVERIFY`) |
 * | 130 | interrupted (SIGINT/SIGTERM) before finishing; a resync resumes where it stopped (code `EINTERRUPTED`) |
 *
 * The code is one of {@link MdBitmapErrorCode}: an errno name (`ENOENT`, `EIO`, …),
 * one of md-bitmap's own, or the command's own `EUSAGE`, `EVERIFY`, `EINTERRUPTED`
 * and `EDEMO_WRITER`; anything thrown with no such code is `EINTERNAL`.
 *
 * @internal
 * @module
 */
import { MdBitmapError, toMdBitmapError, type MdBitmapErrorCode } from '../errors'

export const EXIT_OK = 0
export const EXIT_FAILED = 1
export const EXIT_USAGE = 2
export const EXIT_VERIFY = 3
export const EXIT_INTERRUPTED = 130

/** The exit status table, as `--help` prints it. */
export const EXIT_TABLE = `Exit status:
  0    success
  1    the operation failed (I/O error, not a bitmap, corrupt file, mirror error, ...)
  2    usage error: unknown command or option, bad or missing argument (EUSAGE)
  3    verification failed: members differ or an acknowledged write is missing (EVERIFY)
  130  interrupted (SIGINT/SIGTERM); a resync resumes where it stopped (EINTERRUPTED)
Every failure prints one line to stderr: "md-bitmap: CODE: what happened; what to do".`

/** An error of the command itself, with the exit status it calls for. */
export class CliError extends MdBitmapError {
  constructor(
    code: MdBitmapErrorCode,
    message: string,
    readonly exitCode: number = EXIT_FAILED,
  ) {
    super(code, message)
    this.name = 'CliError'
  }
}

/** A usage error (exit 2). `command` names the command whose `--help` to suggest. */
export function usage(message: string, command?: string): CliError {
  const help = command ? `md-bitmap ${command} --help` : 'md-bitmap --help'
  return new CliError('EUSAGE', `${message}; see \`${help}\``, EXIT_USAGE)
}

/** The code, message and exit status of anything thrown. */
export function describe(e: unknown): { code: MdBitmapErrorCode; message: string; exitCode: number } {
  if (e instanceof CliError) return { code: e.code, message: e.message, exitCode: e.exitCode }
  const { code, message } = toMdBitmapError(e, { fallback: 'EINTERNAL' })
  return { code, message, exitCode: EXIT_FAILED }
}

/** The one line printed for a failure (newlines in a message are folded). */
export function errorLine(e: unknown): string {
  const { code, message } = describe(e)
  const flat = message
    .split('\n')
    .map((s) => s.trim())
    .filter(Boolean)
    .join('; ')
  return `md-bitmap: ${code}: ${flat}`
}
