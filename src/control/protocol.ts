/**
 * The control protocol of a mirror held open: line-delimited JSON over its Unix
 * socket, one request per connection.
 *
 * ```
 *   client ── connect ── one line: ControlRequest ──►
 *          ◄── zero or more lines { type: 'progress', progress }   (re-add, add, check)
 *          ◄── one line { type: 'result', result } or { type: 'error', error: { code, message } }
 *          ◄── the server ends the connection
 * ```
 *
 * Results are plain JSON (event counts as numbers), the same objects the `--json`
 * output of `md-bitmap mirror …` prints, so a command gives the same output whether
 * it acted on a running mirror through its socket or opened the mirror itself.
 *
 * @internal
 * @module
 */

/** What a control request asks for: one `md-bitmap mirror` subcommand each. */
export type ControlOp = 'detail' | 'fail' | 'remove' | 're-add' | 'add' | 'check' | 'track' | 'checkpoint' | 'untrack' | 'tracked'

/** The operations a control socket serves. */
export const CONTROL_OPS: readonly ControlOp[] = ['detail', 'fail', 'remove', 're-add', 'add', 'check', 'track', 'checkpoint', 'untrack', 'tracked']

/** One request: the operation and its arguments. */
export interface ControlRequest {
  op: ControlOp
  /** fail, remove, re-add: the member's slot. */
  member?: number
  /** remove: drop the slot for good. */
  forget?: boolean
  /** re-add: a new path for the member; add: the new member's path; track: the tracking bitmap file. */
  path?: string
  /** track, checkpoint, untrack: the tracking bitmap's name. */
  name?: string
  /** track: bytes of data per bit of the tracking bitmap. */
  chunkSize?: number
  /** add: the new member is write-mostly. */
  writeMostly?: boolean
  /** check: copy each differing chunk from the resync source. */
  repair?: boolean
  /** check: most bytes read per second. */
  maxRate?: number
}

/** A line from the server. */
export type ControlReply =
  | { type: 'progress'; progress: Record<string, unknown> }
  | { type: 'result'; result: unknown }
  | { type: 'error'; error: { code: string; message: string } }

/** The longest request line a server reads (bytes); a request is small. */
export const MAX_REQUEST_LINE = 64 * 1024

/** Splits a byte stream into lines; calls `onLine` for each complete one. */
export class LineSplitter {
  private buffered = ''
  constructor(private readonly onLine: (line: string) => void) {}
  /** Feeds a chunk; returns how many bytes wait for their line's end. */
  push(chunk: Buffer | string): number {
    this.buffered += chunk.toString()
    let nl
    while ((nl = this.buffered.indexOf('\n')) >= 0) {
      const line = this.buffered.slice(0, nl)
      this.buffered = this.buffered.slice(nl + 1)
      if (line.trim()) this.onLine(line)
    }
    return this.buffered.length
  }
  /** At the end of the stream: the last line, if it had no line end; false if there was none. */
  end(): boolean {
    const line = this.buffered
    this.buffered = ''
    if (!line.trim()) return false
    this.onLine(line)
    return true
  }
}
