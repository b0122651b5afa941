/**
 * Crash test with real SIGKILLs: a writer process (fixtures/bitmap-writer.ts) loops
 * startWrite → endWrite with daemon passes in between; the parent kills it at random
 * moments, then checks on disk that every chunk with a write in flight (reported
 * started and not reported ended) has its bit set, and that a reopen loads it as
 * NEEDED. The writers run one after the other on the same file: each one resyncs
 * what the previous crash left (so bits do get cleared, and the check is not kept
 * true by a bitmap that only fills up).
 */
import test from 'ava'
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process'
import { join } from 'node:path'

import { Bitmap, NEEDED } from '../src'
import { chunkCounter } from '../src/bitmap/testing'
import { diskTempDir, readDisk, removeDir } from './helpers/mdadm'

const dir = diskTempDir('md-bitmap-crash-')
test.after.always(() => removeDir(dir))

const FIXTURE = join(__dirname, 'fixtures', 'bitmap-writer.ts')
const KILLS = 36
const MIN_KILLS = 30
const BUDGET_MS = 50_000

interface Writer {
  child: ChildProcessWithoutNullStreams
  lines: string[]
  stderr: string
  /** Resolves when stdout has ended (everything the child printed has been read). */
  closed: Promise<void>
  exited: Promise<NodeJS.Signals | number | null>
  waitFor(prefix: string, timeoutMs: number): Promise<string>
}

function startWriter(path: string, seed: number): Writer {
  const child = spawn(process.execPath, ['--import', 'tsx', FIXTURE, path, String(seed)], { stdio: ['pipe', 'pipe', 'pipe'] })
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
      for (const w of waiters.splice(0)) {
        if (l.startsWith(w.prefix)) w.resolve(l)
        else waiters.push(w)
      }
    }
  })
  child.stderr.on('data', (d) => (stderr += d))
  const closed = new Promise<void>((r) => child.stdout.on('close', () => r()))
  const exited = new Promise<NodeJS.Signals | number | null>((r) => child.on('exit', (code, sig) => r(sig ?? code)))
  const w: Writer = {
    child,
    lines,
    get stderr() {
      return stderr
    },
    closed,
    exited,
    waitFor(prefix, timeoutMs) {
      const seen = lines.find((l) => l.startsWith(prefix))
      if (seen) return Promise.resolve(seen)
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`writer did not print "${prefix}" within ${timeoutMs} ms; stderr: ${stderr}`)), timeoutMs)
        exited.then((s) => {
          clearTimeout(timer)
          reject(new Error(`writer exited (${s}) before printing "${prefix}"; stderr: ${stderr}`))
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
  }
  return w
}

test('SIGKILL at random moments: every chunk with a write in flight is dirty on disk and NEEDED on reopen', async (t) => {
  const path = join(dir, 'crash.bitmap')
  const CS = 1024
  const CHUNKS = 33000 // two pages of bits
  const created = await Bitmap.create(path, { size: CHUNKS * CS, chunkSize: CS, daemonSleep: 1 })
  await created.close()

  // MD_BITMAP_CRASH_SEED replays a run's choices (the timing is the machine's).
  const seed0 = Number(process.env.MD_BITMAP_CRASH_SEED) || (Date.now() & 0xffff) * 7 + 1
  t.log(`seed ${seed0}`)
  let rnd = seed0
  const rand = () => {
    // LCG in exact 32-bit integer arithmetic (a float product would pass 2^53 and lose bits).
    rnd = (Math.imul(rnd, 1103515245) + 12345) >>> 0
    return rnd / 2 ** 32
  }

  const started = Date.now()
  let kills = 0
  let inFlightChecked = 0
  let killsWithWritesInFlight = 0
  let writesStarted = 0
  let clearedSeen = 0
  let kicked = 0 // hot chunks written by a writer and found clear on disk after its death
  const live = new Set<Writer>()
  try {
    let next = startWriter(path, seed0)
    live.add(next)
    while (kills < KILLS && !(kills >= MIN_KILLS && Date.now() - started > BUDGET_MS)) {
      const w = next
      await w.waitFor('loaded', 20_000)
      w.child.stdin.write('go\n')
      await w.waitFor('ready', 20_000)
      // Load the next writer's modules while this one runs.
      next = startWriter(path, seed0 + kills + 1)
      live.add(next)

      const delay = rand() < 0.2 ? Math.floor(rand() * 5) : 20 + Math.floor(rand() * 250)
      await new Promise((r) => setTimeout(r, delay))
      w.child.kill('SIGKILL')
      const how = await w.exited
      await w.closed
      live.delete(w)
      t.is(how, 'SIGKILL', `the writer was killed, not dead on its own; stderr: ${w.stderr}`)
      kills++

      // What was in flight: started (after startWrite resolved) and not reported ended.
      const open = new Map<string, { offset: number; length: number }>()
      const written = new Set<number>()
      for (const l of w.lines) {
        const f = l.split(' ')
        if (f[0] === 'S') {
          const offset = Number(f[2])
          const length = Number(f[3])
          open.set(f[1], { offset, length })
          writesStarted++
          for (let c = Math.floor(offset / CS); c <= Math.floor((offset + length - 1) / CS); c++) written.add(c)
        } else if (f[0] === 'E') {
          open.delete(f[1])
        }
      }
      // A writer whose bitmap was kicked (a write to it failed) told us so: from then
      // on its startWrites do no I/O, and the promise is kept by STALE on disk instead.
      const kicks = w.lines.filter((l) => l.startsWith('K '))
      if (kicks.length) {
        kicked++
        t.log(`kill ${kills}: the writer's bitmap was kicked: ${kicks[0]}`)
      }
      t.deepEqual(kicks, [], 'no write to the bitmap fails on a healthy disk')
      const mustBeDirty = new Set<number>()
      for (const { offset, length } of open.values()) {
        for (let c = Math.floor(offset / CS); c <= Math.floor((offset + length - 1) / CS); c++) mustBeDirty.add(c)
      }
      if (mustBeDirty.size) killsWithWritesInFlight++

      const disk = readDisk(path)
      const stale = (disk.state & 0x2) !== 0
      const lost = [...mustBeDirty].filter((c) => !disk.bit(c))
      if (!stale && lost.length) {
        t.log(`lost ${lost}; the writer's last lines:\n${w.lines.slice(-40).join('\n')}`)
      }
      if (!stale) t.deepEqual(lost, [], `kill ${kills} after ${delay} ms: chunks with a write in flight are clear on disk`)
      else t.true(kicks.length > 0, `kill ${kills}: STALE on disk, but the writer reported no write error`)
      inFlightChecked += mustBeDirty.size
      for (const c of written) if (!disk.bit(c)) clearedSeen++

      // A reopen loads every one of them as NEEDED.
      const b = await Bitmap.open(path)
      try {
        t.is(b.wasStale, stale)
        for (const c of mustBeDirty) {
          if (!(chunkCounter(b, c * CS) & NEEDED)) t.fail(`kill ${kills}: chunk ${c} not NEEDED on reopen (0x${chunkCounter(b, c * CS).toString(16)})`)
        }
      } finally {
        await b.close()
      }
    }
  } finally {
    for (const w of live) w.child.kill('SIGKILL')
    await Promise.all([...live].map((w) => w.exited))
  }
  const ms = Date.now() - started
  if (kicked) t.log(`${kicked} writers were kicked by a write error (their promise kept by STALE)`)
  t.log(`${kills} kills in ${ms} ms; ${writesStarted} writes started, ${inFlightChecked} in-flight chunks checked on disk over ${killsWithWritesInFlight} kills; ${clearedSeen} written chunks seen cleared`)
  t.true(kills >= MIN_KILLS, `only ${kills} kills`)
  t.true(killsWithWritesInFlight >= kills / 2, 'most kills must catch writes in flight, or the test proves little')
  t.true(clearedSeen > 0, 'bits must also get cleared between kills, or the test proves little')
})
