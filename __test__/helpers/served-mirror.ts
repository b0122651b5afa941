/**
 * A mirror served over NBD for the NBD specs: two member files (the second
 * write-mostly, write-behind 256), a daemon that never runs (bits set by writes stay
 * set), served by serveNbd in the test's process as export `md` on 127.0.0.1 (a free
 * port) or a Unix socket. Mirror and server are closed at the test's teardown.
 *
 *   const { server, mirror, members, settled } = await servedMirror(t, join(dir, 'x'), { size: 16 * MiB })
 *   await settled()   // the write-mostly member has every behind write
 */
import { spawn } from 'node:child_process'
import { mkdirSync } from 'node:fs'
import { join } from 'node:path'
import { Mirror, serveNbd, type NbdServer, type ServeNbdOptions } from '../../src'
import { IDLE, KiB } from './mirror'
import { until } from './wait'

export interface ServedMirrorOptions {
  /** The mirror's size in bytes. */
  size: number
  /** Default 64 KiB. */
  chunkSize?: number
  /** A Unix socket instead of a TCP port. */
  socket?: string
  /** More serveNbd options (tls, …). */
  serve?: Partial<ServeNbdOptions>
}

/** Creates the mirror in the new directory `d` and serves it. */
export async function servedMirror(t: { teardown(fn: () => unknown): void }, d: string, o: ServedMirrorOptions) {
  mkdirSync(d)
  const members = [join(d, 'a.img'), join(d, 'b.img')]
  const bitmap = join(d, 'bitmap')
  const mirror = await Mirror.create({
    bitmap,
    members: [{ path: members[0] }, { path: members[1], writeMostly: true }],
    size: o.size,
    chunkSize: o.chunkSize ?? 64 * KiB,
    writeBehind: 256,
    daemonSleep: IDLE,
  })
  t.teardown(() => mirror.close().catch(() => {}))
  const where = o.socket ? { socket: o.socket } : { port: 0, host: '127.0.0.1' }
  const server: NbdServer = await serveNbd(mirror, { ...where, exportName: 'md', ...o.serve })
  t.teardown(() => server.close())
  /** Waits for the write-mostly member to have every behind write. */
  const settled = () => until(() => mirror.stats().behindInFlight === 0 && mirror.members.every((m) => m.writesInFlight === 0), 20_000, 'behind writes to drain')
  return { d, mirror, server, members, bitmap, settled }
}

/**
 * Runs the built CLI's `md-bitmap serve ARGS` (killed at teardown) and waits for its
 * "serving URL" line: resolves with the URL (undefined if it exited first), the exit
 * status or signal to come, and what it printed so far.
 */
export async function serveCli(t: { teardown(fn: () => unknown): void }, args: string[]) {
  const child = spawn(process.execPath, [join(__dirname, '..', '..', 'bin', 'md-bitmap.js'), 'serve', ...args], { stdio: ['ignore', 'pipe', 'pipe'] })
  t.teardown(() => void child.kill('SIGKILL'))
  const printed = { out: '', err: '' }
  child.stdout.setEncoding('utf8').on('data', (x: string) => (printed.out += x))
  child.stderr.setEncoding('utf8').on('data', (x: string) => (printed.err += x))
  const exited = new Promise<number | string | null>((r) => child.on('exit', (c, s) => r(s ?? c)))
  await until(() => /^serving /m.test(printed.out) || child.exitCode !== null, 20_000, 'md-bitmap serve to listen')
  return { child, exited, printed, url: /^serving (\S+)/m.exec(printed.out)?.[1] }
}
