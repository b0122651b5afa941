/**
 * Member failures and recovery: real errors where the kernel can produce them (a
 * member on a small loop-mounted ext4 that fills up: ENOSPC; a member that is a loop
 * device shrunk under the mirror with `losetup -c`: writes and reads past its new end
 * fail), and a fault-injecting member wrapper (helpers/members.ts ProbeMember) for what
 * a device cannot be made to do on demand: fail one chosen read, or fail the writes
 * of the only member that is not write-mostly.
 *
 * After each failure: the member is faulty, the mirror degraded, writes go on, no bit
 * is cleared; then reAdd copies only the chunks written while degraded (or everything,
 * where the history does not allow less), and the members are byte-identical.
 *
 * (`losetup -d` on a device the mirror holds open does not fail anything: the kernel
 * defers the detach until the last close. Shrinking is how a loop device fails I/O.)
 */
import test from 'ava'
import { readFileSync, rmSync, statfsSync, truncateSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { MdBitmapError, Mirror, allocAligned, type ResyncProgress } from '../src'
import { daemonPass } from '../src/bitmap/testing'
import { fsCaps, requires } from './helpers/env'
import { readDisk } from './helpers/mdadm'
import { MemberControl } from './helpers/members'
import { KiB, MiB, codeOf, makeRig, onDisk, pattern, rigParent, sameBytes } from './helpers/mirror'
import { removeDir } from './helpers/tmp'
import { until } from './helpers/wait'
import { sh, withFs, withLoopDevice } from './helpers/loopfs'
import { deviceSize } from './helpers/io'

const parent = rigParent('md-mirror-fail-')
test.after.always(() => removeDir(parent))

const CS = 64 * KiB

function chunksOf(offset: number, length: number): number[] {
  const out: number[] = []
  for (let c = Math.floor(offset / CS); c <= Math.floor((offset + length - 1) / CS); c++) out.push(c)
  return out
}

/** The members' files (or devices) compared whole, with O_DIRECT. */
function assertIdentical(t: import('ava').ExecutionContext, paths: string[], size: number): void {
  const first = onDisk(paths[0], 0, size)
  for (const p of paths.slice(1)) {
    const other = onDisk(p, 0, size)
    const same = first.equals(other)
    t.true(same, `${p} is byte-identical to ${paths[0]}${same ? '' : ` (first difference at ${first.findIndex((b, i) => b !== other[i])})`}`)
  }
}

async function daemonPasses(m: Mirror, n = 3): Promise<void> {
  for (let i = 0; i < n; i++) await daemonPass(m.bitmap!)
}

// ---------------------------------------------------------------------------------
// Real errors

const tfull = requires([...fsCaps('ext4'), 'truncate', 'dd'])
tfull('a member on a filesystem that fills up (ENOSPC) becomes faulty; writes go on; no bit clears; reAdd copies only the chunks written while degraded', async (t) => {
  await withFs('ext4', 16, async (mnt) => {
    const SIZE = 32 * MiB // bigger than the filesystem under member 1
    const big = join(mnt, 'm1.img')
    truncateSync(writeAndClose(big), SIZE)
    // Leave about 2 MiB free.
    const st = statfsSync(mnt)
    const fill = Math.floor((st.bavail * st.bsize) / MiB) - 2
    t.true(fill > 0, `${st.bavail} blocks free`)
    sh('dd', ['if=/dev/zero', `of=${join(mnt, 'filler')}`, 'bs=1M', `count=${fill}`, 'conv=fsync', 'status=none'])
    const r = await makeRig(parent, [{}, {}], { size: SIZE, memberPaths: [undefined, big], assumeClean: true })
    const m = r.mirror
    try {
      const faulty: { index: number; error: MdBitmapError }[] = []
      m.on('member-faulty', (e) => faulty.push(e))
      // Before the failure: both members take the writes.
      const early = pattern(64 * KiB, 1)
      await m.write(early, 0)
      // Fill it: 256 KiB writes, one chunk apart, until member 1 fails.
      const W = 256 * KiB
      const writtenDegraded = new Set<number>()
      let off = 4 * MiB
      while (m.members[1].state === 'in-sync' && off < SIZE) {
        await m.write(pattern(W, off / W), off) // succeeds: member 0 has it
        sameBytes(t, onDisk(r.paths[0], off, W), Buffer.from(pattern(W, off / W)), 'member 0 has every write')
        if (m.members[1].state !== 'in-sync') for (const c of chunksOf(off, W)) writtenDegraded.add(c)
        off += W
      }
      t.is(m.members[1].state, 'faulty', `member 1 failed (after ${(off - 4 * MiB) / MiB} MiB)`)
      t.is(m.members[1].error?.code, 'ENOSPC', `with ENOSPC: ${m.members[1].error?.message}`)
      t.is(faulty.length, 1)
      t.is(faulty[0].index, 1)
      t.true(m.degraded)
      t.is(m.stats().memberFailures, 1)
      t.is(JSON.parse(readFileSync(r.metaPath, 'utf8')).members[1].state, 'faulty', 'recorded in the metadata')

      // More writes while degraded, to chunks far apart.
      for (const c of [150, 200, 300]) {
        await m.write(pattern(16 * KiB, c), c * CS)
        writtenDegraded.add(c)
      }
      t.is(r.ctl[1].writesStarted, r.ctl[1].writesDone + 1, 'nothing more went to the faulty member after its failure')
      // No bit is cleared while degraded: not even those of writes that both members had.
      await daemonPasses(m, 4)
      const disk = readDisk(r.bitmapPath)
      t.true(disk.bit(0), 'the early chunk stays dirty while degraded')
      for (const c of writtenDegraded) t.true(disk.bit(c), `chunk ${c} stays dirty`)

      // Make room and bring it back.
      rmSync(join(mnt, 'filler'))
      const report = await m.reAdd(1)
      t.log(`reAdd: ${report.recovery}, ${report.chunksCopied} chunks ${JSON.stringify(report.chunks)}`)
      t.is(report.recovery, 'bitmap')
      t.deepEqual(report.chunks, [...writtenDegraded].sort((a, b) => a - b), 'only the chunks written while degraded were copied')
      t.is(report.bytesCopied, writtenDegraded.size * CS)
      t.deepEqual(report.recovered, [1])
      t.deepEqual(m.members.map((x) => x.state), ['in-sync', 'in-sync'])
      t.false(m.degraded)
      await daemonPasses(m, 3)
      t.deepEqual(readDisk(r.bitmapPath).dirtyList(SIZE / CS), [], 'in sync again: every bit clears')
      await m.close()
      assertIdentical(t, r.paths, SIZE)
    } finally {
      await m.close().catch(() => {})
    }
  }, { mkfsArgs: ['-b', '4096', '-m', '0'] })
})

function writeAndClose(p: string): string {
  writeFileSync(p, '')
  return p
}

const tdev = requires(['root', 'loop', 'losetup', 'truncate'])
tdev('a member that is a loop device shrunk under the mirror fails its writes; reAdd after it grows back copies only the chunks written meanwhile', async (t) => {
  const SIZE = 4 * MiB
  await withLoopDevice(SIZE, async (dev, image) => {
    const r = await makeRig(parent, [{}, {}], { size: SIZE, memberPaths: [undefined, dev], assumeClean: true })
    const m = r.mirror
    try {
      await m.write(pattern(128 * KiB, 1), 0)
      // The device loses its last 3 MiB.
      truncateSync(image, MiB)
      sh('losetup', ['-c', dev])
      t.is(deviceSize(dev), MiB)
      await m.write(pattern(64 * KiB, 2), 2 * MiB) // past the device's new end
      t.is(m.members[1].state, 'faulty')
      t.true(['ENOSPC', 'EIO'].includes(m.members[1].error!.code), `the device failed the write: ${JSON.stringify(m.members[1].error)}`)
      sameBytes(t, onDisk(r.paths[0], 2 * MiB, 64 * KiB), Buffer.from(pattern(64 * KiB, 2)), 'the write reached member 0')
      await m.write(pattern(4 * KiB, 3), 3 * MiB)
      await daemonPasses(m)
      t.deepEqual(readDisk(r.bitmapPath).dirtyList(SIZE / CS), [0, 1, 32, 48], 'every written chunk stays dirty while degraded')

      // The device grows back (the lost part reads as zeros, as it was before any write there).
      truncateSync(image, SIZE)
      sh('losetup', ['-c', dev])
      const report = await m.reAdd(1)
      t.is(report.recovery, 'bitmap')
      t.deepEqual(report.chunks, [32, 48])
      t.deepEqual(m.members.map((x) => x.state), ['in-sync', 'in-sync'])
      await m.close()
      assertIdentical(t, [r.paths[0], dev], SIZE)
    } finally {
      await m.close().catch(() => {})
    }
  })
})

tdev('a real read error (past the end of a shrunk loop device) falls through to the other member and marks the device faulty', async (t) => {
  const SIZE = 4 * MiB
  await withLoopDevice(SIZE, async (dev, image) => {
    const r = await makeRig(parent, [{}, {}], { size: SIZE, memberPaths: [dev], assumeClean: true })
    const m = r.mirror
    try {
      const data = pattern(64 * KiB, 9)
      await m.write(data, 0) // both members, within the part of the device that stays
      truncateSync(image, MiB)
      sh('losetup', ['-c', dev])
      // Round robin: of two reads, one goes to the device first and fails.
      const back = allocAligned(8 * KiB)
      for (let i = 0; i < 2; i++) {
        await m.read(back, 2 * MiB)
        sameBytes(t, Buffer.from(back), Buffer.alloc(8 * KiB), 'the read returned member 1 data (zeros there)')
      }
      t.is(m.members[0].state, 'faulty', 'the device failed a read')
      t.truthy(m.members[0].error?.code)
      t.log(`device read error: ${JSON.stringify(m.members[0].error)}`)
      t.is(r.ctl[1].reads, 2, 'member 1 served both reads')
      const again = allocAligned(64 * KiB)
      await m.read(again, 0)
      sameBytes(t, again, data)
    } finally {
      await m.close().catch(() => {})
    }
  })
})

// ---------------------------------------------------------------------------------
// Injected faults

test('an injected read error falls through to the next member (write-mostly as the last resort) and the failing member becomes faulty', async (t) => {
  const r = await makeRig(parent, [{}, { writeMostly: true }], { writeBehind: 16 })
  const m = r.mirror
  t.teardown(() => m.close().catch(() => {}))
  const data = pattern(128 * KiB, 11)
  await m.write(data, 2 * CS)
  await r.ctl[1].idle()
  r.ctl[0].failRead = () => true
  const back = allocAligned(128 * KiB)
  await m.read(back, 2 * CS)
  sameBytes(t, back, data, 'the read succeeded from the write-mostly member')
  t.is(r.ctl[1].reads, 1)
  t.is(m.members[0].state, 'faulty')
  t.is(m.members[0].error?.code, 'EIO')
  t.regex(m.members[0].error!.message, /injected read error/)
  t.true(m.degraded)
  // The faulty member is no longer tried.
  await m.read(back, 0)
  t.is(r.ctl[1].reads, 2)
  // Its data was never wrong: a reAdd finds nothing written while it was out.
  r.ctl[0].failRead = null
  const report = await m.reAdd(0)
  t.is(report.recovery, 'bitmap')
  t.deepEqual(report.chunks, [])
  t.deepEqual(m.members.map((x) => x.state), ['in-sync', 'in-sync'])
  await m.read(back, 2 * CS)
  t.is(r.ctl[0].reads, 1, 'member 0 serves reads again')

  // Every member that could serve failing: EMIRROR_READ, and no member in sync is left.
  r.ctl[0].failRead = () => true
  r.ctl[1].failRead = () => true
  t.is(await codeOf(m.read(back, 0)), 'EMIRROR_READ')
  t.is(await codeOf(m.read(back, 0)), 'EMIRROR_FAILED', 'then nothing is left to read from')
})

for (const writeBehind of [16, 0]) {
  test(`the only non-write-mostly member fails its write (writeBehind ${writeBehind}): the write rejects EMIRROR_WRITE; later writes are acked by the write-mostly member; reAdd copies just those chunks`, async (t) => {
    const r = await makeRig(parent, [{}, { writeMostly: true, delayMs: 50 }], { writeBehind })
    const m = r.mirror
    t.teardown(() => m.close().catch(() => {}))
    await m.write(pattern(64 * KiB, 1), 0)
    await m.write(pattern(64 * KiB, 2), CS)
    // Their behind writes complete first: an endWrite that comes while degraded marks its chunk too.
    await r.ctl[1].idle()
    r.ctl[0].failWrite = () => true
    const e = await t.throwsAsync(m.write(pattern(32 * KiB, 3), 4 * CS), { instanceOf: MdBitmapError })
    t.is(e?.code, 'EMIRROR_WRITE', e?.message)
    await r.ctl[1].idle()
    t.true(r.ctl[1].completed.includes(4 * CS), 'the write-mostly member has the rejected write: not enough to acknowledge it')
    t.is(m.members[0].state, 'faulty')
    t.true(readDisk(r.bitmapPath).bit(4), 'the failed write\'s chunk is dirty')

    // Now the write-mostly member is the one that acknowledges: synchronously.
    const later = pattern(16 * KiB, 4)
    await m.write(later, 6 * CS)
    t.true(r.ctl[1].completed.includes(6 * CS), 'acked only once the write-mostly member had it')
    await m.write(pattern(16 * KiB, 5), 7 * CS + 16 * KiB)
    const back = allocAligned(16 * KiB)
    await m.read(back, 6 * CS)
    sameBytes(t, back, later, 'reads come from the write-mostly member')
    await daemonPasses(m)
    t.deepEqual(readDisk(r.bitmapPath).dirtyList(16), [0, 1, 4, 6, 7], 'nothing clears while degraded')

    r.ctl[0].failWrite = null
    const report = await m.reAdd(0)
    t.is(report.recovery, 'bitmap')
    t.deepEqual(report.chunks, [4, 6, 7], 'the chunks of the failed write and of the writes made while degraded')
    t.is(report.source, 1)
    t.deepEqual(report.recovered, [0])
    await m.close()
    assertIdentical(t, r.paths, MiB)
  })
}

test('the write-mostly member fails a behind write after the ack: the caller saw success; the member becomes faulty and its chunk stays dirty until reAdd copies it', async (t) => {
  const r = await makeRig(parent, [{}, { writeMostly: true, delayMs: 20 }], { writeBehind: 16 })
  const m = r.mirror
  const slow = r.ctl[1]
  t.teardown(() => (slow.release(), m.close().catch(() => {})))
  await m.write(pattern(64 * KiB, 1), 0)
  await slow.idle()
  const faulty: number[] = []
  m.on('member-faulty', (e) => faulty.push(e.index))
  slow.failWrite = () => true
  slow.hold()
  await m.write(pattern(16 * KiB, 2), 3 * CS) // behind: acked on the fast member alone
  t.is(m.stats().behindWrites, 2)
  t.is(m.members[1].state, 'in-sync', 'the slow member has not failed yet when the caller is answered')
  slow.release()
  await slow.idle()
  // The event follows the state change on a later tick (MirrorEvents).
  await until(() => m.members[1].state === 'faulty' && faulty.length > 0, 5000, "member 1 to become faulty, and 'member-faulty' to be emitted")
  t.deepEqual(faulty, [1])
  t.regex(m.members[1].error!.message, /injected write error/)
  t.true(m.stats().degraded)
  // Degraded: nothing goes behind (no write-mostly member is active), and no bit clears.
  await m.write(pattern(16 * KiB, 3), 5 * CS)
  t.is(m.stats().behindWrites, 2)
  await until(() => m.stats().behindInFlight === 0, 5000, 'behind writes to end')
  await daemonPasses(m)
  t.deepEqual(readDisk(r.bitmapPath).dirtyList(16), [0, 3, 5])

  slow.failWrite = null
  const report = await m.reAdd(1)
  t.is(report.recovery, 'bitmap')
  t.deepEqual(report.chunks, [3, 5], 'the failed behind write\'s chunk and the one written while degraded')
  await daemonPasses(m)
  t.deepEqual(readDisk(r.bitmapPath).dirtyList(16), [], 'in sync again: the bits clear')
  await m.close()
  assertIdentical(t, r.paths, MiB)
})

test('a faulty member stays faulty across close and open; its reAdd then copies the chunks dirty on disk', async (t) => {
  const r = await makeRig(parent, [{}, {}])
  let m = r.mirror
  t.teardown(() => m.close().catch(() => {}))
  await m.write(pattern(64 * KiB, 1), 2 * CS)
  await daemonPasses(m)
  t.deepEqual(readDisk(r.bitmapPath).dirtyList(16), [], 'idle and in sync: clean')
  r.ctl[1].failWrite = () => true
  await m.write(pattern(64 * KiB, 2), 4 * CS)
  t.is(m.members[1].state, 'faulty')
  r.ctl[1].failWrite = null
  await m.write(pattern(4 * KiB, 3), 9 * CS)
  await m.close()
  t.deepEqual(readDisk(r.bitmapPath).dirtyList(16), [4, 9], 'a degraded close clears no bit')

  m = await Mirror.open({ bitmap: r.bitmapPath, openMember: r.openMember })
  t.deepEqual(m.members.map((x) => x.state), ['in-sync', 'faulty'], 'still faulty after open')
  t.true(m.degraded)
  t.is(m.members[1].error?.code, 'EIO')
  await m.write(pattern(4 * KiB, 4), 12 * CS)
  const report = await m.reAdd(1)
  t.is(report.recovery, 'bitmap')
  t.deepEqual(report.chunks, [4, 9, 12])
  await m.close()
  assertIdentical(t, r.paths, MiB)
})

test('membership errors: removing the last in-sync member, re-adding an in-sync one, adding a member twice, a second resync at once', async (t) => {
  const r = await makeRig(parent, [{}, {}])
  const m = r.mirror
  t.teardown(() => m.close().catch(() => {}))
  t.is(await codeOf(m.reAdd(0)), 'EMIRROR_MEMBER', 'an in-sync member cannot be re-added')
  t.is(await codeOf(m.addMember({ path: r.paths[1] })), 'EMIRROR_MEMBER', 'a member cannot be added twice')
  t.is(await codeOf(m.removeMember(5)), 'EINVAL')
  await m.removeMember(1)
  t.is(await codeOf(m.removeMember(0)), 'EMIRROR_LAST_MEMBER')
  t.deepEqual(m.members.map((x) => x.state), ['in-sync', 'removed'])
  for (const c of [0, 1, 2, 3]) await m.write(pattern(64 * KiB, c), c * CS)
  r.ctl[1].delayMs = 30
  let copying = false
  const readd = m.reAdd(1, { progressIntervalMs: 0, onProgress: () => (copying = true) })
  await until(() => copying, 5000, 'the recovery to copy')
  t.is(await codeOf(m.resync()), 'EMIRROR_BUSY')
  t.is(await codeOf(m.removeMember(1)), 'EMIRROR_BUSY')
  t.deepEqual((await readd).chunks, [0, 1, 2, 3])
  t.deepEqual(m.members.map((x) => x.state), ['in-sync', 'in-sync'])
})

test('a member re-added while another one\'s recovery runs gets a recovery of its own: the running one does not declare it in sync', async (t) => {
  const r = await makeRig(parent, [{}, {}, {}])
  const m = r.mirror
  t.teardown(() => (r.ctl[1].release(), m.close().catch(() => {})))
  await m.removeMember(2)
  await m.removeMember(1)
  const written = [1, 3, 5, 7, 9]
  for (const c of written) await m.write(pattern(64 * KiB, c), c * CS)
  let second: Promise<import('../src').ResyncReport> | undefined
  const first = m.reAdd(1, {
    progressIntervalMs: 0,
    onProgress: (p) => {
      if (p.chunksDone !== 2 || second) return
      // Member 1's recovery is held until member 2 is back and active.
      r.ctl[1].hold()
      second = m.reAdd(2)
    },
  })
  await until(() => m.members[2].state === 'recovering', 10000, 'member 2 to be re-added')
  r.ctl[1].release()
  const r1 = await first
  t.truthy(second, 'member 2 was re-added during member 1\'s recovery')
  const r2 = await second!
  t.log(`first recovery: ${JSON.stringify(r1.chunks)} recovered ${JSON.stringify(r1.recovered)}; second: ${JSON.stringify(r2.chunks)} recovered ${JSON.stringify(r2.recovered)}`)
  t.deepEqual(r1.recovered, [1])
  t.deepEqual(r2.recovered, [2])
  t.deepEqual(m.members.map((x) => x.state), ['in-sync', 'in-sync', 'in-sync'])
  await m.close()
  assertIdentical(t, r.paths, MiB)
})

// ---------------------------------------------------------------------------------
// Full recoveries

test('without a bitmap, reAdd is a full recovery', async (t) => {
  const r = await makeRig(parent, [{}, {}], { bitmap: null })
  const m = r.mirror
  t.teardown(() => m.close().catch(() => {}))
  t.is(m.bitmap, null)
  await m.write(pattern(64 * KiB, 1), 0)
  await m.removeMember(1)
  t.deepEqual(m.members.map((x) => x.state), ['in-sync', 'removed'])
  await m.write(pattern(64 * KiB, 2), 3 * CS)
  const report = await m.reAdd(1)
  t.is(report.recovery, 'full')
  t.is(report.chunksCopied, 16, 'every chunk')
  t.is(report.bytesCopied, MiB)
  await m.close()
  assertIdentical(t, r.paths, MiB)
})

test('a member whose full recovery was interrupted must recover fully again on reAdd; a forgotten slot is gone', async (t) => {
  const r = await makeRig(parent, [{}, {}], { writeBehind: 0 })
  const m = r.mirror
  t.teardown(() => m.close().catch(() => {}))
  for (let c = 0; c < 16; c += 3) await m.write(pattern(64 * KiB, c), c * CS)
  await m.removeMember(1, { forget: true })
  t.is(m.members.length, 1, 'the slot is dropped')
  t.is(await codeOf(m.reAdd(1)), 'EINVAL', 'a forgotten slot cannot be re-added')

  // Add a member back (a fresh file): a full recovery, aborted early.
  const path = join(r.dir, 'new.img')
  const ac = new AbortController()
  r.ctl[1] = Object.assign(new MemberControl(), { delayMs: 15 })
  const progress: ResyncProgress[] = []
  const e = await t.throwsAsync(
    m.addMember({ path }, { signal: ac.signal, progressIntervalMs: 0, onProgress: (p) => (progress.push(p), p.chunksDone >= 3 && ac.abort()) }),
    { instanceOf: MdBitmapError },
  )
  t.is(e?.code, 'EABORTED')
  t.is(m.members[1].state, 'recovering')
  t.true(m.degraded)
  t.is(progress.at(-1)!.chunksTotal, 16, 'a full recovery visits every chunk')

  await m.removeMember(1)
  t.is(m.members[1].state, 'removed')
  const report = await m.reAdd(1)
  t.is(report.recovery, 'full', 'the interrupted full recovery is not forgotten')
  t.is(report.chunksCopied, 16)
  t.deepEqual(m.members.map((x) => x.state), ['in-sync', 'in-sync'])
  await m.close()
  assertIdentical(t, [r.paths[0], path], MiB)
})
