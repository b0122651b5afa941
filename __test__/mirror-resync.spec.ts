/**
 * Mirror resync: progress reports, abort through an AbortSignal and resume (only what
 * was left is copied), for a resync and for a recovery; and a mirror without a bitmap,
 * where a process killed mid-flight (SIGKILL) means a full resync at the next open.
 */
import test from 'ava'
import { spawn } from 'node:child_process'
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { MdBitmapError, Mirror, allocAligned, type ResyncProgress } from '../src'
import { daemonPass } from '../src/bitmap/testing'
import { readDisk } from './helpers/mdadm'
import { KiB, MiB, makeRig, onDisk, pattern, rigParent, sameBytes } from './helpers/mirror'
import { removeDir } from './helpers/tmp'
import { sleep, until } from './helpers/wait'

const parent = rigParent('md-mirror-resync-')
test.after.always(() => removeDir(parent))

const CS = 64 * KiB
const NCHUNKS = MiB / CS

function assertProgressSane(t: import('ava').ExecutionContext, ps: ResyncProgress[], chunksTotal: number): void {
  t.true(ps.length > 0, 'progress was reported')
  for (const [i, p] of ps.entries()) {
    t.is(p.chunksTotal, chunksTotal)
    t.is(p.bytesTotal, chunksTotal * CS)
    t.true(p.chunksDone >= 0 && p.chunksDone <= p.chunksTotal)
    t.is(p.bytesCopied, p.chunksDone * CS, 'bytes copied match the chunks done (every chunk here needed copying)')
    t.true(Number.isFinite(p.rate) && p.rate >= 0, `rate ${p.rate}`)
    t.true(p.elapsedMs >= 0)
    if (i > 0) {
      const q = ps[i - 1]
      t.true(p.chunksDone >= q.chunksDone && p.bytesCopied >= q.bytesCopied && p.elapsedMs >= q.elapsedMs, 'progress is monotonic')
    }
  }
}

test('resync: progress is sane and monotonic; an abort rejects EABORTED; the next resync copies only what was left', async (t) => {
  // Members that already hold different data, not assumed clean: every chunk needs copying.
  const dir = join(parent, 'resync')
  mkdirSync(dir)
  const src = pattern(MiB, 1)
  writeFileSync(join(dir, 'a.img'), src)
  writeFileSync(join(dir, 'b.img'), Buffer.alloc(MiB))
  const r = await makeRig(dir, [{}, { delayMs: 10 }], { memberPaths: [join(dir, 'a.img'), join(dir, 'b.img')] })
  const m = r.mirror
  t.teardown(() => m.close().catch(() => {}))
  t.true(m.needsResync)
  t.deepEqual(m.bitmap!.neededChunks().length, NCHUNKS)

  const ac = new AbortController()
  const first: ResyncProgress[] = []
  const STOP = 5
  const e = await t.throwsAsync(
    m.resync({
      signal: ac.signal,
      inFlight: 1, // one chunk at a time: the abort lands exactly after chunk STOP - 1 (several in flight: mirror-resync-in-flight.spec)
      progressIntervalMs: 0,
      onProgress: (p) => {
        first.push(p)
        if (p.chunksDone === STOP) ac.abort()
      },
    }),
    { instanceOf: MdBitmapError },
  )
  t.is(e?.code, 'EABORTED')
  assertProgressSane(t, first, NCHUNKS)
  t.is(first.at(-1)!.chunksDone, STOP)
  t.deepEqual(m.bitmap!.neededChunks(), Array.from({ length: NCHUNKS - STOP }, (_, i) => STOP + i), 'the chunks not copied stay marked')
  t.true(m.needsResync)
  t.deepEqual(onDisk(r.paths[1], 0, STOP * CS), Buffer.from(src.subarray(0, STOP * CS)), 'the copied chunks are on the target')
  sameBytes(t, onDisk(r.paths[1], STOP * CS, CS), Buffer.alloc(CS), 'the next one is not')

  const second: ResyncProgress[] = []
  const copiesBefore = r.ctl[1].writesDone
  const report = await m.resync({ progressIntervalMs: 0, onProgress: (p) => second.push(p) })
  assertProgressSane(t, second, NCHUNKS - STOP)
  t.is(second.at(-1)!.chunksDone, NCHUNKS - STOP, 'the last progress call says done')
  t.deepEqual(report.chunks, Array.from({ length: NCHUNKS - STOP }, (_, i) => STOP + i))
  t.is(report.chunksCopied, NCHUNKS - STOP)
  t.is(report.bytesCopied, (NCHUNKS - STOP) * CS)
  t.is(report.chunksTotal, NCHUNKS - STOP)
  t.is(report.source, 0)
  t.deepEqual(report.targets, [1])
  t.true(report.durationMs > 0)
  t.is(r.ctl[1].writesDone - copiesBefore, NCHUNKS - STOP, 'one write per chunk left, none for the chunks already copied')
  t.false(m.needsResync)

  // Nothing left: a resync copies nothing.
  const again = await m.resync()
  t.is(again.chunksCopied, 0)
  for (let i = 0; i < 3; i++) await daemonPass(m.bitmap!)
  t.deepEqual(readDisk(r.bitmapPath).dirtyList(NCHUNKS), [], 'every bit cleared after the resync')
  await m.close()
  sameBytes(t, onDisk(r.paths[1], 0, MiB), onDisk(r.paths[0], 0, MiB))
})

test('a recovery (reAdd) aborted half-way resumes with a resync that copies only what was left', async (t) => {
  const r = await makeRig(parent, [{}, {}], {})
  const m = r.mirror
  t.teardown(() => m.close().catch(() => {}))
  await m.removeMember(1)
  const written = [1, 3, 4, 6, 9, 12, 15]
  for (const c of written) await m.write(pattern(32 * KiB, c), c * CS + 8 * KiB)
  r.ctl[1].delayMs = 10
  const ac = new AbortController()
  const first: ResyncProgress[] = []
  const e = await t.throwsAsync(
    m.reAdd(1, { signal: ac.signal, inFlight: 1, progressIntervalMs: 0, onProgress: (p) => (first.push(p), p.chunksDone === 3 && ac.abort()) }),
    { instanceOf: MdBitmapError },
  )
  t.is(e?.code, 'EABORTED')
  t.is(m.members[1].state, 'recovering', 'the member stays recovering')
  assertProgressSane(t, first, written.length)
  // A recovering member is never read, not even where it already has the data.
  const back = allocAligned(32 * KiB)
  for (const c of [written[0], written[1], written[2], written[6], 0, 2, 5, 7]) {
    await m.read(back, c * CS + 8 * KiB)
    sameBytes(t, back, written.includes(c) ? pattern(32 * KiB, c) : new Uint8Array(32 * KiB))
  }
  t.is(r.ctl[1].reads, 0, 'the recovering member served no read')
  const before = r.ctl[1].writesDone
  const report = await m.resync()
  t.deepEqual(report.chunks, written.slice(3), 'only the chunks the aborted recovery had not copied')
  t.deepEqual(report.recovered, [1])
  t.is(r.ctl[1].writesDone - before, written.length - 3)
  t.deepEqual(m.members.map((x) => x.state), ['in-sync', 'in-sync'])
  await m.close()
  sameBytes(t, onDisk(r.paths[1], 0, MiB), onDisk(r.paths[0], 0, MiB))
})

test('a mirror without a bitmap: a process killed with writes done (SIGKILL) means a full resync at the next open; a clean close does not', async (t) => {
  const r = await makeRig(parent, [{}, {}], { bitmap: null })
  t.is(r.mirror.bitmap, null)
  await r.mirror.close()
  const again = await Mirror.open({ metadata: r.metaPath, openMember: r.openMember })
  t.false(again.needsResync, 'after a clean close nothing needs a resync')
  t.is((await again.resync()).chunksCopied, 0)
  await again.close()

  const child = spawn(process.execPath, ['--import', 'tsx', join(__dirname, 'fixtures', 'mirror-nobitmap-writer.ts'), r.metaPath, String(CS), '2', '7'], {
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  let out = ''
  let err = ''
  child.stdout.on('data', (d) => (out += d))
  child.stderr.on('data', (d) => (err += d))
  const exited = new Promise<NodeJS.Signals | number | null>((resolve) => child.on('exit', (code, sig) => resolve(sig ?? code)))
  const ready = await Promise.race([
    new Promise<boolean>((resolve) => child.stdout.on('data', () => out.includes('ready') && resolve(true))),
    exited.then(() => false),
    new Promise<boolean>((resolve) => setTimeout(() => resolve(false), 20000).unref()),
  ])
  if (!ready) child.kill('SIGKILL')
  t.true(ready, `the writer got ready (stdout ${JSON.stringify(out)}, stderr ${JSON.stringify(err)})`)
  child.kill('SIGKILL')
  t.is(await exited, 'SIGKILL')

  const m = await Mirror.open({ metadata: r.metaPath, openMember: r.openMember })
  t.teardown(() => m.close().catch(() => {}))
  t.true(m.needsResync, 'an unclean shutdown without a bitmap needs a resync')
  const report = await m.resync()
  t.is(report.chunksCopied, NCHUNKS, 'of every chunk')
  t.deepEqual(report.chunks, Array.from({ length: NCHUNKS }, (_, i) => i))
  t.is(report.bytesCopied, MiB)
  t.false(m.needsResync)
  await m.close()
  sameBytes(t, onDisk(r.paths[1], 0, MiB), onDisk(r.paths[0], 0, MiB))
  sameBytes(t, onDisk(r.paths[0], 7 * CS, 4 * KiB), Buffer.alloc(4 * KiB, 7), 'the killed process\'s write is there')
  const m3 = await Mirror.open({ metadata: r.metaPath, openMember: r.openMember })
  t.false(m3.needsResync, 'the resync and clean close cleared it')
  await m3.close()
})

test('a mirror without a bitmap: an aborted resync resumes where it stopped', async (t) => {
  const dir = join(parent, 'nobitmap-abort')
  mkdirSync(dir)
  const src = pattern(MiB, 3)
  writeFileSync(join(dir, 'a.img'), src)
  writeFileSync(join(dir, 'b.img'), Buffer.alloc(MiB))
  const r = await makeRig(dir, [{}, { delayMs: 10 }], { bitmap: null, memberPaths: [join(dir, 'a.img'), join(dir, 'b.img')] })
  const m = r.mirror
  t.teardown(() => m.close().catch(() => {}))
  t.true(m.needsResync, 'members that held data: a first full resync is due')
  const ac = new AbortController()
  const first: ResyncProgress[] = []
  const e = await t.throwsAsync(
    m.resync({ signal: ac.signal, inFlight: 1, progressIntervalMs: 0, onProgress: (p) => (first.push(p), p.chunksDone === 5 && ac.abort()) }),
    { instanceOf: MdBitmapError },
  )
  t.is(e?.code, 'EABORTED')
  assertProgressSane(t, first, NCHUNKS)
  const before = r.ctl[1].writesDone
  const report = await m.resync()
  t.deepEqual(report.chunks, Array.from({ length: NCHUNKS - 5 }, (_, i) => 5 + i), 'only the chunks the aborted resync had not copied')
  t.is(r.ctl[1].writesDone - before, NCHUNKS - 5)
  await m.close()
  sameBytes(t, onDisk(r.paths[1], 0, MiB), Buffer.from(src))
})

test('a mirror without a bitmap: after a crash, a resync checkpoint does not count; the resync starts from the first chunk', async (t) => {
  const r = await makeRig(parent, [{}, {}], { bitmap: null })
  await r.mirror.close()
  // What a crash leaves after a resync persisted a checkpoint and writes went on below
  // it: the metadata says not clean, resume at chunk 8; chunk 2 differs (a write the
  // crash cut between the members).
  const meta = JSON.parse(readFileSync(r.metaPath, 'utf8'))
  writeFileSync(r.metaPath, JSON.stringify({ ...meta, clean: false, resyncFrom: 8 * CS }))
  writeFileSync(r.paths[0], pattern(4 * KiB, 5), { flag: 'r+' })
  const m = await Mirror.open({ metadata: r.metaPath, openMember: r.openMember })
  t.teardown(() => m.close().catch(() => {}))
  const report = await m.resync()
  t.is(report.chunks[0], 0, 'the resync starts at the first chunk')
  t.is(report.chunksCopied, NCHUNKS)
  await m.close()
  sameBytes(t, onDisk(r.paths[1], 0, MiB), onDisk(r.paths[0], 0, MiB), 'the members are identical (chunk 2 too)')
})

test('the resync barrier: a chunk is not copied while a write to it is in flight, so the copy never puts old data back', async (t) => {
  // The source's write is held: without the barrier the resync would read the old
  // data from the source, write it over the new data on the target, and the held
  // write would then land on the source only: members different, chunk about to be
  // cleared. With the barrier the copy waits for the write to leave.
  const r = await makeRig(parent, [{}, {}])
  const m = r.mirror
  t.teardown(() => m.close().catch(() => {}))
  await m.bitmap!.markNeeded(0, CS)
  const data = pattern(CS, 77)
  r.ctl[0].hold()
  const w = m.write(data, 0)
  await until(() => r.ctl[1].writesDone === 1 && r.ctl[0].writesInFlight === 1, 5000, 'the target has the write, the source holds it')
  let resynced = false
  const rs = m.resync().then((rep) => {
    resynced = true
    return rep
  })
  await sleep(300)
  t.false(resynced, 'the resync waits while the write to its chunk is in flight')
  t.is(r.ctl[0].reads, 0, 'the chunk was not read from the source yet')
  r.ctl[0].release()
  await w
  const report = await rs
  t.deepEqual(report.chunks, [0])
  await m.close()
  sameBytes(t, onDisk(r.paths[0], 0, CS), Buffer.from(data), 'the source has the write')
  sameBytes(t, onDisk(r.paths[1], 0, CS), Buffer.from(data), 'the target has the write, not the old data')
})
