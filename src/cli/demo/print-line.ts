/**
 * How a child process that may be killed at any moment reports what it does: one line
 * at a time, written synchronously to fd 1 before the I/O the line announces.
 *
 * Never `process.stdout.write` or `console.log` for such lines: on Linux a write to a
 * pipe from `process.stdout` is asynchronous once the pipe is full (the parent reads
 * slowly), so lines queue inside the child and a SIGKILL loses them, while the writes
 * they announced reached the disk. `fs.writeSync(1, …)` returns only once the line is
 * in the pipe: what the parent reads after the kill is everything printed before it.
 *
 * @internal
 * @module
 */
import { writeSync } from 'node:fs'

const pause = new Int32Array(new SharedArrayBuffer(4))

/**
 * Writes `line` and a newline to fd 1 and returns once all of it is in the pipe (or
 * file). When fd 1 is non-blocking (something opened `process.stdout` on it) and the
 * pipe is full, waits a millisecond at a time for the reader: the line must be out
 * before the caller goes on.
 */
export function printLine(line: string): void {
  const bytes = Buffer.from(line + '\n')
  let done = 0
  while (done < bytes.length) {
    try {
      done += writeSync(1, bytes, done, bytes.length - done)
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EAGAIN') throw e
      Atomics.wait(pause, 0, 0, 1)
    }
  }
}
