/**
 * NBD servers and clients from Debian's packages, for tests: qemu-nbd, nbd-server and
 * nbdkit (whose filters make servers that lack a feature, or log every request) serving
 * a file on 127.0.0.1 (or a Unix socket), qemu-io and qemu-img as clients.
 * Every server started here is registered with the test's teardown (or the file's
 * `test.after.always`), so it is killed even when the test fails.
 *
 *   const q = await startQemuNbd(t, file, { exportName: 'remote' })
 *   const m = await NbdMember.open(q.url)
 *   q.kill('SIGKILL'); await q.exited
 */
import type { ExecutionContext } from 'ava'
import { execFile, spawn, type ChildProcess } from 'node:child_process'
import { readFileSync, writeFileSync } from 'node:fs'
import { connect } from 'node:net'
import { join } from 'node:path'
import { which } from './env'

export const QEMU_TOOLS = ['qemu-nbd', 'qemu-io', 'qemu-img']

import { freePort, listensOn } from './net'

export { freePort }

/** Resolves once something accepts connections at the port or socket (or rejects after `ms`). */
export async function waitListening(where: { port: number } | { socket: string }, ms = 10_000, alive: () => string | null = () => null): Promise<void> {
  const t0 = Date.now()
  for (;;) {
    const ok = await new Promise<boolean>((r) => {
      const s = 'port' in where ? connect({ host: '127.0.0.1', port: where.port }) : connect({ path: where.socket })
      s.once('connect', () => {
        s.destroy()
        r(true)
      })
      s.once('error', () => r(false))
    })
    if (ok) return
    const dead = alive()
    if (dead) throw new Error(dead)
    if (Date.now() - t0 > ms) throw new Error(`nothing listens at ${JSON.stringify(where)} after ${ms} ms`)
    await new Promise((r) => setTimeout(r, 20))
  }
}

type Teardown = Pick<ExecutionContext, 'teardown'> | ((fn: () => unknown) => void)

function register(on: Teardown, fn: () => Promise<void>): void {
  if (typeof on === 'function') on(fn)
  else on.teardown(fn)
}

/** A server child process (qemu-nbd, nbdkit) serving one export. */
export interface ServerChild {
  proc: ChildProcess
  url: string
  port?: number
  socket?: string
  exited: Promise<void>
  readonly stderr: string
  kill(signal?: NodeJS.Signals): void
  /** SIGTERM, then SIGKILL after a second; resolves once it exited. */
  stop(): Promise<void>
}

/** A qemu-nbd child serving one file. */
export type QemuNbd = ServerChild

export interface QemuNbdOptions {
  exportName?: string
  /** Serve on this port (default: a free one); or on a Unix socket. */
  port?: number
  socket?: string
  readOnly?: boolean
  /** Extra qemu-nbd arguments. */
  args?: string[]
}

/**
 * Starts `tool` with `argsFor(port)` in the foreground, serving `exportName` on
 * 127.0.0.1 at `o.port` (default: a free one) or on the Unix socket `o.socket`, and
 * waits until it accepts connections. Stopped at teardown.
 */
async function startServerChild(
  on: Teardown,
  tool: string,
  o: { exportName: string; port?: number; socket?: string },
  argsFor: (port: number | undefined) => string[],
): Promise<ServerChild> {
  for (let attempt = 0; ; attempt++) {
    const port = o.socket ? undefined : (o.port ?? (await freePort()))
    const proc = spawn(which(tool) ?? tool, argsFor(port), { stdio: ['ignore', 'ignore', 'pipe'] })
    let stderr = ''
    proc.stderr!.on('data', (d) => (stderr += d))
    let dead = false
    const exited = new Promise<void>((r) => proc.once('exit', () => ((dead = true), r())))
    const c: ServerChild = {
      proc,
      url: o.socket ? `nbd+unix:///${o.exportName}?socket=${o.socket}` : `nbd://127.0.0.1:${port}/${o.exportName}`,
      port,
      socket: o.socket,
      exited,
      get stderr() {
        return stderr
      },
      kill(signal = 'SIGKILL') {
        if (!dead) proc.kill(signal)
      },
      async stop() {
        if (dead) return
        proc.kill('SIGTERM')
        const timer = setTimeout(() => c.kill('SIGKILL'), 1000)
        await exited
        clearTimeout(timer)
      },
    }
    register(on, () => c.stop())
    try {
      await waitListening(o.socket ? { socket: o.socket } : { port: port! }, 10_000, () => (dead ? `${tool} exited: ${stderr}` : null))
      // Something listens there; it must be this child (another server of the test
      // process may have been given the same port between freePort and the bind).
      if (port !== undefined) {
        const deadline = Date.now() + 10_000
        while (!listensOn(proc.pid!, port)) {
          if (dead || Date.now() > deadline) throw new Error(`${tool} is not the one listening on port ${port}: ${stderr}`)
          await new Promise((r) => setTimeout(r, 20))
        }
      }
      return c
    } catch (e) {
      await c.stop()
      // A port taken between freePort and the server's bind: try another.
      if (attempt < 3 && o.port === undefined && !o.socket && /in use/i.test(stderr)) continue
      throw e
    }
  }
}

/**
 * Starts `qemu-nbd` on `file` (raw, persistent, up to 16 clients, cache=writeback) on
 * 127.0.0.1 and waits until it accepts connections. Killed at teardown.
 */
export function startQemuNbd(on: Teardown, file: string, o: QemuNbdOptions = {}): Promise<QemuNbd> {
  const exportName = o.exportName ?? 'remote'
  return startServerChild(on, 'qemu-nbd', { exportName, port: o.port, socket: o.socket }, (port) => {
    const where = o.socket ? ['-k', o.socket] : ['-b', '127.0.0.1', '-p', String(port)]
    return ['-f', 'raw', ...where, '-x', exportName, '--persistent', '--shared=16', '--cache=writeback', ...(o.readOnly ? ['-r'] : []), ...(o.args ?? []), file]
  })
}

/**
 * Starts `nbdkit` in the foreground on 127.0.0.1 (a free port) with `plugin` and its
 * `params` (`key=value`), under `filters` (the first nearest the client, each with its
 * own `key=value` parameters among `params`), and waits until it accepts connections.
 * It serves any export name; the URL names `remote`. Stopped at teardown, and it exits
 * with the test process.
 *
 *   const k = await startNbdkit(t, 'file', [`file=${path}`], ['nozero'])   // no WRITE_ZEROES
 */
export function startNbdkit(on: Teardown, plugin: string, params: string[], filters: string[] = []): Promise<ServerChild> {
  return startServerChild(on, 'nbdkit', { exportName: 'remote' }, (port) => [
    '--foreground',
    '--exit-with-parent',
    '-i',
    '127.0.0.1',
    '-p',
    String(port),
    ...filters.map((f) => `--filter=${f}`),
    plugin,
    ...params,
  ])
}

/** An nbd-server daemon serving one file, tracked by its pid file. */
export interface NbdServerDaemon {
  url: string
  port: number
  pid: number
  stop(): Promise<void>
}

/**
 * Starts Debian's `nbd-server` with a config file written in `dir` (127.0.0.1, a free
 * port, flush/fua/trim on; `generic`: more `[generic]` lines, e.g. its TLS settings). nbd-server forks into the background, so it is tracked
 * by its pid file and stopped with SIGTERM (it takes its per-client children along).
 */
export async function startNbdServer(on: Teardown, dir: string, file: string, exportName = 'remote', generic: string[] = []): Promise<NbdServerDaemon> {
  const port = await freePort()
  const config = join(dir, `nbd-server-${port}.conf`)
  const pidFile = join(dir, `nbd-server-${port}.pid`)
  writeFileSync(
    config,
    ['[generic]', '  listenaddr = 127.0.0.1', `  port = ${port}`, '  allowlist = true', ...generic.map((l) => `  ${l}`), `[${exportName}]`, `  exportname = ${file}`, '  flush = true', '  fua = true', '  trim = true', ''].join('\n'),
  )
  await run('nbd-server', ['-C', config, '-p', pidFile])
  let pid = 0
  const t0 = Date.now()
  while (!pid) {
    try {
      pid = Number(readFileSync(pidFile, 'utf8').trim())
    } catch {
      if (Date.now() - t0 > 10_000) throw new Error('nbd-server wrote no pid file')
      await new Promise((r) => setTimeout(r, 20))
    }
  }
  const d: NbdServerDaemon = {
    url: `nbd://127.0.0.1:${port}/${exportName}`,
    port,
    pid,
    async stop() {
      try {
        process.kill(pid, 'SIGTERM')
      } catch {
        return
      }
      const t1 = Date.now()
      // Gone (or a zombie nobody reaps: its state is Z) counts as stopped.
      while (Date.now() - t1 < 3000) {
        try {
          process.kill(pid, 0)
          const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
          if (/\) Z /.test(stat)) return
        } catch {
          return
        }
        await new Promise((r) => setTimeout(r, 20))
      }
      try {
        process.kill(pid, 'SIGKILL')
      } catch {
        // gone
      }
    },
  }
  register(on, () => d.stop())
  await waitListening({ port })
  return d
}

/** Runs a tool; resolves with stdout, rejects with its status and stderr. */
export function run(tool: string, args: string[], timeoutMs = 60_000): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(which(tool) ?? tool, args, { timeout: timeoutMs, maxBuffer: 16 * 2 ** 20 }, (err, stdout, stderr) => {
      if (err) reject(new Error(`${tool} ${args.join(' ')} failed (${err.code ?? err.signal}): ${stderr || stdout}`))
      else resolve(stdout)
    })
  })
}

/** `qemu-io -f raw -c CMD … URL`; rejects when a command failed or a pattern did not verify. */
export async function qemuIo(url: string, commands: string[]): Promise<string> {
  const out = await run('qemu-io', ['-f', 'raw', ...commands.flatMap((c) => ['-c', c]), url])
  if (/Pattern verification failed|error|failed/i.test(out)) throw new Error(`qemu-io ${commands.join('; ')} on ${url}:\n${out}`)
  return out
}
