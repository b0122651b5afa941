/**
 * Crash test with real SIGKILLs: a writer process (fixtures/bitmap-writer.ts) loops
 * startWrite → endWrite with daemon passes in between; the parent kills it at random
 * moments, then checks on disk that every chunk with a write in flight (reported
 * started and not reported ended) has its bit set, and that a reopen loads it as
 * NEEDED. The writers run one after the other on the same file: each one resyncs
 * what the previous crash left (so bits do get cleared, and the check is not kept
 * true by a bitmap that only fills up).
 *
 * Most kills must catch a write in flight, or the test proves little. A line the
 * parent read says only that a write was in flight when it was printed: on a loaded
 * machine the writer may well have ended it by the time the SIGKILL lands. So most
 * late kills tell the writer to hold its writes in flight first (fixtures/
 * bitmap-writer.ts, `hold`/`held`) and kill once it says one is.
 */
import type { ExecutionContext } from 'ava'
import { join } from 'node:path'

import { Bitmap, NEEDED } from '../src'
import { chunkCounter } from '../src/bitmap/testing'
import { Prng } from '../src/cli/demo/prng'
import { killRunning, replaySeed, startCrashChild, type CrashChild } from './helpers/crash-child'
import { readDisk } from './helpers/mdadm'
import { fsCaps, requires } from './helpers/env'
import { CRASH_FS_PARENT, settleWrites, withFs } from './helpers/loopfs'
import { sleep, until } from './helpers/wait'

const FIXTURE = 'bitmap-writer.ts'
const KILLS = 36
const MIN_KILLS = 30
const BUDGET_MS = 50_000

/** Whether the writer's lines so far show a write started (`S`) and not ended (`E`). */
function writesInFlight(lines: string[]): boolean {
  let open = 0
  for (const l of lines) {
    if (l.startsWith('S ')) open++
    else if (l.startsWith('E ')) open--
  }
  return open > 0
}

// The file lives on a filesystem of its own, so that after each kill the writes the
// dead writer left in flight can be waited for (settleWrites) before the file is read
// and the next writer opens it (crash-settle.spec.ts).
const withCrashFs = requires(['root', 'loop', 'fsfreeze', ...fsCaps('ext4')])
withCrashFs('SIGKILL at random moments: every chunk with a write in flight is dirty on disk and NEEDED on reopen', async (t) => {
  await withFs('ext4', 16, (dir) => crashes(t, dir), { parentDir: CRASH_FS_PARENT })
})

async function crashes(t: ExecutionContext, dir: string): Promise<void> {
  const path = join(dir, 'crash.bitmap')
  const CS = 1024
  const CHUNKS = 33000 // two pages of bits
  const created = await Bitmap.create(path, { size: CHUNKS * CS, chunkSize: CS, daemonSleep: 1 })
  await created.close()

  // MD_BITMAP_CRASH_SEED replays a run's choices (the timing is the machine's).
  const seed0 = replaySeed(t, 'MD_BITMAP_CRASH_SEED')
  const prng = new Prng(seed0)
  t.teardown(killRunning)

  const started = Date.now()
  let kills = 0
  let inFlightChecked = 0
  let killsWithWritesInFlight = 0
  let writesStarted = 0
  let clearedSeen = 0
  let kicked = 0 // hot chunks written by a writer and found clear on disk after its death
  let next: CrashChild = startCrashChild(FIXTURE, [path, String(seed0)])
  while (kills < KILLS && !(kills >= MIN_KILLS && Date.now() - started > BUDGET_MS)) {
    const w = next
    await w.waitFor('loaded', 20_000)
    w.send('go')
    await w.waitFor('ready', 20_000)
    // Load the next writer's modules while this one runs.
    next = startCrashChild(FIXTURE, [path, String(seed0 + kills + 1)])

    // Early kills (the writer just opened), late ones, and late ones that hold the
    // writes in flight: most kills must put the promise to the test, on a loaded
    // machine too, where the writer spends most of its time between writes.
    const when = prng.random()
    const delay = when < 0.2 ? prng.below(5) : 20 + prng.below(250)
    await sleep(delay)
    if (when < 0.2) {
      // killed at once
    } else if (when < 0.4) {
      // At the next moment the writer is seen with a write in flight (if one comes
      // within 100 ms). Seen, not known: the line was read after it was printed, and
      // the write may have ended meanwhile.
      await until(() => writesInFlight(w.lines), 100).catch(() => {})
    } else {
      // Known: the writer holds its writes in flight (the daemon goes on) and says so
      // once one is; the kill comes a random moment later.
      w.send('hold')
      await w.waitFor('held', 20_000)
      await sleep(prng.below(20))
    }
    const how = await w.kill()
    // The page writes it submitted through io_uring may still be landing: the crash's state is what they leave.
    settleWrites(dir)
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
  const ms = Date.now() - started
  if (kicked) t.log(`${kicked} writers were kicked by a write error (their promise kept by STALE)`)
  t.log(`${kills} kills in ${ms} ms; ${writesStarted} writes started, ${inFlightChecked} in-flight chunks checked on disk over ${killsWithWritesInFlight} kills; ${clearedSeen} written chunks seen cleared`)
  t.true(kills >= MIN_KILLS, `only ${kills} kills`)
  t.true(killsWithWritesInFlight >= kills / 2, 'most kills must catch writes in flight, or the test proves little')
  t.true(clearedSeen > 0, 'bits must also get cleared between kills, or the test proves little')
}
