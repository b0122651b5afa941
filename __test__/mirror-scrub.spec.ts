/**
 * Mirror scrub (`check`, md's check/repair sync actions): sectors corrupted with `dd`
 * behind the mirror's back are found (counted in 512-byte sectors, by chunk), repaired
 * from the resync source, and a second check finds nothing; writes going on during a
 * check (behind writes to a slow write-mostly member included) never show as
 * mismatches; progress, maxRate and abort; one sync action at a time; a degraded
 * mirror compares only its members in sync.
 */
import test from 'ava'
import { execFileSync } from 'node:child_process'
import { type CheckProgress } from '../src'
import { KiB, MiB, codeOf, makeRig, onDisk, pattern, rigParent, sameBytes, type Rig } from './helpers/mirror'
import { removeDir } from './helpers/tmp'
import { sleep, until } from './helpers/wait'

const parent = rigParent('md-mirror-scrub-')
test.after.always(() => removeDir(parent))

const CS = 64 * KiB

/** A rig whose every byte was written through the mirror, settled on every member. */
async function filledRig(members: Parameters<typeof makeRig>[1], size = MiB): Promise<{ rig: Rig; data: Uint8Array }> {
  const rig = await makeRig(parent, members, { size, writeBehind: 64 })
  const data = pattern(size, 7)
  for (let o = 0; o < size; o += 256 * KiB) await rig.mirror.write(data.subarray(o, o + 256 * KiB), o)
  await rig.mirror.flush()
  await Promise.all(rig.ctl.map((c) => c.idle()))
  return { rig, data }
}

/** Overwrites `sectors` 512-byte sectors at byte `offset` of `file` with `dd`, behind the mirror's back. */
function ddCorrupt(file: string, offset: number, sectors: number): void {
  execFileSync('dd', ['if=/dev/urandom', `of=${file}`, 'bs=512', `seek=${offset / 512}`, `count=${sectors}`, 'conv=notrunc,fsync', 'status=none'])
}

test('check finds 3 sectors corrupted with dd in two chunks of one member; repair fixes them; a second check finds none', async (t) => {
  const { rig, data } = await filledRig([{}, { writeMostly: true }])
  const m = rig.mirror
  t.teardown(() => m.close().catch(() => {}))
  const size = m.size

  const clean = await m.check()
  t.like(clean, { mismatchSectors: 0, mismatchedChunks: [], chunksChecked: size / CS, chunksTotal: size / CS, bytesChecked: size, bytesRead: 2 * size, repaired: 0, source: 0 })
  t.deepEqual(clean.members, [0, 1], 'the write-mostly member is read too')

  // Two sectors in chunk 3, one in chunk 10, of the write-mostly member.
  ddCorrupt(rig.paths[1], 3 * CS + 1024, 2)
  ddCorrupt(rig.paths[1], 10 * CS + 60 * KiB, 1)
  t.false(onDisk(rig.paths[1], 0, size).equals(onDisk(rig.paths[0], 0, size)), 'the members differ now')

  const found = await m.check()
  t.is(found.mismatchSectors, 3)
  t.deepEqual(found.mismatchedChunks, [3, 10])
  t.is(found.repaired, 0)
  t.is(found.chunksChecked, size / CS)
  t.false(onDisk(rig.paths[1], 0, size).equals(onDisk(rig.paths[0], 0, size)), 'a check alone changes nothing')

  const repaired = await m.check({ repair: true })
  t.is(repaired.mismatchSectors, 3)
  t.deepEqual(repaired.mismatchedChunks, [3, 10])
  t.is(repaired.repaired, 2)
  for (const p of rig.paths) sameBytes(t, onDisk(p, 0, size), data, `${p} holds what was written`)

  const again = await m.check()
  t.is(again.mismatchSectors, 0)
  t.deepEqual(again.mismatchedChunks, [])
})

test('a corrupted source is found too, and with 3 members a sector counts once however many members differ there', async (t) => {
  const { rig } = await filledRig([{}, {}, { writeMostly: true }], 512 * KiB)
  const m = rig.mirror
  t.teardown(() => m.close().catch(() => {}))
  // The same sector of the source (member 0) differs from both others: one sector.
  ddCorrupt(rig.paths[0], 5 * CS, 1)
  // A sector of chunk 7 differs on two members at once: still one sector.
  ddCorrupt(rig.paths[1], 7 * CS + 512, 1)
  ddCorrupt(rig.paths[2], 7 * CS + 512, 1)
  const r = await m.check()
  t.is(r.mismatchSectors, 2)
  t.deepEqual(r.mismatchedChunks, [5, 7])
  t.deepEqual(r.members, [0, 1, 2])
  // Repair copies from the source, as md does: afterwards the members agree.
  await m.check({ repair: true })
  t.is((await m.check()).mismatchSectors, 0)
  const a = onDisk(rig.paths[0], 0, m.size)
  for (const p of rig.paths.slice(1)) t.true(onDisk(p, 0, m.size).equals(a), p)
})

test('writes going on during a check, behind writes to a slow write-mostly member included, are never a false mismatch (20 runs)', async (t) => {
  t.timeout(120_000)
  const { rig } = await filledRig([{}, { writeMostly: true, delayMs: 2 }], 2 * MiB)
  const m = rig.mirror
  t.teardown(() => m.close().catch(() => {}))
  let stop = false
  let written = 0
  let seed = 100
  const writer = async () => {
    while (!stop) {
      const len = (1 + (seed % 8)) * 4 * KiB
      const offset = Math.floor(((seed * 2654435761) >>> 0) % ((m.size - len) / 4096)) * 4096
      await m.write(pattern(len, seed++), offset)
      written++
    }
  }
  const writers = [writer(), writer(), writer()]
  try {
    for (let run = 0; run < 20; run++) {
      const before = written
      const r = await m.check()
      t.is(r.mismatchSectors, 0, `run ${run}: chunks ${r.mismatchedChunks.join(',')}`)
      t.is(r.chunksChecked, m.size / CS)
      t.true(written > before, `run ${run}: writes went on during the check`)
    }
  } finally {
    stop = true
    await Promise.all(writers)
  }
  t.true(m.stats().behindWrites > 0, 'some writes went behind')
  // And the check can fail here: corrupt one sector, it is seen.
  await until(() => m.stats().behindInFlight === 0, 10_000, 'behind writes to drain')
  ddCorrupt(rig.paths[1], 3 * CS, 1)
  t.is((await m.check()).mismatchSectors, 1)
})

test('progress is sane and monotonic; maxRate throttles; an abort rejects EABORTED and the mirror goes on', async (t) => {
  const { rig } = await filledRig([{}, { writeMostly: true }])
  const m = rig.mirror
  t.teardown(() => m.close().catch(() => {}))
  const total = m.size / CS

  // Throttled to 1 MiB/s, a 1 MiB mirror takes about a second (the first chunk is free).
  const ps: CheckProgress[] = []
  const t0 = Date.now()
  const r = await m.check({ maxRate: MiB, progressIntervalMs: 0, onProgress: (p) => ps.push(p) })
  const took = Date.now() - t0
  t.true(took >= ((m.size - CS) * 1000) / MiB - 50, `throttled: ${took} ms`)
  t.true(took < 10_000, `not stuck: ${took} ms`)
  t.is(r.mismatchSectors, 0)
  t.true(ps.length >= total, `progress per chunk (${ps.length})`)
  for (const [i, p] of ps.entries()) {
    t.is(p.chunksTotal, total)
    t.is(p.bytesTotal, m.size)
    t.is(p.bytesChecked, p.chunksDone * CS)
    t.is(p.bytesRead, 2 * p.bytesChecked)
    t.true(Number.isFinite(p.rate) && p.rate >= 0)
    if (i > 0) t.true(p.chunksDone >= ps[i - 1].chunksDone && p.elapsedMs >= ps[i - 1].elapsedMs, 'monotonic')
  }
  t.is(ps.at(-1)!.chunksDone, total, 'the last progress call says done')

  // Abort at chunk 4 of a slow check.
  const ac = new AbortController()
  const seen: CheckProgress[] = []
  const e = await t.throwsAsync(
    m.check({
      maxRate: 256 * KiB,
      signal: ac.signal,
      progressIntervalMs: 0,
      onProgress: (p) => {
        seen.push(p)
        if (p.chunksDone === 4) ac.abort()
      },
    }),
  )
  t.is((e as { code?: string }).code, 'EABORTED')
  t.is(seen.at(-1)!.chunksDone, 4, 'no chunk compared after the abort')
  // The sync slot is free again, writes go on, and a check runs to the end.
  await m.write(pattern(4096, 3), 0)
  t.is((await m.check()).chunksChecked, total)
  // An abort while it sleeps for maxRate ends it at once.
  const ac2 = new AbortController()
  const slow = m.check({ maxRate: 1024, signal: ac2.signal })
  await sleep(100)
  const t1 = Date.now()
  ac2.abort()
  t.is(await codeOf(slow), 'EABORTED')
  t.true(Date.now() - t1 < 1000, 'the throttle sleep is aborted')
  t.is(await codeOf(m.check({ maxRate: 0 })), 'EINVAL')
})

test('one sync action at a time: check during a resync and resync during a check are EMIRROR_BUSY; close aborts a check', async (t) => {
  const { rig } = await filledRig([{}, {}])
  const m = rig.mirror
  t.teardown(() => m.close().catch(() => {}))

  // A resync held on member 1's writes.
  await m.bitmap!.markNeeded(0, m.size)
  rig.ctl[1].hold()
  const resync = m.resync()
  await until(() => rig.ctl[1].writesInFlight > 0, 5000, 'the resync to write')
  t.is(await codeOf(m.check()), 'EMIRROR_BUSY')
  rig.ctl[1].release()
  await resync

  const slow = m.check({ maxRate: 64 * KiB })
  await sleep(50)
  t.is(await codeOf(m.resync()), 'EMIRROR_BUSY')
  t.is(await codeOf(m.check()), 'EMIRROR_BUSY')
  t.is(await codeOf(m.removeMember(1)), 'EMIRROR_BUSY')
  await m.close()
  t.is(await codeOf(slow), 'EABORTED', 'close aborts the check')
})

test('a degraded mirror: only members in sync are compared; with one left, EMIRROR_MEMBER', async (t) => {
  const { rig } = await filledRig([{}, {}, { writeMostly: true }], 512 * KiB)
  const m = rig.mirror
  t.teardown(() => m.close().catch(() => {}))
  // Member 1 is removed; what it holds now is not read.
  await m.removeMember(1)
  ddCorrupt(rig.paths[1], 0, 8)
  const r = await m.check()
  t.deepEqual(r.members, [0, 2])
  t.is(r.mismatchSectors, 0)
  t.is(r.bytesRead, 2 * m.size)
  await m.removeMember(2)
  t.is(await codeOf(m.check()), 'EMIRROR_MEMBER')
  // Back in sync through a bitmap recovery, which copies only the chunks written
  // meanwhile (none): the check finds what was changed behind the mirror's back.
  t.is((await m.reAdd(1)).recovery, 'bitmap')
  const back = await m.check()
  t.deepEqual(back.members, [0, 1])
  t.is(back.mismatchSectors, 8)
  t.deepEqual(back.mismatchedChunks, [0])
})

test('a member whose read fails during a check becomes faulty; the check goes on with the others', async (t) => {
  const { rig } = await filledRig([{}, {}, {}], 512 * KiB)
  const m = rig.mirror
  t.teardown(() => m.close().catch(() => {}))
  rig.ctl[2].failRead = (offset) => offset >= 4 * CS
  ddCorrupt(rig.paths[1], 6 * CS, 2)
  const r = await m.check()
  t.is(m.members[2].state, 'faulty')
  t.is(r.mismatchSectors, 2)
  t.deepEqual(r.mismatchedChunks, [6])
  t.is(r.chunksChecked, m.size / CS)
})
