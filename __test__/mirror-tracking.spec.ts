/**
 * Changed-block tracking through the API (src/mirror/tracking.ts): track, checkpoint,
 * untrack and the list; misuse as typed errors; the bits on disk before a held data
 * write starts; a checkpoint with writes in flight keeps their bits; tracking kept
 * across close and open, and a file that missed writes adopted all set; and a
 * fast-check property: after any sequence of writes, discards, write-zeroes,
 * checkpoints and reopens, the tracked set is exactly the chunks written since the
 * last checkpoint, and with writes in flight on slowed members no change is lost; and
 * a writer SIGKILLed while it writes and takes checkpoints (fixtures/tracking-writer.ts)
 * loses no chunk written since its last checkpoint, and a kill during a checkpoint
 * leaves it all set unless the checkpoint had ended on disk.
 */
import test from 'ava'
import fc from 'fast-check'
import { mkdirSync } from 'node:fs'
import { join } from 'node:path'

import { Mirror, allocAligned, type MdBitmapError } from '../src'
import { STATE_STALE } from '../src/bitmap/superblock'
import { readBitmapFile, dirtyRanges } from '../src/cli/bitmap-file'
import { Prng } from '../src/cli/demo/prng'
import { killRunning, replaySeed, startCrashChild } from './helpers/crash-child'
import { KiB, MiB, makeRig, pattern } from './helpers/mirror'
import { diskTempDir, removeDir } from './helpers/tmp'
import { until } from './helpers/wait'

const dir = diskTempDir('md-bitmap-tracking-')
test.after.always(() => removeDir(dir))

const CHUNK = 64 * KiB

/** The chunks (of `chunk` bytes) that `ranges` cover. */
function chunksOf(ranges: { offset: number; length: number }[], chunk = CHUNK): number[] {
  const out: number[] = []
  for (const r of ranges) for (let c = r.offset / chunk; c < (r.offset + r.length) / chunk; c++) out.push(c)
  return out
}

const sorted = (s: Iterable<number>) => [...new Set(s)].sort((a, b) => a - b)

/** The chunks set in the tracking bitmap file as it is on disk. */
async function onDiskChunks(path: string): Promise<number[]> {
  return dirtyRanges(await readBitmapFile(path)).chunks
}

test('track, write, discard, write-zeroes, checkpoint, untrack: the tracked set and the list', async (t) => {
  const rig = await makeRig(dir, [{}, { writeMostly: true }], { writeBehind: 16 })
  const { mirror } = rig
  t.teardown(() => mirror.close().catch(() => {}))
  const path = join(rig.dir, 'bk.track')
  const info = await mirror.track('bk', { path })
  t.deepEqual(info, { name: 'bk', path, chunkSize: CHUNK, dirtyChunks: 0 })
  await mirror.write(pattern(8 * KiB, 1), 3 * CHUNK + 4 * KiB)
  await mirror.discard(10 * CHUNK, 2 * CHUNK)
  await mirror.writeZeroes(15 * CHUNK, 4 * KiB)
  t.deepEqual(chunksOf(mirror.changes('bk')), [3, 10, 11, 15])
  t.deepEqual(await onDiskChunks(path), [3, 10, 11, 15], 'the bits are on disk')
  t.deepEqual(mirror.tracked(), [{ name: 'bk', path, chunkSize: CHUNK, dirtyChunks: 4 }])
  // The write-intent bitmap clears on its own; tracking does not.
  await mirror.bitmap!.settle()
  t.is(mirror.bitmap!.stats().dirty, 0)
  t.deepEqual(chunksOf(mirror.changes('bk')), [3, 10, 11, 15])
  t.deepEqual(chunksOf(await mirror.checkpoint('bk')), [3, 10, 11, 15], 'checkpoint resolves with what it cleared')
  t.deepEqual(mirror.changes('bk'), [])
  t.deepEqual(await onDiskChunks(path), [], 'cleared on disk')
  await mirror.write(pattern(4 * KiB, 2), 7 * CHUNK)
  t.deepEqual(chunksOf(mirror.changes('bk')), [7])
  t.deepEqual(await mirror.untrack('bk'), { name: 'bk', path })
  t.deepEqual(mirror.tracked(), [])
  t.deepEqual(await onDiskChunks(path), [7], 'the file is kept, as it was')
})

test('a tracking bitmap with a coarser chunk size, two at once', async (t) => {
  const { mirror, dir: d } = await makeRig(dir, [{}, {}])
  t.teardown(() => mirror.close().catch(() => {}))
  await mirror.track('fine', { path: join(d, 'fine') })
  await mirror.track('coarse', { path: join(d, 'coarse'), chunkSize: 4 * CHUNK })
  await mirror.write(pattern(4 * KiB, 3), 5 * CHUNK)
  t.deepEqual(chunksOf(mirror.changes('fine')), [5])
  t.deepEqual(mirror.changes('coarse'), [{ offset: 4 * CHUNK, length: 4 * CHUNK }])
  await mirror.checkpoint('fine')
  t.deepEqual(mirror.changes('fine'), [])
  t.deepEqual(mirror.changes('coarse'), [{ offset: 4 * CHUNK, length: 4 * CHUNK }], 'a checkpoint clears its own bitmap only')
  t.deepEqual(
    mirror.tracked().map((i) => [i.name, i.chunkSize]),
    [
      ['fine', CHUNK],
      ['coarse', 4 * CHUNK],
    ],
  )
})

test('misuse is a typed error: unknown name, duplicate name or file, bad name, geometry, another mirror\'s file', async (t) => {
  const rig = await makeRig(dir, [{}, {}])
  const other = await makeRig(dir, [{}], { size: 2 * MiB })
  const { mirror } = rig
  t.teardown(() => mirror.close().catch(() => {}))
  t.teardown(() => other.mirror.close().catch(() => {}))
  const code = async (p: Promise<unknown>) => ((await t.throwsAsync(p)) as MdBitmapError).code
  t.is(await code(mirror.checkpoint('nope')), 'ETRACK_UNKNOWN')
  t.is(await code(mirror.untrack('nope')), 'ETRACK_UNKNOWN')
  t.throws(() => mirror.changes('nope'), { code: 'ETRACK_UNKNOWN' } as never)
  await mirror.track('bk', { path: join(rig.dir, 'bk') })
  t.is(await code(mirror.track('bk', { path: join(rig.dir, 'bk2') })), 'ETRACK_EXISTS')
  t.is(await code(mirror.track('bk2', { path: join(rig.dir, 'bk') })), 'ETRACK_EXISTS')
  t.is(await code(mirror.track('wi', { path: rig.bitmapPath })), 'ETRACK_EXISTS')
  t.is(await code(mirror.track('a:b', { path: join(rig.dir, 'x') })), 'EINVAL')
  t.is(await code(mirror.track('half', { path: join(rig.dir, 'half'), chunkSize: CHUNK / 2 })), 'ETRACK_GEOMETRY')
  t.is(await code(mirror.track('odd', { path: join(rig.dir, 'odd'), chunkSize: 3 * CHUNK })), 'ETRACK_GEOMETRY')
  // Another mirror's tracking file: its uuid differs.
  await other.mirror.track('theirs', { path: join(other.dir, 'theirs') })
  await other.mirror.untrack('theirs')
  t.is(await code(mirror.track('theirs', { path: join(other.dir, 'theirs') })), 'EUUID')
  // This mirror's file with another chunk size than asked for.
  await mirror.track('c4', { path: join(rig.dir, 'c4'), chunkSize: 4 * CHUNK })
  await mirror.untrack('c4')
  t.is(await code(mirror.track('c4', { path: join(rig.dir, 'c4'), chunkSize: 2 * CHUNK })), 'ETRACK_GEOMETRY')
  t.deepEqual(
    mirror.tracked().map((i) => i.name),
    ['bk'],
    'nothing failed half-way left a bitmap behind',
  )
})

test('the tracking bit is on disk before the data write is issued', async (t) => {
  const rig = await makeRig(dir, [{}, {}])
  const { mirror, ctl } = rig
  t.teardown(() => mirror.close().catch(() => {}))
  const path = join(rig.dir, 'bk')
  await mirror.track('bk', { path })
  ctl[0].hold()
  const w = mirror.write(pattern(4 * KiB, 4), 9 * CHUNK)
  await until(() => ctl[0].writesStarted === 1, 5000, 'the data write to reach the member')
  t.deepEqual(await onDiskChunks(path), [9], 'set on disk while the data write is held')
  ctl[0].release()
  await w
})

test('a checkpoint with writes in flight: their bits stay set, the others are cleared', async (t) => {
  const rig = await makeRig(dir, [{}, {}])
  const { mirror, ctl } = rig
  t.teardown(() => mirror.close().catch(() => {}))
  const path = join(rig.dir, 'bk')
  await mirror.track('bk', { path })
  await mirror.write(pattern(4 * KiB, 5), 1 * CHUNK)
  await mirror.write(pattern(4 * KiB, 6), 2 * CHUNK)
  ctl[1].hold()
  const held = [mirror.write(pattern(4 * KiB, 7), 2 * CHUNK + 8 * KiB), mirror.discard(4 * CHUNK, CHUNK)]
  await until(() => ctl[1].writesStarted >= 1, 5000, 'the held writes to start')
  const cleared = await mirror.checkpoint('bk')
  t.deepEqual(chunksOf(cleared), [1], 'chunk 1 is cleared; 2 and 4 have writes in flight')
  t.deepEqual(chunksOf(mirror.changes('bk')), [2, 4])
  t.deepEqual(await onDiskChunks(path), [2, 4])
  ctl[1].release()
  await Promise.all(held)
  t.deepEqual(chunksOf(mirror.changes('bk')), [2, 4], 'still set once they ended: the next backup copies them')
  t.deepEqual(chunksOf(await mirror.checkpoint('bk')), [2, 4])
  t.deepEqual(mirror.changes('bk'), [])
})

test('track joins the writes already in flight', async (t) => {
  const rig = await makeRig(dir, [{}, {}])
  const { mirror, ctl } = rig
  t.teardown(() => mirror.close().catch(() => {}))
  ctl[0].hold()
  const w = mirror.write(pattern(4 * KiB, 8), 6 * CHUNK)
  await until(() => ctl[0].writesStarted === 1, 5000, 'the write to start')
  await mirror.track('late', { path: join(rig.dir, 'late') })
  t.deepEqual(chunksOf(mirror.changes('late')), [6], 'the write in flight may land after a full copy read its chunk')
  t.deepEqual(chunksOf(await mirror.checkpoint('late')), [], 'and it keeps its bit through a checkpoint')
  ctl[0].release()
  await w
  t.deepEqual(chunksOf(await mirror.checkpoint('late')), [6])
})

test('tracking survives close and open; a file untracked meanwhile comes back all set', async (t) => {
  const rig = await makeRig(dir, [{}, {}])
  const path = join(rig.dir, 'bk')
  await rig.mirror.track('bk', { path })
  await rig.mirror.write(pattern(4 * KiB, 9), 12 * CHUNK)
  await rig.mirror.close()
  let mirror = await Mirror.open({ bitmap: rig.bitmapPath, openMember: rig.openMember })
  t.teardown(() => mirror.close().catch(() => {}))
  t.deepEqual(
    mirror.tracked().map((i) => i.name),
    ['bk'],
  )
  t.deepEqual(chunksOf(mirror.changes('bk')), [12])
  await mirror.write(pattern(4 * KiB, 10), 0)
  t.deepEqual(chunksOf(mirror.changes('bk')), [0, 12])
  await mirror.untrack('bk')
  await mirror.write(pattern(4 * KiB, 11), 3 * CHUNK) // not seen by bk
  await mirror.close()
  mirror = await Mirror.open({ bitmap: rig.bitmapPath, openMember: rig.openMember })
  t.deepEqual(mirror.tracked(), [])
  const back = await mirror.track('bk', { path })
  t.is(back.dirtyChunks, MiB / CHUNK, 'it missed writes: every chunk is set')
  await mirror.checkpoint('bk')
  t.deepEqual(mirror.changes('bk'), [])
})

test('property: the tracked set is exactly the chunks written since the last checkpoint', async (t) => {
  const chunks = MiB / CHUNK
  const op = fc.oneof(
    fc.record({ kind: fc.constantFrom('write', 'discard', 'writeZeroes'), page: fc.integer({ min: 0, max: MiB / (4 * KiB) - 1 }), pages: fc.integer({ min: 1, max: 40 }) }),
    fc.record({ kind: fc.constant('checkpoint') }),
    fc.record({ kind: fc.constant('reopen') }),
  )
  let runs = 0
  await fc.assert(
    fc.asyncProperty(fc.array(op, { minLength: 1, maxLength: 25 }), async (ops) => {
      const rig = await makeRig(dir, [{}, { writeMostly: true }], { writeBehind: 8 })
      let mirror = rig.mirror
      try {
        await mirror.track('p', { path: join(rig.dir, 'p') })
        const model = new Set<number>()
        for (const o of ops) {
          if (o.kind === 'checkpoint') {
            // A behind write is in flight until the write-mostly member has it, and keeps its bits.
            await until(() => mirror.stats().behindInFlight === 0, 10_000, 'behind writes to end')
            const cleared = await mirror.checkpoint('p')
            if (JSON.stringify(chunksOf(cleared)) !== JSON.stringify([...model].sort((a, b) => a - b))) return false
            model.clear()
          } else if (o.kind === 'reopen') {
            await mirror.close()
            mirror = await Mirror.open({ bitmap: rig.bitmapPath, openMember: rig.openMember })
          } else {
            const offset = o.page * 4 * KiB
            const length = Math.min(o.pages * 4 * KiB, MiB - offset)
            if (o.kind === 'write') await mirror.write(allocAligned(length).fill(o.page & 0xff), offset)
            else await mirror[o.kind as 'discard' | 'writeZeroes'](offset, length)
            for (let c = Math.floor(offset / CHUNK); c <= Math.floor((offset + length - 1) / CHUNK) && c < chunks; c++) model.add(c)
          }
        }
        const expected = [...model].sort((a, b) => a - b)
        return JSON.stringify(chunksOf(mirror.changes('p'))) === JSON.stringify(expected) && JSON.stringify(await onDiskChunks(join(rig.dir, 'p'))) === JSON.stringify(expected)
      } finally {
        runs++
        await mirror.close().catch(() => {})
      }
    }),
    { numRuns: 25 },
  )
  t.is(runs >= 25, true)
})

test('property, concurrent: checkpoints among writes in flight lose no change', async (t) => {
  const op = fc.oneof(
    { weight: 4, arbitrary: fc.record({ kind: fc.constantFrom('write', 'discard'), page: fc.integer({ min: 0, max: MiB / (4 * KiB) - 1 }), pages: fc.integer({ min: 1, max: 24 }), gap: fc.integer({ min: 0, max: 2 }) }) },
    { weight: 1, arbitrary: fc.record({ kind: fc.constant('checkpoint'), gap: fc.integer({ min: 0, max: 2 }) }) },
  )
  const delays = fc.tuple(fc.integer({ min: 0, max: 3 }), fc.integer({ min: 0, max: 6 }))
  let runs = 0
  await fc.assert(
    fc.asyncProperty(fc.array(op, { minLength: 2, maxLength: 30 }), delays, async (ops, [d0, d1]) => {
      const rig = await makeRig(dir, [{ delayMs: d0 }, { writeMostly: true, delayMs: d1 }], { writeBehind: 8 })
      const { mirror } = rig
      try {
        await mirror.track('p', { path: join(rig.dir, 'p') })
        let clock = 0
        const writes: { chunks: number[]; called: number; resolved: number }[] = []
        const checkpoints: { cleared: Set<number>; resolved: number }[] = []
        const running: Promise<unknown>[] = []
        for (const o of ops) {
          if (o.kind === 'checkpoint') {
            running.push(mirror.checkpoint('p').then((r) => void checkpoints.push({ cleared: new Set(chunksOf(r)), resolved: ++clock })))
          } else {
            const offset = o.page * 4 * KiB
            const length = Math.min(o.pages * 4 * KiB, MiB - offset)
            const w = { chunks: chunksOf([{ offset: Math.floor(offset / CHUNK) * CHUNK, length: Math.ceil((offset + length) / CHUNK) * CHUNK - Math.floor(offset / CHUNK) * CHUNK }]), called: ++clock, resolved: Infinity }
            writes.push(w)
            const p = o.kind === 'write' ? mirror.write(allocAligned(length).fill(o.page & 0xff), offset) : mirror.discard(offset, length)
            running.push(p.then(() => void (w.resolved = ++clock)))
          }
          if (o.gap) await new Promise((r) => setTimeout(r, o.gap))
        }
        await Promise.all(running)
        const final = new Set(chunksOf(mirror.changes('p')))
        const last = checkpoints.length ? checkpoints[checkpoints.length - 1].resolved : -1
        for (const w of writes) {
          // Acknowledged after the last checkpoint resolved: it was in flight or started after the clear.
          if (w.resolved > last && !w.chunks.every((c) => final.has(c))) return false
          // Every change is in the final set or cleared by a checkpoint that resolved after the write was called.
          const later = checkpoints.filter((c) => c.resolved > w.called)
          if (!w.chunks.every((c) => final.has(c) || later.some((cp) => cp.cleared.has(c)))) return false
        }
        const written = new Set(writes.flatMap((w) => w.chunks))
        return [...final].every((c) => written.has(c))
      } finally {
        runs++
        await mirror.close().catch(() => {})
      }
    }),
    { numRuns: 30 },
  )
  t.is(runs >= 30, true)
})

test.serial('SIGKILL while writes and checkpoints run, until 5 kills landed between checkpoints: every chunk written since the last checkpoint is set', async (t) => {
  const d = join(dir, 'crash')
  mkdirSync(d)
  const bitmap = join(d, 'bitmap')
  const created = await Mirror.create({ bitmap, members: [{ path: join(d, 'a.img') }, { path: join(d, 'b.img') }], size: 4 * MiB, chunkSize: CHUNK, daemonSleep: 1 })
  await created.track('bk', { path: join(d, 'bk') })
  await created.close()
  const seed = replaySeed(t, 'MD_BITMAP_TRACKING_CRASH_SEED')
  const prng = new Prng(seed)
  t.teardown(killRunning)
  const kills = { between: 0, midStale: 0, midUnreported: 0 }
  let writesChecked = 0
  for (let round = 0; kills.between < 5 && round < 30; round++) {
    const child = startCrashChild('tracking-writer.ts', [bitmap, String(seed + round)])
    await child.waitFor('ready', 30_000)
    await until(() => child.lines.filter((l) => l === 'C done').length >= 2 + prng.below(6), 20_000, 'checkpoints to be taken')
    await new Promise((r) => setTimeout(r, prng.below(20)))
    t.is(await child.kill(), 'SIGKILL', child.stderr)
    const lastDone = child.lines.lastIndexOf('C done')
    const mid = child.lines.lastIndexOf('C start') > lastDone
    const onDisk = await readBitmapFile(join(d, 'bk'))
    const mirror = await Mirror.open({ bitmap })
    const set = new Set(chunksOf(mirror.changes('bk')))
    await mirror.close()
    if (mid) {
      // Killed during a checkpoint: cut before its end, the file is STALE (every bit
      // set when reopened); else it ended on disk and only its report was lost, so no
      // write before it can be asked for (the caller takes a full backup next).
      if (onDisk.rawState & STATE_STALE) {
        kills.midStale++
        t.is(set.size, (4 * MiB) / CHUNK, `round ${round}: a checkpoint cut short leaves every bit set`)
      } else kills.midUnreported++
      continue
    }
    kills.between++
    // Issued after the last checkpoint, and acknowledged: surely written since (a
    // logged write may have been killed before it was issued).
    const acked = new Set(child.lines.filter((l) => l.startsWith('A ')).map((l) => l.slice(2)))
    const since = child.lines.slice(lastDone + 1).filter((l) => l.startsWith('W ') && acked.has(l.split(' ')[1]))
    const expected = sorted(
      since.flatMap((l) => {
        const [, , offset, length] = l.split(' ').map(Number)
        return chunksOf([{ offset: Math.floor(offset / CHUNK) * CHUNK, length: Math.ceil((offset + length) / CHUNK) * CHUNK - Math.floor(offset / CHUNK) * CHUNK }])
      }),
    )
    t.deepEqual(
      expected.filter((c) => !set.has(c)),
      [],
      `round ${round}: ${since.length} writes acknowledged since the last checkpoint, none lost`,
    )
    writesChecked += since.length
  }
  t.log(`kills: ${JSON.stringify(kills)}; ${writesChecked} acknowledged writes checked`)
  t.true(kills.between >= 5 && writesChecked > 0, 'kills landed between checkpoints, with writes to check')
})
