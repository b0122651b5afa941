/**
 * The crash-test child: a fixture (`__test__/fixtures/*.ts`) run as its own process,
 * through tsx against src/ as the specs themselves are, whose stdout lines the parent
 * collects and which the parent kills with SIGKILL at a moment of its choosing.
 *
 *   const seed = replaySeed(t, 'MD_BITMAP_CRASH_SEED')
 *   const w = startCrashChild('bitmap-writer.ts', [path, String(seed)])
 *   t.teardown(killRunning)
 *   await w.waitFor('ready', 20_000)
 *   const how = await w.kill()      // 'SIGKILL'; w.lines holds every line it printed
 *
 * The rules that make `lines` the truth about what the child did:
 *
 * - The child prints each line announcing I/O with `printLine` (src/cli/demo/print-line.ts:
 *   a synchronous `fs.writeSync(1, …)`) before it issues the I/O, never with
 *   `process.stdout.write` or `console.log`: on Linux a write to a pipe from
 *   `process.stdout` is asynchronous once the pipe is full, so lines queue inside the
 *   child and a SIGKILL loses them while the I/O they announced reached the disk.
 * - The parent reads stdout to its end: a child has ended when its stdio closed
 *   ('close'), not when it exited ('exit' may come before the last lines were read).
 * - A last line without its newline was cut by the kill and is dropped: its I/O was not
 *   issued (the line comes first).
 */
import type { ExecutionContext } from 'ava'
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process'
import { join } from 'node:path'

const FIXTURES = join(__dirname, '..', 'fixtures')

/** How a child ended: the signal that killed it, or its exit status. */
export type Ending = NodeJS.Signals | number | null

export interface CrashChild {
  readonly child: ChildProcessWithoutNullStreams
  /** Every complete line the child printed so far, in order. */
  readonly lines: string[]
  /** Everything the child wrote to stderr so far. */
  readonly stderr: string
  /** Resolves once the child ended and its stdout was read to the end. */
  readonly ended: Promise<Ending>
  /** The first line starting with `prefix`, once printed; rejects after `timeoutMs` or when the child ends first. */
  waitFor(prefix: string, timeoutMs: number): Promise<string>
  /** Writes `line` to the child's stdin (fixtures wait for one before they open their files). */
  send(line: string): void
  /** SIGKILL; resolves as {@link ended}. */
  kill(): Promise<Ending>
}

const running = new Set<CrashChild>()

/** Starts `node --import tsx __test__/fixtures/<fixture> ...args`. */
export function startCrashChild(fixture: string, args: string[]): CrashChild {
  const child = spawn(process.execPath, ['--import', 'tsx', join(FIXTURES, fixture), ...args], { stdio: ['pipe', 'pipe', 'pipe'] })
  const lines: string[] = []
  let partial = ''
  let stderr = ''
  const waiters: { prefix: string; resolve: (l: string) => void }[] = []
  child.stdout.setEncoding('utf8')
  child.stdout.on('data', (d: string) => {
    const parts = (partial + d).split('\n')
    partial = parts.pop()!
    for (const l of parts) {
      lines.push(l)
      if (waiters.length === 0) continue
      for (const w of waiters.splice(0)) {
        if (l.startsWith(w.prefix)) w.resolve(l)
        else waiters.push(w)
      }
    }
  })
  // A child killed before it read its stdin: the line is moot, not an error of the test.
  child.stdin.on('error', () => {})
  child.stderr.setEncoding('utf8')
  child.stderr.on('data', (d: string) => (stderr += d))
  // 'close': the child exited and its stdout and stderr were read to their end.
  const ended = new Promise<Ending>((r) => child.on('close', (code, signal) => r(signal ?? code)))
  const c: CrashChild = {
    child,
    lines,
    get stderr() {
      return stderr
    },
    ended,
    waitFor(prefix, timeoutMs) {
      const seen = lines.find((l) => l.startsWith(prefix))
      if (seen !== undefined) return Promise.resolve(seen)
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`${fixture} did not print "${prefix}" within ${timeoutMs} ms; stderr: ${stderr}`)), timeoutMs)
        void ended.then((how) => {
          clearTimeout(timer)
          reject(new Error(`${fixture} ended (${how}) before printing "${prefix}"; stderr: ${stderr}`))
        })
        waiters.push({
          prefix,
          resolve: (l) => {
            clearTimeout(timer)
            resolve(l)
          },
        })
      })
    },
    send(line) {
      child.stdin.write(line + '\n')
    },
    kill() {
      child.kill('SIGKILL')
      return ended
    },
  }
  running.add(c)
  void ended.then(() => running.delete(c))
  return c
}

/** Kills every child still running and waits until they ended: for teardowns. */
export async function killRunning(): Promise<void> {
  await Promise.all([...running].map((c) => c.kill()))
}

/**
 * The seed of a crash test's random choices: `$env` when set (to replay a run), else a
 * new one. Logged with the way to replay it.
 */
export function replaySeed(t: ExecutionContext, env: string): number {
  const seed = Number(process.env[env]) || (Date.now() & 0xffff) * 7 + 1
  t.log(`seed ${seed} (replay with ${env}=${seed})`)
  return seed
}
