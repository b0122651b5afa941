/**
 * Crash consistency of the mirror, with real SIGKILLs (issue 4; DESIGN.md, "The
 * promise"). A writer process (fixtures/mirror-writer.ts) runs random writes through
 * a two-member mirror whose write-mostly member is slowed, with write-behind on; the
 * parent kills it at a random moment and then checks, on the files as they are on disk:
 *
 * - every chunk where the members differ has its bit set on disk (the invariant);
 * - after Mirror.open + resync: the resync copied only chunks dirty at the crash, the
 *   members are byte-identical, and every sector holds the last acknowledged write
 *   covering it, or the one unacknowledged write in flight over it (an older
 *   acknowledged write showing through is a lost write).
 *
 * "As they are on disk" means once every write the dead writer had submitted landed:
 * writes in flight through io_uring are not waited for by a process's death, so after
 * each kill the spec waits for them (settleWrites: a freeze and thaw of the files' own
 * loop-mounted filesystem) before it reads anything (crash-settle.spec.ts shows why).
 *
 * The files carry over from crash to crash, and every FRESH_EVERY iterations a new
 * mirror starts with another chunk size and write-behind limit. About one crash in
 * UNREPAIRED is left for the next writer, which resyncs it while writing (and may be
 * killed mid-resync); then the sectors are checked on the fast member, the resync
 * source. The parent keeps a model of which write each sector holds; after a good
 * iteration the model is what the source holds.
 *
 *   MD_BITMAP_MIRROR_CRASH_ITERATIONS=1000   iterations (default 50; `npm run soak`)
 *   MD_BITMAP_MIRROR_CRASH_SEED=n            replays a run's choices (the timing is the machine's)
 */
import type { ExecutionContext } from 'ava'
import { mkdirSync } from 'node:fs'
import { join } from 'node:path'

import { Mirror } from '../src'
import { Prng } from '../src/cli/demo/prng'
import { SECTOR } from '../src/cli/demo/tagged-data'
import { killRunning, replaySeed, startCrashChild, type CrashChild } from './helpers/crash-child'
import { changedBlocks, readDirect } from './helpers/io'
import { readDisk } from './helpers/mdadm'
import { checkSectors, readWriteLog } from './helpers/tagged-writes'
import { fsCaps, requires } from './helpers/env'
import { CRASH_FS_PARENT, settleWrites, withFs } from './helpers/loopfs'
import { removeDir } from './helpers/tmp'

const FIXTURE = 'mirror-writer.ts'
const ITERATIONS = Number(process.env.MD_BITMAP_MIRROR_CRASH_ITERATIONS) || 50
const FRESH_EVERY = 10
const SIZE = 16 * 2 ** 20
const SECTORS = SIZE / SECTOR
const CHUNK_SIZES = [16 * 1024, 64 * 1024, 256 * 1024]
// 4: many writes fall back to synchronous at the limit; 256: nearly all go behind.
const WRITE_BEHIND = [4, 256]
const UNREPAIRED = 4
/** Write ids: iteration × ID_STRIDE + n, so ids are unique over the whole run. */
const ID_STRIDE = 2 ** 20

const startWriter = (bitmap: string, seed: number, idBase: number): CrashChild => startCrashChild(FIXTURE, [bitmap, String(seed), String(idBase)])

interface Totals {
  writes: number
  killsWithUnacked: number
  /** Iterations where the members differed at the crash (a behind write was caught lagging). */
  lagging: number
  laggingChunks: number
  /** Chunks written by a writer and found clear on disk at its death. */
  clearedSeen: number
  behindWrites: number
  /** Writes over a range an earlier acknowledged write of the same writer had covered. */
  overwrites: number
  chunksCopied: number
  dirtyAtCrash: number
  /** Crashes left for the next writer to resync, and writers killed during that resync. */
  unrepaired: number
  killedInResync: number
}

// The files live on a filesystem of their own, so that after each kill the writes the
// dead writer left in flight can be waited for (settleWrites) before the files are read.
const withCrashFs = requires(['root', 'loop', 'fsfreeze', ...fsCaps('ext4')])
withCrashFs(`SIGKILL during write-behind: resync restores identical members holding every acknowledged write (${ITERATIONS} iterations)`, async (t) => {
  // Scaled with the iterations (a soak runs for half an hour); generous for a loaded machine.
  t.timeout(Math.max(180_000, ITERATIONS * 6_000))
  await withFs('ext4', 160, (dir) => crashes(t, dir), { parentDir: CRASH_FS_PARENT })
})

async function crashes(t: ExecutionContext, dir: string): Promise<void> {
  const seed0 = replaySeed(t, 'MD_BITMAP_MIRROR_CRASH_SEED')
  const prng = new Prng(seed0)
  const rand = () => prng.random()
  t.teardown(killRunning)

  const totals: Totals = { writes: 0, killsWithUnacked: 0, lagging: 0, laggingChunks: 0, clearedSeen: 0, behindWrites: 0, overwrites: 0, chunksCopied: 0, dirtyAtCrash: 0, unrepaired: 0, killedInResync: 0 }
  const started = Date.now()
  // Which write each sector holds on disk, as of the last good iteration (0 = zeros).
  const model = new Uint32Array(SECTORS)
  let epochDir = ''
  let bitmap = ''
  let members: string[] = []
  let chunkSize = 0
  let done = 0
  let next: CrashChild | undefined
  for (let it = 1; it <= ITERATIONS; it++) {
    if ((it - 1) % FRESH_EVERY === 0) {
      // A new mirror: the writer pre-started for this iteration opens only after 'go'.
      removeDir(epochDir)
      epochDir = join(dir, `epoch-${it}`)
      mkdirSync(epochDir)
      bitmap = join(epochDir, 'mirror.bitmap')
      members = [join(epochDir, 'fast.img'), join(epochDir, 'slow.img')]
      chunkSize = prng.pick(CHUNK_SIZES)
      const writeBehind = prng.pick(WRITE_BEHIND)
      const m = await Mirror.create({
        bitmap,
        members: [{ path: members[0] }, { path: members[1], writeMostly: true }],
        size: SIZE,
        chunkSize,
        writeBehind,
        daemonSleep: 1,
      })
      await m.close()
      model.fill(0)
      t.log(`iteration ${it}: new mirror, chunk ${chunkSize / 1024} KiB, writeBehind ${writeBehind}`)
    }
    const w = next ?? startWriter(bitmap, seed0 + it, it * ID_STRIDE)
    await w.waitFor('loaded', 20_000)
    w.send('go')
    await w.waitFor('ready', 20_000)
    // Load the next writer's modules while this one runs (bitmap path known only then for a new epoch).
    next = it < ITERATIONS && it % FRESH_EVERY !== 0 ? startWriter(bitmap, seed0 + it + 1, (it + 1) * ID_STRIDE) : undefined

    const delay = rand() < 0.15 ? prng.below(10) : 30 + prng.below(500)
    await new Promise((r) => setTimeout(r, delay))
    const how = await w.kill()
    // The writes it submitted through io_uring may still be landing: the crash's state is what they leave.
    settleWrites(dir)
    if (how !== 'SIGKILL') {
      t.fail(`iteration ${it}: the writer died on its own (${how}), seed ${seed0}; stderr: ${w.stderr}; last lines:\n${w.lines.slice(-10).join('\n')}`)
      break
    }
    // The last crash of an epoch is always repaired here, so every epoch ends with identical members checked.
    const repair = it % FRESH_EVERY === 0 || it === ITERATIONS || rand() >= 1 / UNREPAIRED
    const problems = await checkCrash(w.lines, bitmap, members, chunkSize, it * ID_STRIDE, model, totals, repair).catch((e: Error) => [`the check threw: ${e?.stack ?? e}`])
    if (problems.length) {
      t.log(`writer's last lines:\n${w.lines.slice(-30).join('\n')}`)
      t.fail(`iteration ${it} (killed ${delay} ms after ready; replay with MD_BITMAP_MIRROR_CRASH_SEED=${seed0}):\n${problems.slice(0, 20).join('\n')}`)
      break
    }
    done++
  }
  const ms = Date.now() - started
  t.log(
    `${done} iterations in ${ms} ms: ${totals.writes} writes, ${totals.behindWrites} behind, ${totals.overwrites} over earlier acknowledged ones; ` +
      `${totals.killsWithUnacked} kills with unacknowledged writes; ${totals.lagging} with members differing (${totals.laggingChunks} chunks); ` +
      `${totals.dirtyAtCrash} chunks dirty at crashes, ${totals.chunksCopied} copied; ${totals.clearedSeen} written chunks seen cleared; ` +
      `${totals.unrepaired} crashes left to the next writer's resync, ${totals.killedInResync} writers killed in it`,
  )
  if (done < ITERATIONS) return
  // The run must have exercised what it claims to check.
  t.true(totals.killsWithUnacked >= ITERATIONS / 2, 'most kills must catch writes in flight')
  t.true(totals.lagging > 0, 'some kill must catch the slow member behind (members differing), or the invariant was never under test')
  t.true(totals.behindWrites > 0, 'writes must go behind')
  t.true(totals.overwrites > 0, 'writes must overlap earlier acknowledged ones')
  t.true(totals.clearedSeen > 0, 'bits must get cleared during the runs, or a bitmap that only fills up would pass')
}

/** Checks one crash; returns what is wrong (empty: good) and updates `model` to the disk. */
async function checkCrash(
  lines: string[],
  bitmap: string,
  members: string[],
  chunkSize: number,
  idBase: number,
  model: Uint32Array,
  totals: Totals,
  repair: boolean,
): Promise<string[]> {
  const problems: string[] = []
  const chunks = Math.ceil(SIZE / chunkSize)
  const log = readWriteLog(lines)
  const { order } = log
  for (const l of log.rejected) problems.push(`a write was rejected: ${l}`)
  // The write-behind counter the writer printed last.
  let behind = 0
  for (const l of lines) if (l.startsWith('W ')) behind = Number(l.split(' ')[1])
  totals.writes += order.length
  totals.behindWrites += behind
  if (order.some((w) => !w.acked)) totals.killsWithUnacked++

  // The bitmap and the members as the crash left them, before anything reopens them.
  const disk = readDisk(bitmap)
  if (disk.state & 0x2) problems.push('the bitmap is STALE on disk: a bitmap write failed in the writer')
  const dirty = new Set(disk.dirtyList(chunks))
  totals.dirtyAtCrash += dirty.size
  const before = members.map((p) => readDirect(p, 0, SIZE))
  const differing = changedBlocks(before[0], before[1], chunkSize).map((o) => o / chunkSize)
  if (differing.length) {
    totals.lagging++
    totals.laggingChunks += differing.length
  }
  const clean = differing.filter((c) => !dirty.has(c))
  if (clean.length) problems.push(`the members differ in chunks whose bit is clear on disk: ${clean.slice(0, 20).join(', ')} (dirty on disk: ${[...dirty].slice(0, 40).join(', ')})`)
  const written = new Set<number>()
  for (const w of order) for (let c = Math.floor(w.offset / chunkSize); c <= Math.floor((w.offset + w.length - 1) / chunkSize); c++) written.add(c)
  for (const c of written) if (!dirty.has(c)) totals.clearedSeen++

  if (lines.includes('R start') && !lines.some((l) => l.startsWith('R done'))) totals.killedInResync++
  if (!repair) {
    // Left for the next writer: what the resync source holds is what a resync will spread.
    totals.unrepaired++
    totals.overwrites += checkSectors(problems, before[0], log, chunkSize, idBase, model)
    return problems
  }

  const mirror = await Mirror.open({ bitmap })
  try {
    const states = mirror.members.map((m) => m.state)
    if (states.some((s) => s !== 'in-sync')) problems.push(`members after reopen: ${states.join(', ')}`)
    const report = await mirror.resync()
    totals.chunksCopied += report.chunksCopied
    const extra = report.chunks.filter((c) => !dirty.has(c))
    if (extra.length) problems.push(`resync copied chunks that were clear on disk at the crash: ${extra.slice(0, 20).join(', ')}`)
  } finally {
    await mirror.close()
  }
  // A complete resync and a clean close leave nothing dirty: the next crash starts from a clean bitmap.
  const left = readDisk(bitmap).dirtyList(chunks)
  if (left.length) problems.push(`bits still set on disk after the resync and a clean close: ${left.slice(0, 20).join(', ')}`)

  const after = members.map((p) => readDirect(p, 0, SIZE))
  const still = changedBlocks(after[0], after[1], chunkSize).map((o) => o / chunkSize)
  if (still.length) problems.push(`the members differ after resync in chunks ${still.slice(0, 20).join(', ')}`)

  totals.overwrites += checkSectors(problems, after[0], log, chunkSize, idBase, model)
  return problems
}
