/**
 * What a process is doing, from /proc, for a child that did not end in time: each
 * thread's state, kernel wait and current system call, and the fdinfo of its eventfds,
 * io_uring rings and AIO contexts (a ring's heads and tails say whether anything is in
 * flight). Read from outside (`pid`): a thread spinning in native code runs no timer,
 * so a watchdog inside it can say nothing. {@link runWithDeadline} runs a child that
 * way. Used by the engine soak and bench:io.
 */
import { spawn } from 'node:child_process'
import { readFileSync, readdirSync, readlinkSync } from 'node:fs'

/** x86-64 and aarch64 numbers of the calls a stuck engine would be in. */
const SYSCALLS: Record<string, Record<number, string>> = {
  x64: { 0: 'read', 1: 'write', 7: 'poll', 202: 'futex', 232: 'epoll_wait', 281: 'epoll_pwait', 426: 'io_uring_enter', 208: 'io_getevents', 209: 'io_submit' },
  arm64: { 63: 'read', 64: 'write', 73: 'ppoll', 98: 'futex', 22: 'epoll_pwait', 426: 'io_uring_enter', 4: 'io_getevents', 2: 'io_submit' },
}

function read(file: string): string {
  try {
    return readFileSync(file, 'utf8').trim()
  } catch {
    return '?'
  }
}

/** The report, one line per thread and per descriptor of interest. */
export function describeProcess(pid: number | 'self'): string {
  const root = `/proc/${pid}`
  const lines = [`process ${pid}: ${read(`${root}/cmdline`).split('\0').join(' ').slice(0, 200)}`]
  let tasks: string[] = []
  try {
    tasks = readdirSync(`${root}/task`)
  } catch {
    return `${lines[0]}\n  (gone)`
  }
  for (const t of tasks) {
    const stat = read(`${root}/task/${t}/stat`)
    const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3)
    // "running" (on a CPU now), -1 (in user space), or the number of the call it is in.
    const call = read(`${root}/task/${t}/syscall`).split(' ')[0]
    const where = call === 'running' ? 'on a CPU' : /^\d+$/.test(call) ? `in ${SYSCALLS[process.arch]?.[Number(call)] ?? `syscall ${call}`}` : `syscall file: ${call}`
    lines.push(`  thread ${t} ${read(`${root}/task/${t}/comm`)}: state ${state}, wchan ${read(`${root}/task/${t}/wchan`)}, ${where}`)
  }
  let fds: string[] = []
  try {
    fds = readdirSync(`${root}/fd`)
  } catch {
    // gone meanwhile
  }
  for (const fd of fds) {
    let link: string
    try {
      link = readlinkSync(`${root}/fd/${fd}`)
    } catch {
      continue
    }
    if (/io_uring|eventfd|\[aio\]/.test(link)) {
      const info = read(`${root}/fdinfo/${fd}`)
        .split('\n')
        .filter((l) => /^(Sq|Cq|Cached|SQEs|CQEs|eventfd-count)/.test(l))
        .map((l) => l.replace(/\s+/g, ' '))
      lines.push(`  fd ${fd} ${link}: ${info.join('; ')}`)
    }
  }
  return lines.join('\n')
}

/** How a child run by {@link runWithDeadline} ended. */
export interface DeadlineOutcome {
  code: number | null
  signal: NodeJS.Signals | null
  stdout: string
  stderr: string
  /** Set when the child was still running at the deadline: its description, taken before the SIGKILL. */
  stuck?: string
}

/** Runs `node args` with `env`; one still running after `deadlineMs` is described ({@link describeProcess}) and killed. */
export function runWithDeadline(args: string[], env: NodeJS.ProcessEnv, deadlineMs: number): Promise<DeadlineOutcome> {
  return new Promise((resolve) => {
    const p = spawn(process.execPath, args, { env, stdio: ['ignore', 'pipe', 'pipe'] })
    let stdout = ''
    let stderr = ''
    let stuck: string | undefined
    p.stdout.on('data', (d) => (stdout += d))
    p.stderr.on('data', (d) => (stderr += d))
    const deadline = setTimeout(() => {
      stuck = describeProcess(p.pid!)
      p.kill('SIGKILL')
    }, deadlineMs)
    p.on('close', (code, signal) => {
      clearTimeout(deadline)
      resolve({ code, signal, stdout, stderr, stuck })
    })
  })
}
