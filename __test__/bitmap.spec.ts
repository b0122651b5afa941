/**
 * The Bitmap on real files (a temporary directory on a disk filesystem): the promise
 * (a bit is on disk while its chunk may differ), group commit, two-pass clearing,
 * sync calls, staleness, the daemon timer, errors, write-behind counts, COUNTER_MAX.
 *
 * Every on-disk check reads the file with O_DIRECT (helpers/mdadm.ts readDisk), never
 * through the library.
 */
import test, { type ExecutionContext } from 'ava'
import fc from 'fast-check'
import { spawn } from 'node:child_process'
import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'

import { Bitmap, COUNTER_MAX, MdBitmapError, NEEDED, RESYNC } from '../src'
import { chunkCounter, daemonPass } from '../src/bitmap/testing'
import { inCI, missing } from './helpers/env'
import { examineBitmap, readDisk } from './helpers/mdadm'
import { diskTempDir, removeDir } from './helpers/tmp'

const dir = diskTempDir('md-bitmap-spec-')
test.after.always(() => removeDir(dir))

let fileNo = 0
function newPath(name = 'b'): string {
  return join(dir, `${name}-${process.pid}-${fileNo++}.bitmap`)
}

const KiB = 1024
const IDLE = 86400 // daemonSleep: the timer never fires during a test

/**
 * Whether mdadm can judge too. Without it the extra check is skipped with a log line
 * outside CI, and fails in CI (where nothing may skip).
 */
function withMdadm(t: ExecutionContext): boolean {
  const why = missing('mdadm')
  if (why === null) return true
  if (inCI) t.fail(`mdadm is required in CI: ${why}`)
  else t.log(`mdadm check skipped: ${why}`)
  return false
}

async function code(p: Promise<unknown> | (() => unknown)): Promise<string> {
  try {
    await (typeof p === 'function' ? p() : p)
  } catch (e) {
    if (!(e instanceof MdBitmapError)) throw e
    return e.code
  }
  return 'no error'
}

/** Whether a promise has settled, after letting every queued callback run. */
async function settledYet(p: Promise<unknown>): Promise<boolean> {
  let done = false
  p.then(
    () => (done = true),
    () => (done = true),
  )
  for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r))
  return done
}

// ---------------------------------------------------------------------------------
// The promise, over random command sequences

/**
 * Geometry: 1 KiB chunks and 30730 chunks, so the bits span two pages (page 0 holds
 * chunks 0..30719 after the 256-byte superblock). Commands pick among chunks around
 * the page boundary, the ends and a shared byte; ranges may start and end inside a
 * chunk.
 */
const CS = 1024
const NCHUNKS = 30730
const SIZE = NCHUNKS * CS
const HOT = [0, 1, 2, 7, 8, 30718, 30719, 30720, 30721, NCHUNKS - 2, NCHUNKS - 1]

type Cmd =
  | { op: 'start'; c: number; span: number; sub: number; endSub: number; wait: boolean; behind: boolean }
  | { op: 'settle' }
  | { op: 'end'; pick: number; success: boolean }
  | { op: 'daemon'; wait: boolean }
  | { op: 'startSync'; c: number }
  | { op: 'endSync'; c: number; aborted: boolean }
  | { op: 'closeSync' }
  | { op: 'condEndSync'; c: number }
  | { op: 'degraded'; on: boolean }

const hot = fc.constantFrom(...HOT)
const command: fc.Arbitrary<Cmd> = fc.oneof(
  {
    weight: 6,
    arbitrary: fc.record({
      op: fc.constant('start' as const),
      c: hot,
      span: fc.integer({ min: 1, max: 3 }),
      sub: fc.integer({ min: 0, max: 1 }),
      endSub: fc.integer({ min: 0, max: 1 }),
      wait: fc.boolean(),
      behind: fc.boolean(),
    }),
  },
  { weight: 2, arbitrary: fc.record({ op: fc.constant('settle' as const) }) },
  { weight: 5, arbitrary: fc.record({ op: fc.constant('end' as const), pick: fc.nat(), success: fc.constantFrom(true, true, true, false) }) },
  { weight: 5, arbitrary: fc.record({ op: fc.constant('daemon' as const), wait: fc.constantFrom(true, true, false) }) },
  { weight: 2, arbitrary: fc.record({ op: fc.constant('startSync' as const), c: hot }) },
  { weight: 2, arbitrary: fc.record({ op: fc.constant('endSync' as const), c: hot, aborted: fc.boolean() }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('closeSync' as const) }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('condEndSync' as const), c: hot }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('degraded' as const), on: fc.boolean() }) },
)

interface Write {
  offset: number
  length: number
  first: number
  last: number
  behind: boolean
}

async function runPromise(cmds: Cmd[]): Promise<void> {
  const path = newPath('prop')
  const bitmap = await Bitmap.create(path, { size: SIZE, chunkSize: CS, daemonSleep: IDLE, writeBehind: 100 })
  const pending = new Set<Promise<unknown>>()
  const resolved: Write[] = [] // startWrite resolved, endWrite not yet called
  const log: string[] = []
  const touched = new Set<number>(HOT)
  // An independent model of what the counters must say: writers per chunk (counted at
  // the call of startWrite, resolved or not), and the NEEDED / RESYNC flags.
  const writers = new Map<number, number>()
  const needed = new Set<number>()
  const resync = new Set<number>()
  let degraded = false
  const fail = (where: string, what: string) => {
    const kicked = bitmap.error ? `\n(the bitmap was kicked: ${bitmap.error.code} ${bitmap.error.message})` : ''
    throw new Error(`after ${where}: ${what}${kicked}\n${log.join('\n')}`)
  }
  const check = (where: string) => {
    const disk = readDisk(path)
    const inFlight = new Set<number>()
    for (const w of resolved) for (let c = w.first; c <= w.last; c++) inFlight.add(c)
    const mem = bitmap.dirtyChunks()
    for (const c of touched) {
      const v = chunkCounter(bitmap, c * CS)
      const flags = (needed.has(c) ? NEEDED : 0) | (resync.has(c) ? RESYNC : 0)
      if ((v & (NEEDED | RESYNC)) !== flags) fail(where, `chunk ${c} counter 0x${v.toString(16)}, the model's flags 0x${flags.toString(16)}`)
      const n = writers.get(c) ?? 0
      const count = v & COUNTER_MAX
      if (n > 0 ? count !== 2 + n : count > 2) fail(where, `chunk ${c} counts ${count} with ${n} writers`)
      if ((n > 0 || flags) && !disk.bit(c) && !mem.some((r) => r.offset <= c * CS && c * CS < r.offset + r.length)) {
        fail(where, `chunk ${c} (counter 0x${v.toString(16)}) is clear in memory while in use`)
      }
      const why = inFlight.has(c) ? 'a write is in flight' : flags & NEEDED ? 'it is NEEDED' : flags & RESYNC ? 'it is in RESYNC' : null
      if (why && !disk.bit(c)) fail(where, `chunk ${c} (counter 0x${v.toString(16)}) is clear on disk while ${why}`)
    }
  }
  const settle = async () => {
    while (pending.size) await Promise.all([...pending])
  }
  try {
    for (const k of cmds) {
      log.push(JSON.stringify(k))
      switch (k.op) {
        case 'start': {
          const last = Math.min(k.c + k.span - 1, NCHUNKS - 1)
          // From sector `sub` of the first chunk to sector `endSub` of the last (inclusive).
          const offset = k.c * CS + k.sub * 512
          const end = Math.max(last * CS + (k.endSub + 1) * 512, offset + 512)
          const w: Write = { offset, length: end - offset, first: k.c, last, behind: k.behind }
          for (let c = k.c; c <= last; c++) {
            touched.add(c)
            writers.set(c, (writers.get(c) ?? 0) + 1)
          }
          const p = bitmap.startWrite(w.offset, w.length, w.behind).then(() => {
            resolved.push(w)
          })
          pending.add(p)
          p.finally(() => pending.delete(p)).catch(() => {})
          if (k.wait) await p
          break
        }
        case 'settle':
          await settle()
          break
        case 'end': {
          if (!resolved.length) continue
          const [w] = resolved.splice(k.pick % resolved.length, 1)
          bitmap.endWrite(w.offset, w.length, k.success, w.behind)
          for (let c = w.first; c <= w.last; c++) {
            writers.set(c, writers.get(c)! - 1)
            if (!k.success || degraded) needed.add(c)
          }
          break
        }
        case 'daemon': {
          const p = daemonPass(bitmap)
          if (k.wait) await p
          else {
            pending.add(p)
            p.finally(() => pending.delete(p)).catch(() => {})
          }
          break
        }
        case 'startSync': {
          const want = needed.has(k.c) || resync.has(k.c)
          const r = bitmap.startSync(k.c * CS)
          if (r !== want) fail(log[log.length - 1], `startSync(${k.c}) = ${r}, the model says ${want}`)
          if (needed.has(k.c) && !degraded) {
            needed.delete(k.c)
            resync.add(k.c)
          }
          break
        }
        case 'endSync':
          bitmap.endSync(k.c * CS, k.aborted)
          if (resync.delete(k.c) && k.aborted) needed.add(k.c)
          break
        case 'closeSync':
          bitmap.closeSync()
          resync.clear()
          break
        case 'condEndSync':
          bitmap.condEndSync(k.c * CS)
          for (const c of [...resync]) if (c < k.c) resync.delete(c)
          break
        case 'degraded':
          bitmap.degraded = k.on
          degraded = k.on
          break
      }
      check(log[log.length - 1])
    }
    // Wind down: end everything, resync what is NEEDED, and every bit must then clear,
    // on disk too (so the invariant above was not kept by never clearing anything).
    await settle()
    check('settle')
    for (const w of resolved.splice(0)) bitmap.endWrite(w.offset, w.length, true, w.behind)
    bitmap.degraded = false
    degraded = false
    // A chunk in RESYNC whose write ended NEEDED (degraded or failed) needs a second
    // round: the first endSync leaves NEEDED, as in md.
    for (const c of touched) {
      for (let round = 0; round < 2 && bitmap.startSync(c * CS); round++) bitmap.endSync(c * CS, false)
    }
    bitmap.closeSync()
    await bitmap.settle()
    const disk = readDisk(path)
    const left = disk.dirtyList(NCHUNKS)
    if (left.length) throw new Error(`after the wind-down chunks ${left} are still dirty on disk\n${log.join('\n')}`)
    if (bitmap.stats().dirty !== 0) throw new Error(`after the wind-down stats().dirty = ${bitmap.stats().dirty}`)
    if (bitmap.behindWrites !== 0) throw new Error(`behindWrites = ${bitmap.behindWrites} after every write ended`)
    for (const c of touched) if (chunkCounter(bitmap, c * CS) !== 0) throw new Error(`chunk ${c} counter 0x${chunkCounter(bitmap, c * CS).toString(16)} after the wind-down`)
  } finally {
    await settle().catch(() => {})
    await bitmap.close().catch(() => {})
  }
}

test('the promise: no bit is clear on disk while its chunk has a write in flight, is NEEDED or in RESYNC', async (t) => {
  const started = Date.now()
  let commands = 0
  await fc.assert(
    fc.asyncProperty(fc.array(command, { minLength: 1, maxLength: 30, size: 'max' }), async (cmds) => {
      commands += cmds.length
      await runPromise(cmds)
    }),
    { numRuns: 100 },
  )
  t.log(`${commands} commands in ${Date.now() - started} ms, disk checked after each`)
  t.pass()
})

// ---------------------------------------------------------------------------------
// Group commit

test('stats() reports the I/O engine of the bitmap\'s page store, why, and its reaper', async (t) => {
  const path = newPath()
  const b = await Bitmap.create(path, { size: 64 * KiB * 64, chunkSize: 64 * KiB, daemonSleep: IDLE })
  try {
    const st = b.stats()
    const forced = process.env.MD_BITMAP_IO_ENGINE
    if (forced) {
      t.is(st.engine as string, forced)
      t.regex(st.engineReason!, /forced by MD_BITMAP_IO_ENGINE/)
    } else {
      t.true(['uring', 'aio', 'threads'].includes(st.engine), st.engine)
      t.true(st.engine === 'uring' || typeof st.engineReason === 'string', 'a fallback says why')
    }
    t.is(st.reaper, process.env.MD_BITMAP_IO_REAPER === 'thread' ? 'thread' : 'loop')
  } finally {
    await b.close()
  }
})

test('group commit: concurrent startWrites into clean chunks of one page share one page write', async (t) => {
  const path = newPath()
  const b = await Bitmap.create(path, { size: 64 * KiB * 4096, chunkSize: 64 * KiB, daemonSleep: IDLE })
  try {
    const before = b.stats().pagesWritten
    const chunks = [0, 1, 5, 9, 100, 1000, 4095]
    await Promise.all(chunks.map((c) => b.startWrite(c * 64 * KiB, 4096)))
    t.is(b.stats().pagesWritten - before, 1, 'one page write for seven clean chunks of one page')
    t.deepEqual(readDisk(path).dirtyList(4096), chunks)

    // Bits already set: no I/O at all.
    const mid = b.stats().pagesWritten
    await Promise.all(chunks.map((c) => b.startWrite(c * 64 * KiB + 512, 512)))
    await b.startWrite(0, 64 * KiB)
    t.is(b.stats().pagesWritten, mid, 'a startWrite whose bits are set writes nothing')

    // Idle but still set (2, then 1 after a pass): still no I/O.
    b.endWrite(0, 64 * KiB)
    b.endWrite(0, 4096)
    b.endWrite(512, 512)
    t.is(chunkCounter(b, 0), 2)
    await daemonPass(b)
    t.is(chunkCounter(b, 0), 1)
    const mid2 = b.stats().pagesWritten
    await b.startWrite(0, 512)
    t.is(b.stats().pagesWritten, mid2, 'a chunk at 1 still has its bit on disk')
    t.is(chunkCounter(b, 0), 3)
  } finally {
    await b.close()
  }
})

test('group commit: clean chunks on two pages in one tick → one write per page', async (t) => {
  const path = newPath()
  const chunks = 70000 // three pages of bits
  const b = await Bitmap.create(path, { size: chunks * 512, chunkSize: 512, daemonSleep: IDLE })
  try {
    const before = b.stats().pagesWritten
    const set = [3, 30719, 30720, 40000, 63486]
    await Promise.all(set.map((c) => b.startWrite(c * 512, 512)))
    t.is(b.stats().pagesWritten - before, 2, 'pages 0 and 1, once each')
    t.deepEqual(readDisk(path).dirtyList(chunks), set)
    // A range across the page boundary sets bits in both pages.
    const before2 = b.stats().pagesWritten
    await b.startWrite(63487 * 512, 1024)
    t.is(b.stats().pagesWritten - before2, 2)
    t.true(readDisk(path).bit(63487) && readDisk(path).bit(63488))
  } finally {
    await b.close()
  }
})

// ---------------------------------------------------------------------------------
// Two-pass clearing

test('two-pass clearing: set after one pass, cleared in memory and on disk after the second', async (t) => {
  const path = newPath()
  const b = await Bitmap.create(path, { size: 16 * 4096 - 1024, chunkSize: 4096, daemonSleep: IDLE })
  try {
    const last = 15 // partial last chunk
    await b.startWrite(last * 4096, 3072)
    await b.startWrite(4096, 8192) // chunks 1, 2
    t.deepEqual(readDisk(path).dirtyList(16), [1, 2, last])
    b.endWrite(last * 4096, 3072)
    b.endWrite(4096, 8192)
    t.is(chunkCounter(b, 4096), 2)
    t.is(chunkCounter(b, last * 4096), 2)

    await daemonPass(b)
    t.is(chunkCounter(b, 4096), 1)
    t.deepEqual(readDisk(path).dirtyList(16), [1, 2, last], 'one pass: still set on disk')
    t.deepEqual(b.dirtyChunks(), [{ offset: 4096, length: 8192 }, { offset: last * 4096, length: 3072 }], 'and in memory')

    const w = b.stats().pagesWritten
    await daemonPass(b)
    t.is(chunkCounter(b, 4096), 0)
    t.deepEqual(readDisk(path).dirtyList(16), [], 'two passes: cleared on disk')
    t.deepEqual(b.dirtyChunks(), [])
    t.is(b.stats().dirty, 0)
    t.true(b.stats().pagesWritten > w)

    // Nothing left: a pass changes nothing and writes nothing.
    const w2 = b.stats().pagesWritten
    t.is(await daemonPass(b), 0)
    t.is(b.stats().pagesWritten, w2)
  } finally {
    await b.close()
  }
})

test('two-pass clearing: a write in between restarts the count', async (t) => {
  const path = newPath()
  const b = await Bitmap.create(path, { size: 8 * 4096, chunkSize: 4096, daemonSleep: IDLE })
  try {
    await b.startWrite(0, 4096)
    b.endWrite(0, 4096)
    await daemonPass(b) // 2 → 1
    await b.startWrite(0, 4096) // 1 → 3
    b.endWrite(0, 4096) // 2
    await daemonPass(b) // 1
    t.true(readDisk(path).bit(0), 'the second write took it back to 2: one pass is not enough')
    t.is(chunkCounter(b, 0), 1)
    await daemonPass(b)
    t.false(readDisk(path).bit(0))
  } finally {
    await b.close()
  }
})

test('two-pass clearing: a chunk with a write in flight is never cleared', async (t) => {
  const path = newPath()
  const b = await Bitmap.create(path, { size: 8 * 4096, chunkSize: 4096, daemonSleep: IDLE })
  try {
    await b.startWrite(0, 4096)
    await b.startWrite(0, 4096)
    b.endWrite(0, 4096)
    for (let i = 0; i < 4; i++) await daemonPass(b)
    t.is(chunkCounter(b, 0), 3)
    t.true(readDisk(path).bit(0))
    b.endWrite(0, 4096)
    await daemonPass(b)
    await daemonPass(b)
    t.false(readDisk(path).bit(0))
  } finally {
    await b.close()
  }
})

test('two-pass clearing: never while degraded', async (t) => {
  const path = newPath()
  const b = await Bitmap.create(path, { size: 8 * 4096, chunkSize: 4096, daemonSleep: IDLE })
  try {
    // Chunk 0 idle at 2 before the mirror degrades; chunk 1 written while degraded.
    await b.startWrite(0, 4096)
    b.endWrite(0, 4096)
    b.degraded = true
    t.true(b.degraded)
    await b.startWrite(4096, 4096)
    b.endWrite(4096, 4096, true)
    t.is(chunkCounter(b, 4096), 2 | NEEDED, 'a write that ends while degraded is NEEDED')
    for (let i = 0; i < 4; i++) await daemonPass(b)
    t.deepEqual(readDisk(path).dirtyList(8), [0, 1], 'nothing cleared while degraded')
    t.is(chunkCounter(b, 0), 1, 'it may decay to 1 but not clear')
    await b.settle()
    t.deepEqual(readDisk(path).dirtyList(8), [0, 1], 'flush clears nothing while degraded')

    b.degraded = false
    await daemonPass(b)
    t.deepEqual(readDisk(path).dirtyList(8), [1], 'back to normal: chunk 0 clears, the NEEDED one stays')
    t.is(chunkCounter(b, 4096), 2 | NEEDED)
  } finally {
    await b.close()
  }
})

test('two-pass clearing: never while NEEDED (a failed write)', async (t) => {
  const path = newPath()
  const b = await Bitmap.create(path, { size: 8 * 4096, chunkSize: 4096, daemonSleep: IDLE })
  try {
    await b.startWrite(8192, 4096)
    b.endWrite(8192, 4096, false)
    t.is(chunkCounter(b, 8192), 0x8002)
    t.true(b.chunkNeedsResync(8192))
    for (let i = 0; i < 4; i++) await daemonPass(b)
    await b.settle()
    t.true(readDisk(path).bit(2))
    t.is(chunkCounter(b, 8192), 0x8002)
  } finally {
    await b.close()
  }
  t.true(readDisk(path).bit(2), 'close keeps it too')
})

test('a chunk loaded from disk is 2|NEEDED (0x8002) until startSync/endSync, then clears in two passes', async (t) => {
  const path = newPath()
  const a = await Bitmap.create(path, { size: 8 * 4096, chunkSize: 4096, daemonSleep: IDLE })
  await a.startWrite(3 * 4096, 8192) // chunks 3, 4: in flight at close
  await a.close()
  t.deepEqual(readDisk(path).dirtyList(8), [3, 4], 'a write in flight at close keeps its bits')

  const b = await Bitmap.open(path)
  try {
    t.false(b.wasStale)
    t.is(chunkCounter(b, 3 * 4096), 0x8002)
    t.is(chunkCounter(b, 4 * 4096), 0x8002)
    t.is(chunkCounter(b, 0), 0)
    for (let i = 0; i < 4; i++) await daemonPass(b)
    t.deepEqual(readDisk(path).dirtyList(8), [3, 4], 'NEEDED: the daemon leaves them')

    t.true(b.startSync(3 * 4096))
    t.is(chunkCounter(b, 3 * 4096), 2 | RESYNC)
    for (let i = 0; i < 3; i++) await daemonPass(b)
    t.true(readDisk(path).bit(3), 'in RESYNC: not cleared')
    b.endSync(3 * 4096, false)
    t.is(chunkCounter(b, 3 * 4096), 2)
    await daemonPass(b)
    t.true(readDisk(path).bit(3), 'one pass after the sync: still set')
    await daemonPass(b)
    t.deepEqual(readDisk(path).dirtyList(8), [4], 'two passes: chunk 3 clear, chunk 4 (never synced) still set')
  } finally {
    await b.close()
  }
})

// ---------------------------------------------------------------------------------
// Sync calls

test('sync calls: startSync, endSync(aborted), closeSync, condEndSync, chunkNeedsResync', async (t) => {
  const path = newPath()
  const CH = 4096
  const a = await Bitmap.create(path, { size: 10 * CH, chunkSize: CH, daemonSleep: IDLE })
  for (let c = 0; c < 8; c++) await a.startWrite(c * CH, CH)
  await a.close() // chunks 0..7 stay set: NEEDED on the next open
  const b = await Bitmap.open(path)
  try {
    t.false(b.startSync(9 * CH), 'a clean chunk needs no copying')
    t.is(chunkCounter(b, 9 * CH), 0)
    t.false(b.chunkNeedsResync(9 * CH))

    t.true(b.chunkNeedsResync(0))
    t.true(b.startSync(1024), 'any offset inside the chunk')
    t.is(chunkCounter(b, 0), 2 | RESYNC)
    t.true(b.startSync(0), 'a chunk in resync still needs copying')
    t.is(chunkCounter(b, 0), 2 | RESYNC)
    b.endSync(0, true)
    t.is(chunkCounter(b, 0), 2 | NEEDED, 'aborted → NEEDED again')
    t.true(b.chunkNeedsResync(0))

    // Degraded: answers true, keeps NEEDED.
    b.degraded = true
    t.true(b.startSync(0))
    t.is(chunkCounter(b, 0), 2 | NEEDED)
    b.degraded = false

    // closeSync ends every resync in progress, and only those.
    for (const c of [0, 1, 2]) t.true(b.startSync(c * CH))
    b.closeSync()
    for (const c of [0, 1, 2]) t.is(chunkCounter(b, c * CH), 2, `chunk ${c} completed by closeSync`)
    t.is(chunkCounter(b, 3 * CH), 2 | NEEDED, 'a NEEDED chunk never started stays NEEDED')

    // condEndSync(offset): the chunks wholly below offset.
    for (const c of [3, 4, 5, 6, 7]) t.true(b.startSync(c * CH))
    b.condEndSync(5 * CH + 512)
    t.deepEqual(
      [3, 4, 5, 6, 7].map((c) => chunkCounter(b, c * CH)),
      [2, 2, 2 | RESYNC, 2 | RESYNC, 2 | RESYNC],
      'chunks 3 and 4 ended; 5 (not wholly below) goes on',
    )
    b.condEndSync(8 * CH)
    t.deepEqual(
      [5, 6, 7].map((c) => chunkCounter(b, c * CH)),
      [2, 2, 2],
    )
    // A chunk below the checkpoint that is resynced again is still ended by the next one.
    await b.startWrite(CH, CH)
    b.endWrite(CH, CH, false)
    t.true(b.startSync(CH))
    t.is(chunkCounter(b, CH), 2 | RESYNC)
    b.condEndSync(9 * CH)
    t.is(chunkCounter(b, CH), 2, 'condEndSync ends every chunk below the offset still in resync')

    // Completed syncs let the daemon clear.
    await daemonPass(b)
    await daemonPass(b)
    t.deepEqual(readDisk(path).dirtyList(10), [], 'all resynced chunks cleared on disk')
  } finally {
    await b.close()
  }
})

test('sync calls validate the offset', async (t) => {
  const b = await Bitmap.create(newPath(), { size: 4 * 4096, chunkSize: 4096, daemonSleep: IDLE })
  try {
    t.is(await code(() => b.startSync(4 * 4096)), 'EOUT_OF_RANGE')
    t.is(await code(() => b.startSync(100)), 'EINVAL')
    t.is(await code(() => b.endSync(-512, false)), 'EINVAL')
  } finally {
    await b.close()
  }
})

// ---------------------------------------------------------------------------------
// Stale bitmaps

test('stale: STALE in the superblock → every chunk dirty after open, on disk too, and STALE dropped', async (t) => {
  const path = newPath()
  const chunks = 40000 // two pages of bits
  const a = await Bitmap.create(path, { size: chunks * 512 - 0, chunkSize: 512, daemonSleep: IDLE })
  await a.startWrite(3 * 512, 512)
  a.endWrite(3 * 512, 512)
  await a.settle()
  await a.close()
  t.deepEqual(readDisk(path).dirtyList(chunks), [])
  // Set STALE (0x2) by hand.
  const bytes = readFileSync(path)
  bytes.writeUInt32LE(bytes.readUInt32LE(48) | 0x2, 48)
  writeFileSync(path, bytes)
  t.is(readDisk(path).state & 0x2, 0x2)

  const b = await Bitmap.open(path)
  try {
    t.true(b.wasStale)
    t.deepEqual(b.dirtyChunks(), [{ offset: 0, length: chunks * 512 }])
    t.is(b.stats().dirty, chunks)
    for (const c of [0, 1, 30719, 30720, chunks - 1]) t.is(chunkCounter(b, c * 512), 0x8002)
    const disk = readDisk(path)
    t.is(disk.dirtyList(chunks).length, chunks, 'every bit set on disk')
    t.is(disk.state & 0x2, 0, 'STALE dropped once every bit is on disk')
    t.is(b.superblock.state & 0x2, 0)
    if (withMdadm(t)) {
      const x = examineBitmap(path)
      t.is(x.dirty, chunks)
      t.is(x.bits, chunks)
      t.is(x.state, 'OK')
    }
  } finally {
    await b.close()
  }
  t.is(readDisk(path).dirtyList(chunks).length, chunks, 'close keeps them (NEEDED)')
})

test('stale: events older than the mirror’s → every chunk dirty, events brought up to date', async (t) => {
  const path = newPath()
  const a = await Bitmap.create(path, { size: 20 * 4096, chunkSize: 4096, daemonSleep: IDLE })
  await a.setEvents(5n)
  t.is(readDisk(path).events, 5n, 'setEvents is durable')
  await a.close()

  // Same events: not stale.
  const same = await Bitmap.open(path, { events: 5n })
  t.false(same.wasStale)
  t.deepEqual(same.dirtyChunks(), [])
  await same.close()
  t.deepEqual(readDisk(path).dirtyList(20), [])

  const b = await Bitmap.open(path, { events: 6n })
  try {
    t.true(b.wasStale)
    t.deepEqual(b.dirtyChunks(), [{ offset: 0, length: 20 * 4096 }])
    t.is(b.superblock.events, 6n)
    const disk = readDisk(path)
    t.is(disk.dirtyList(20).length, 20)
    t.is(disk.events, 6n)
    for (let c = 0; c < 20; c++) t.is(chunkCounter(b, c * 4096), 0x8002)
  } finally {
    await b.close()
  }
  if (withMdadm(t)) {
    const x = examineBitmap(path)
    t.is(x.dirty, 20)
    t.is(x.events, 6n)
  }
})

// ---------------------------------------------------------------------------------
// The daemon timer

test('the timer: with daemonSleep 1 an idle chunk is cleared on disk within a few seconds', async (t) => {
  const path = newPath()
  const b = await Bitmap.create(path, { size: 8 * 4096, chunkSize: 4096, daemonSleep: 1 })
  try {
    await b.startWrite(4096, 4096)
    t.true(readDisk(path).bit(1))
    b.endWrite(4096, 4096)
    const ended = Date.now()
    let clearedAt = 0
    while (Date.now() - ended < 6000) {
      await new Promise((r) => setTimeout(r, 100))
      if (!readDisk(path).bit(1)) {
        clearedAt = Date.now() - ended
        break
      }
    }
    t.log(`cleared on disk ${clearedAt} ms after endWrite`)
    t.true(clearedAt > 0, 'the timer cleared the bit')
    t.true(clearedAt >= 900, 'not before two passes one second apart')
    t.is(chunkCounter(b, 4096), 0)
  } finally {
    await b.close()
  }
})

test('the timer is unref’d: a process with an open bitmap and nothing to do exits on its own', async (t) => {
  const path = newPath()
  const a = await Bitmap.create(path, { size: 8 * 4096, chunkSize: 4096, daemonSleep: 1 })
  await a.close()
  const fixture = join(__dirname, 'fixtures', 'bitmap-idle.ts')
  t.true(existsSync(fixture))
  const child = spawn(process.execPath, ['--import', 'tsx', fixture, path], { stdio: ['ignore', 'pipe', 'pipe'] })
  let out = ''
  let err = ''
  child.stdout.on('data', (d) => (out += d))
  child.stderr.on('data', (d) => (err += d))
  const started = Date.now()
  const status = await new Promise<number | null | 'timeout'>((resolve) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL')
      resolve('timeout')
    }, 8000)
    child.on('exit', (codeNum) => {
      clearTimeout(timer)
      resolve(codeNum)
    })
  })
  t.log(`child exited after ${Date.now() - started} ms: ${status}`)
  t.true(out.includes('opened'), `the child opened the bitmap (stdout ${out}, stderr ${err})`)
  t.is(status, 0, `the child must exit on its own (stderr: ${err})`)
})

// ---------------------------------------------------------------------------------
// Errors

test('errors: startWrite/endWrite arguments', async (t) => {
  const b = await Bitmap.create(newPath(), { size: 10 * 4096, chunkSize: 4096, daemonSleep: IDLE })
  try {
    t.is(await code(b.startWrite(100, 512)), 'EINVAL', 'unaligned offset')
    t.is(await code(b.startWrite(0, 100)), 'EINVAL', 'unaligned length')
    t.is(await code(b.startWrite(0, 0)), 'EINVAL', 'empty')
    t.is(await code(b.startWrite(-512, 512)), 'EINVAL', 'negative')
    t.is(await code(b.startWrite(0.5, 512)), 'EINVAL', 'not an integer')
    t.is(await code(b.startWrite(10 * 4096, 512)), 'EOUT_OF_RANGE', 'at the end')
    t.is(await code(b.startWrite(9 * 4096, 8192)), 'EOUT_OF_RANGE', 'across the end')
    t.is(b.stats().dirty, 0, 'a refused startWrite sets nothing')
    for (let c = 0; c < 10; c++) t.is(chunkCounter(b, c * 4096), 0, 'and counts nothing')
    t.is(await code(() => b.endWrite(0, 4096)), 'EINVAL', 'endWrite without startWrite')
    await b.startWrite(0, 4096)
    t.is(await code(() => b.endWrite(0, 4096, true, true)), 'EINVAL', 'behind endWrite without a behind startWrite')
    t.is(chunkCounter(b, 0), 3, 'a refused endWrite changes nothing')
    b.endWrite(0, 4096)
    t.is(chunkCounter(b, 0), 2)
  } finally {
    await b.close()
  }
  t.is(await code(b.startWrite(0, 512)), 'ECLOSED', 'after close')
})

test('errors: create on an existing file → EEXIST, and the file is untouched', async (t) => {
  const path = newPath()
  const a = await Bitmap.create(path, { size: 10 * 4096, chunkSize: 4096, daemonSleep: IDLE })
  await a.startWrite(0, 4096)
  await a.close()
  const before = readFileSync(path)
  t.is(await code(Bitmap.create(path, { size: 10 * 4096, chunkSize: 4096 })), 'EEXIST')
  t.deepEqual(readFileSync(path), before)
  // overwrite: true replaces it.
  const b = await Bitmap.create(path, { size: 10 * 4096, chunkSize: 4096, daemonSleep: IDLE, overwrite: true })
  t.deepEqual(b.dirtyChunks(), [])
  await b.close()
})

test('errors: open on a corrupt superblock → the superblock’s error code; nothing is written', async (t) => {
  const path = newPath()
  const a = await Bitmap.create(path, { size: 10 * 4096, chunkSize: 4096, daemonSleep: IDLE })
  await a.close()
  const good = readFileSync(path)
  const cases: [string, (b: Buffer) => void][] = [
    ['EBADMAGIC', (b) => b.writeUInt32LE(0x12345678, 0)],
    ['EBADVERSION', (b) => b.writeUInt32LE(9, 4)],
    ['ECLUSTERED', (b) => b.writeUInt32LE(5, 4)],
    ['EBADCHUNK', (b) => b.writeUInt32LE(1000, 52)],
    ['EBADDAEMON', (b) => b.writeUInt32LE(0, 56)],
    ['EBADWRITEBEHIND', (b) => b.writeUInt32LE(20000, 60)],
    ['EBADSIZE', (b) => b.writeBigUInt64LE(0n, 40)],
    ['ESHORTFILE', (b) => b.writeBigUInt64LE(1n << 40n, 40)],
  ]
  for (const [want, corrupt] of cases) {
    const bad = Buffer.from(good)
    corrupt(bad)
    writeFileSync(path, bad)
    t.is(await code(Bitmap.open(path)), want)
    t.deepEqual(readFileSync(path), bad, `${want}: the file is left as it was`)
  }
})

test('errors: open with the wrong uuid → EUUID; the right one opens', async (t) => {
  const path = newPath()
  const uuid = '00112233-44556677-8899aabb-ccddeeff'
  const a = await Bitmap.create(path, { size: 10 * 4096, chunkSize: 4096, daemonSleep: IDLE, uuid })
  t.deepEqual(Buffer.from(a.uuid).toString('hex'), '00112233445566778899aabbccddeeff')
  await a.close()
  t.is(await code(Bitmap.open(path, { uuid: 'ffeeddccbbaa99887766554433221100' })), 'EUUID')
  const b = await Bitmap.open(path, { uuid: new Uint8Array(Buffer.from('00112233445566778899aabbccddeeff', 'hex')) })
  await b.close()
  t.pass()
})

test('errors: create on tmpfs (/dev/shm) → EVOLATILE and nothing left behind, unless allowVolatile', async (t) => {
  if (!existsSync('/dev/shm')) {
    // Never a silent pass in CI: there a missing tmpfs is a failure, as for every capability.
    if (inCI) return t.fail('no /dev/shm (tmpfs) on this machine')
    console.log('bitmap › EVOLATILE test not run: no /dev/shm (tmpfs) on this machine')
    return t.pass()
  }
  const path = join('/dev/shm', `md-bitmap-spec-${process.pid}.bitmap`)
  try {
    t.is(await code(Bitmap.create(path, { size: 10 * 4096, chunkSize: 4096, daemonSleep: IDLE })), 'EVOLATILE')
    t.false(existsSync(path), 'the refused file is removed')
    const b = await Bitmap.create(path, { size: 10 * 4096, chunkSize: 4096, daemonSleep: IDLE, allowVolatile: true })
    t.log(`tmpfs mode: ${b.stats().mode}`)
    await b.startWrite(4096, 4096)
    t.deepEqual(b.dirtyChunks(), [{ offset: 4096, length: 4096 }])
    await b.close()
    t.is(await code(Bitmap.open(path)), 'EVOLATILE', 'open refuses it too')
  } finally {
    rmSync(path, { force: true })
  }
})

test('COUNTER_MAX: close() releases a writer waiting at a full chunk with ECLOSED', async (t) => {
  const path = newPath()
  const b = await Bitmap.create(path, { size: 4 * 4096, chunkSize: 4096, daemonSleep: IDLE })
  await Promise.all(Array.from({ length: COUNTER_MAX - 2 }, () => b.startWrite(0, 512)))
  const waiter = b.startWrite(0, 512)
  t.false(await settledYet(waiter))
  await b.close()
  t.is(await code(waiter), 'ECLOSED')
  t.true(readDisk(path).bit(0), 'the chunk with writes still counted stays dirty on disk')
})

test('errors: create with invalid geometry', async (t) => {
  t.is(await code(Bitmap.create(newPath(), { size: 1000, chunkSize: 4096 })), 'EINVAL', 'size not a multiple of 512')
  t.is(await code(Bitmap.create(newPath(), { size: 0, chunkSize: 4096 })), 'EINVAL')
  const p = newPath()
  t.is(await code(Bitmap.create(p, { size: 4096, chunkSize: 3000 })), 'EBADCHUNK')
  t.false(existsSync(p))
})

// ---------------------------------------------------------------------------------
// Write-behind counts

test('behind: behindWrites, its high-water mark, and maxWriteBehind = the writeBehind option', async (t) => {
  const path = newPath()
  const b = await Bitmap.create(path, { size: 10 * 4096, chunkSize: 4096, daemonSleep: IDLE, writeBehind: 7 })
  try {
    t.is(b.maxWriteBehind, 7)
    t.is(b.stats().maxWriteBehind, 7)
    t.is(b.superblock.writeBehind, 7)
    t.is(readDisk(path).writeBehind, 7)
    await b.startWrite(0, 4096, true)
    await b.startWrite(4096, 4096, true)
    await b.startWrite(8192, 4096, false)
    await b.startWrite(0, 512, true)
    t.is(b.behindWrites, 3)
    t.is(b.behindWritesHighWater, 3)
    b.endWrite(0, 4096, true, true)
    b.endWrite(4096, 4096, true, true)
    b.endWrite(8192, 4096, true, false)
    t.is(b.behindWrites, 1)
    t.is(b.behindWritesHighWater, 3, 'the high-water mark stays')
    await b.startWrite(4096, 4096, true)
    t.is(b.behindWrites, 2)
    t.is(b.behindWritesHighWater, 3)
    const s = b.stats()
    t.is(s.behindWrites, 2)
    t.is(s.behindWritesHighWater, 3)
    b.endWrite(0, 512, true, true)
    b.endWrite(4096, 4096, true, true)
    t.is(b.behindWrites, 0)
  } finally {
    await b.close()
  }
  const c = await Bitmap.create(newPath(), { size: 4096, chunkSize: 4096, daemonSleep: IDLE })
  t.is(c.maxWriteBehind, 0, 'default: write-behind off')
  await c.close()
})

// ---------------------------------------------------------------------------------
// COUNTER_MAX

test('COUNTER_MAX: the writer past 0x3fff waits for an endWrite; the counter never wraps', async (t) => {
  const path = newPath()
  const b = await Bitmap.create(path, { size: 4 * 4096, chunkSize: 4096, daemonSleep: IDLE })
  try {
    // A chunk in use counts from 2, so 0x3fff - 2 writers fill it.
    const fill = COUNTER_MAX - 2
    await Promise.all(Array.from({ length: fill }, () => b.startWrite(0, 512)))
    t.is(chunkCounter(b, 0), COUNTER_MAX)

    const waiter = b.startWrite(0, 512)
    const waiter2 = b.startWrite(0, 512)
    t.false(await settledYet(waiter), 'the next startWrite does not resolve while the chunk is full')
    await daemonPass(b)
    t.false(await settledYet(waiter))
    t.is(chunkCounter(b, 0), COUNTER_MAX, 'no wrap into the flag bits')

    b.endWrite(0, 512)
    await waiter
    t.is(chunkCounter(b, 0), COUNTER_MAX, 'one slot freed, one waiter took it')
    t.false(await settledYet(waiter2), 'the second waiter still waits')
    b.endWrite(0, 512)
    await waiter2
    t.is(chunkCounter(b, 0), COUNTER_MAX)

    // The other chunks are not affected.
    await b.startWrite(4096, 512)
    t.is(chunkCounter(b, 4096), 3)
    for (let i = 0; i < fill; i++) b.endWrite(0, 512)
    t.is(chunkCounter(b, 0), 2)
    t.true(readDisk(path).bit(0))
  } finally {
    await b.close()
  }
})
