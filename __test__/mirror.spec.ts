/**
 * The Mirror's behaviour on real files: create/open and its metadata, argument errors,
 * write-behind (the slow-member pitfall, the writeBehind limit, the memory budget,
 * buffer reuse, ordering on the slow member) and reads (freshness with behind writes
 * in flight, balancing).
 *
 * Members are files in a temporary directory on a disk filesystem, each wrapped in a
 * ProbeMember (helpers/members.ts) that counts I/O and can delay write completions
 * (SlowMember). Everything a test claims about the disk is read back with O_DIRECT,
 * not through the library.
 */
import test from 'ava'
import { mkdirSync, readFileSync, readdirSync, statSync, truncateSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { MdBitmapError, Mirror, allocAligned } from '../src'
import { daemonPass } from '../src/bitmap/testing'
import { readDisk } from './helpers/mdadm'
import { KiB, MiB, codeOf, makeRig, onDisk, pattern, rigParent, sameBytes } from './helpers/mirror'
import { removeDir } from './helpers/tmp'
import { until } from './helpers/wait'

const parent = rigParent('md-mirror-spec-')
test.after.always(() => removeDir(parent))

const CS = 64 * KiB

// ---------------------------------------------------------------------------------
// Basics

test('create, write, close, open: the data, geometry, roles and states come back; the metadata is replaced atomically', async (t) => {
  const r = await makeRig(parent, [{}, { writeMostly: true }], { writeBehind: 8 })
  const m = r.mirror
  t.is(m.size, MiB)
  t.is(m.chunkSize, CS)
  t.deepEqual(
    m.members.map((x) => [x.path, x.writeMostly, x.state]),
    [
      [r.paths[0], false, 'in-sync'],
      [r.paths[1], true, 'in-sync'],
    ],
  )
  const data = pattern(8 * KiB, 1)
  await m.write(data, 3 * CS + 4 * KiB)
  await m.flush()
  const before = statSync(r.metaPath).ino
  const events = m.events
  const uuid = m.uuid
  t.false(JSON.parse(readFileSync(r.metaPath, 'utf8')).clean, 'an open mirror is recorded as not cleanly shut down')
  await m.close()
  t.is(await codeOf(m.close()), 'no error', 'close twice is harmless')

  const j = JSON.parse(readFileSync(r.metaPath, 'utf8'))
  t.is(j.format, 'md-bitmap-mirror')
  t.true(j.clean, 'close records a clean shutdown')
  t.is(j.uuid, uuid)
  t.is(j.size, MiB)
  t.is(j.chunkSize, CS)
  t.deepEqual(
    j.members.map((x: { writeMostly: boolean; state: string; events: string }) => [x.writeMostly, x.state, x.events]),
    [
      [false, 'in-sync', String(events)],
      [true, 'in-sync', String(events)],
    ],
  )
  t.not(statSync(r.metaPath).ino, before, 'the metadata was replaced by a rename (a new inode), not rewritten in place')
  t.deepEqual(
    readdirSync(r.dir).filter((n) => /tmp/.test(n)),
    [],
    'no temporary file is left beside the metadata',
  )
  for (const p of r.paths) sameBytes(t, onDisk(p, 3 * CS + 4 * KiB, 8 * KiB), Buffer.from(data), `${p} holds the data`)
  t.is(readDisk(r.bitmapPath).dirtyList(16).length, 0, 'a clean close leaves no dirty bit')

  const m2 = await Mirror.open({ bitmap: r.bitmapPath, openMember: r.openMember })
  t.teardown(() => m2.close().catch(() => {}))
  t.is(m2.uuid, uuid)
  t.is(m2.size, MiB)
  t.is(m2.chunkSize, CS)
  t.true(m2.events > events, 'open bumps the event count')
  t.deepEqual(
    m2.members.map((x) => [x.index, x.path, x.writeMostly, x.state, x.events]),
    [
      [0, r.paths[0], false, 'in-sync', m2.events],
      [1, r.paths[1], true, 'in-sync', m2.events],
    ],
  )
  t.false(m2.needsResync, 'a clean shutdown needs no resync')
  t.false(m2.degraded)
  const back = allocAligned(8 * KiB)
  await m2.read(back, 3 * CS + 4 * KiB)
  sameBytes(t, back, data)
  t.is(m2.bitmap!.stats().maxWriteBehind, 8)
  const bs = m2.bitmap!.stats()
  t.deepEqual([m2.stats().engine, m2.stats().engineReason], [bs.engine, bs.engineReason], 'the mirror reports its bitmap\'s I/O engine')
  t.true(['uring', 'aio', 'threads'].includes(m2.stats().engine!))
  await m2.close()
})

test('a missing or corrupt metadata file is EMIRROR_METADATA, and a good one opens afterwards', async (t) => {
  const r = await makeRig(parent, [{}, {}])
  await r.mirror.close()
  const good = readFileSync(r.metaPath, 'utf8')

  t.is(await codeOf(Mirror.open({ bitmap: join(r.dir, 'nothing-here') })), 'EMIRROR_METADATA', 'no metadata beside the bitmap')
  const corrupt: [string, string][] = [
    ['not JSON', good.slice(0, good.length / 2)],
    ['empty', ''],
    ['another format', JSON.stringify({ ...JSON.parse(good), format: 'something-else' })],
    ['a future version', JSON.stringify({ ...JSON.parse(good), version: 99 })],
    ['no members', JSON.stringify({ ...JSON.parse(good), members: [] })],
    ['a bad member state', JSON.stringify({ ...JSON.parse(good), members: [{ ...JSON.parse(good).members[0], state: 'happy' }] })],
    ['events not a decimal string', JSON.stringify({ ...JSON.parse(good), events: 7 })],
    ['a bad uuid', JSON.stringify({ ...JSON.parse(good), uuid: 'xyz' })],
  ]
  for (const [what, text] of corrupt) {
    writeFileSync(r.metaPath, text)
    const e = await t.throwsAsync(Mirror.open({ bitmap: r.bitmapPath, openMember: r.openMember }), { instanceOf: MdBitmapError }, what)
    t.is(e?.code, 'EMIRROR_METADATA', `${what}: ${e?.message}`)
  }
  // Metadata of another mirror (a different size than the bitmap covers).
  writeFileSync(r.metaPath, JSON.stringify({ ...JSON.parse(good), size: 2 * MiB }))
  t.is(await codeOf(Mirror.open({ bitmap: r.bitmapPath, openMember: r.openMember })), 'EMIRROR_METADATA', 'metadata and bitmap disagree on the size')

  // Nothing was left open by the failed opens: the good metadata opens at once.
  writeFileSync(r.metaPath, good)
  const m = await Mirror.open({ bitmap: r.bitmapPath, openMember: r.openMember })
  t.deepEqual(m.members.map((x) => x.state), ['in-sync', 'in-sync'])
  await m.close()
})

test('a member smaller than the mirror is EMIRROR_MEMBER at create; at open it makes the mirror degraded', async (t) => {
  const dir = join(parent, 'small-member')
  mkdirSync(dir)
  const small = join(dir, 'small.img')
  writeFileSync(small, Buffer.alloc(256 * KiB))
  const e = await t.throwsAsync(
    Mirror.create({ bitmap: join(dir, 'bitmap'), members: [{ path: join(dir, 'a.img') }, { path: small }], size: MiB, chunkSize: CS }),
    { instanceOf: MdBitmapError },
  )
  t.is(e?.code, 'EMIRROR_MEMBER')
  t.regex(e!.message, /small\.img/, 'the message names the member')
  // Nothing was half-created: the same create with a big enough member works.
  truncateSync(small, MiB)
  const m = await Mirror.create({ bitmap: join(dir, 'bitmap'), members: [{ path: join(dir, 'a.img') }, { path: small }], size: MiB, chunkSize: CS, assumeClean: true })
  await m.close()

  // Shrunk while the mirror was down: the member is faulty at open, the mirror degraded.
  truncateSync(small, 512 * KiB)
  const m2 = await Mirror.open({ bitmap: join(dir, 'bitmap') })
  t.teardown(() => m2.close().catch(() => {}))
  t.is(m2.members[1].state, 'faulty')
  t.is(m2.members[1].error?.code, 'EMIRROR_MEMBER')
  t.is(m2.members[0].state, 'in-sync')
  t.true(m2.degraded)
  t.true(m2.stats().degraded)
  await m2.write(pattern(4 * KiB, 2), 0) // still writable
  await m2.close()
  t.is(JSON.parse(readFileSync(join(dir, 'bitmap.mirror.json'), 'utf8')).members[1].state, 'faulty', 'the failure is in the metadata')
})

test('argument errors: EALIGN, EOUT_OF_RANGE, EINVAL; an unaligned buffer address is bounced; ECLOSED after close', async (t) => {
  const r = await makeRig(parent, [{}, {}])
  const m = r.mirror
  t.teardown(() => m.close().catch(() => {}))
  const a = m.alignment
  t.true(a >= 512 && (a & (a - 1)) === 0, `alignment ${a}`)
  const page = pattern(4 * KiB, 3)
  t.is(await codeOf(m.write(page, a / 2)), 'EALIGN', 'unaligned offset')
  t.is(await codeOf(m.write(page.subarray(0, a + 1), 0)), 'EALIGN', 'unaligned length')
  t.is(await codeOf(m.read(allocAligned(a + 1), 0)), 'EALIGN', 'unaligned read length')
  t.is(await codeOf(m.read(allocAligned(4 * KiB), 100)), 'EALIGN', 'unaligned read offset')
  t.is(await codeOf(m.write(page, MiB - 2 * KiB)), 'EOUT_OF_RANGE', 'a write crossing the end')
  t.is(await codeOf(m.write(page, MiB)), 'EOUT_OF_RANGE', 'a write at the end')
  t.is(await codeOf(m.read(allocAligned(4 * KiB), MiB)), 'EOUT_OF_RANGE', 'a read at the end')
  t.is(await codeOf(m.write(page, -4096)), 'EINVAL', 'negative offset')
  t.is(await codeOf(m.write(new Uint8Array(0), 0)), 'EINVAL', 'empty write')
  t.deepEqual(r.ctl.map((c) => c.writesStarted), [0, 0], 'no rejected write reached a member')

  // A buffer whose address is not aligned: the mirror bounces it through an aligned copy.
  const backing = allocAligned(8 * KiB + 64)
  const odd = backing.subarray(1, 1 + 8 * KiB)
  odd.set(pattern(8 * KiB, 4))
  await m.write(odd, 2 * CS)
  for (const p of r.paths) sameBytes(t, onDisk(p, 2 * CS, 8 * KiB), Buffer.from(odd), 'the unaligned buffer was written')
  const backing2 = allocAligned(8 * KiB + 64)
  const odd2 = backing2.subarray(3, 3 + 8 * KiB)
  await m.read(odd2, 2 * CS)
  sameBytes(t, Buffer.from(odd2), Buffer.from(odd), 'and read back into an unaligned buffer')

  await m.close()
  for (const [what, p] of [
    ['write', () => m.write(page, 0)],
    ['read', () => m.read(allocAligned(4 * KiB), 0)],
    ['flush', () => m.flush()],
    ['resync', () => m.resync()],
    ['removeMember', () => m.removeMember(1)],
  ] as const) {
    t.is(await codeOf(p), 'ECLOSED', `${what} after close`)
  }
})

// ---------------------------------------------------------------------------------
// Write-behind
//
// The write-mostly member is a SlowMember (its writes complete late), and where a test
// must be sure a write is still in flight while it looks, the member also holds its
// writes until the test releases them (MemberControl.hold): a loaded machine cannot
// then turn "slow" into "already done".

test('the slow-member pitfall: a behind write is acked first, and its bit stays set on disk through daemon passes until the slow member has it', async (t) => {
  const SLOW = 300
  const r = await makeRig(parent, [{}, { writeMostly: true, delayMs: SLOW }], { writeBehind: 16 })
  const m = r.mirror
  const slow = r.ctl[1]
  t.teardown(() => (slow.release(), m.close().catch(() => {})))
  const bm = m.bitmap!
  const c = 5
  const data = pattern(16 * KiB, 5)
  slow.hold()
  const t0 = performance.now()
  await m.write(data, c * CS)
  t.log(`behind write acked in ${(performance.now() - t0).toFixed(1)} ms; the slow member takes ${SLOW} ms once released`)
  t.is(m.stats().behindWrites, 1, 'the write went behind')
  t.is(slow.writesDone, 0, 'acked before the write-mostly member completed it')
  t.is(r.ctl[0].writesDone, 1, 'the fast member has it')
  sameBytes(t, onDisk(r.paths[0], c * CS, data.length), Buffer.from(data))
  sameBytes(t, onDisk(r.paths[1], c * CS, data.length), Buffer.alloc(data.length), 'the slow member does not have it yet')
  t.true(readDisk(r.bitmapPath).bit(c), 'the bit is on disk')

  for (let i = 0; i < 4; i++) {
    await daemonPass(bm)
    t.true(readDisk(r.bitmapPath).bit(c), `the bit is still set on disk after daemon pass ${i + 1}, the slow write in flight`)
  }
  t.is(slow.writesDone, 0, 'the passes all ran while the slow write was in flight')
  t.is(m.stats().behindInFlight, 1)
  t.is(m.members[1].writesInFlight, 1)

  slow.release()
  await slow.idle()
  t.is(slow.writesDone, 1)
  await until(() => m.stats().behindInFlight === 0, 5000, 'the behind write to end')
  t.true(readDisk(r.bitmapPath).bit(c), 'still set right after the slow write: two idle passes come first')
  sameBytes(t, onDisk(r.paths[1], c * CS, data.length), Buffer.from(data), 'the slow member has the data')
  await daemonPass(bm)
  t.true(readDisk(r.bitmapPath).bit(c), 'one idle pass does not clear it')
  await daemonPass(bm)
  await daemonPass(bm)
  t.false(readDisk(r.bitmapPath).bit(c), 'cleared after the slow member completed and two idle passes')
  t.is(m.bitmap!.stats().dirty, 0)
})

test('writeBehind = N: never more than N behind writes in flight; the rest fall back to synchronous', async (t) => {
  const N = 4
  const r = await makeRig(parent, [{}, { writeMostly: true, delayMs: 20 }], { writeBehind: N })
  const m = r.mirror
  const slow = r.ctl[1]
  t.teardown(() => (slow.release(), m.close().catch(() => {})))
  const COUNT = 24
  slow.hold()
  let acked = 0
  const writes = Array.from({ length: COUNT }, (_, i) => {
    const off = (i % 16) * CS + Math.floor(i / 16) * 8 * KiB
    return m.write(pattern(8 * KiB, 100 + i), off).then(() => {
      acked++
      return slow.completed.includes(off)
    })
  })
  // With the slow member held, exactly the behind writes can be acknowledged.
  await until(() => acked >= N, 10000, `${N} acks`)
  await new Promise((res) => setTimeout(res, 50))
  let s = m.stats()
  t.is(acked, N, `only the ${N} behind writes were acknowledged while the slow member held every write`)
  t.is(s.behindInFlight, N)
  t.is(s.behindFallbacks.limit, COUNT - N, 'the others fell back to synchronous at the limit')
  t.is(m.bitmap!.stats().behindWrites, N, 'the bitmap counts the same')
  slow.release()
  const onSlowAtAck = await Promise.all(writes)
  s = m.stats()
  t.log(`behind ${s.behindWrites}, high water ${s.behindHighWater}, fallbacks ${JSON.stringify(s.behindFallbacks)}`)
  t.is(s.behindHighWater, N, `behind high water ${s.behindHighWater} = ${N}`)
  t.true(m.bitmap!.stats().behindWritesHighWater <= N)
  t.is(s.behindFallbacks.memory, 0)
  t.is(s.behindWrites + s.behindFallbacks.limit, COUNT, 'every write was either behind or a fallback')
  t.is(onSlowAtAck.filter((x) => x).length, COUNT - N, 'every fallback was on the slow member when acknowledged')
  await slow.idle()
  await until(() => m.stats().behindInFlight === 0, 5000, 'the behind writes to end')
  t.is(m.stats().behindBytes, 0, 'every write-behind copy was released')
  t.is(m.bitmap!.stats().behindWrites, 0)
  await m.close()
  sameBytes(t, onDisk(r.paths[1], 0, MiB), onDisk(r.paths[0], 0, MiB), 'the slow member caught up')
})

test('behindMemoryLimit: past the budget a write is synchronous (its ack waits for the slow member), within it behind; and the caller may scribble its buffer after a behind ack', async (t) => {
  const SLOW = 300
  const r = await makeRig(parent, [{}, { writeMostly: true, delayMs: SLOW }], { writeBehind: 64, behindMemoryLimit: 64 * KiB })
  const m = r.mirror
  const slow = r.ctl[1]
  t.teardown(() => (slow.release(), m.close().catch(() => {})))

  // Small: behind, acknowledged while the slow member holds it.
  slow.hold()
  const small = pattern(16 * KiB, 7)
  const original = Buffer.from(small)
  let t0 = performance.now()
  await m.write(small, 0)
  const smallAck = performance.now() - t0
  t.is(slow.writesDone, 0, 'the small write was acked before the slow member had it')
  small.fill(0xee) // the caller reuses its buffer at once
  t.is(m.stats().behindWrites, 1)
  slow.release()
  await slow.idle()
  sameBytes(t, onDisk(r.paths[1], 0, 16 * KiB), original, 'the slow member got the data as it was at the write, not the scribble')
  sameBytes(t, onDisk(r.paths[0], 0, 16 * KiB), original, 'and so did the fast member')

  // Big (past the 64 KiB budget): synchronous.
  const big = pattern(128 * KiB, 8)
  t0 = performance.now()
  await m.write(big, 4 * CS)
  const bigAck = performance.now() - t0
  t.log(`ack latency: behind ${smallAck.toFixed(1)} ms, over budget ${bigAck.toFixed(1)} ms (slow member ${SLOW} ms)`)
  t.true(slow.completed.includes(4 * CS), 'the over-budget write was on the slow member when acked')
  t.true(bigAck >= SLOW - 5, `its ack latency includes the slow member's delay (${bigAck.toFixed(1)} ms)`)
  let s = m.stats()
  t.is(s.behindFallbacks.memory, 1)
  t.is(s.behindWrites, 1)

  // Concurrent: 32 KiB each within a 64 KiB budget: two go behind, two must wait for the slow member.
  slow.hold()
  const acked: number[] = []
  const writes = [0, 1, 2, 3].map((i) => m.write(pattern(32 * KiB, 20 + i), (8 + i) * CS).then(() => void acked.push(i)))
  await until(() => acked.length >= 2, 10000, 'two acks')
  await new Promise((res) => setTimeout(res, 50))
  t.deepEqual([...acked].sort(), [0, 1], 'the two that fit the budget were acked while the slow member held them; the others wait')
  s = m.stats()
  t.is(s.behindBytes, 64 * KiB)
  slow.release()
  await Promise.all(writes)
  s = m.stats()
  t.is(s.behindBytesHighWater, 64 * KiB, 'the copies held never exceeded the budget')
  t.is(s.behindWrites, 3)
  t.is(s.behindFallbacks.memory, 3)
  await slow.idle()
  sameBytes(t, onDisk(r.paths[1], 0, MiB), onDisk(r.paths[0], 0, MiB))
})

test('overlapping behind writes to one slow member complete in order: the newer data wins', async (t) => {
  const r = await makeRig(parent, [{}, { writeMostly: true }], { writeBehind: 16 })
  const m = r.mirror
  const slow = r.ctl[1]
  t.teardown(() => (slow.release(), m.close().catch(() => {})))
  const A = pattern(32 * KiB, 30)
  const B = pattern(16 * KiB, 31)
  // A takes long on the slow member, B would be quick: unordered, B would land first and A over it.
  slow.hold()
  slow.delayMs = 300
  await m.write(A, CS)
  slow.delayMs = 10
  await m.write(B, CS + 8 * KiB)
  t.is(m.stats().behindWrites, 2, 'both went behind')
  t.is(slow.writesDone, 0, 'both acked before the slow member had either')
  slow.release()
  await slow.idle()
  t.deepEqual(slow.completed, [CS, CS + 8 * KiB], 'the slow member completed A, then B')
  const expect = Buffer.from(A)
  expect.set(B, 8 * KiB)
  sameBytes(t, onDisk(r.paths[1], CS, 32 * KiB), expect, 'the slow member holds B over A')
  sameBytes(t, onDisk(r.paths[0], CS, 32 * KiB), expect, 'as does the fast member')
})

test('close waits for behind writes in flight: the slow member has them, the shutdown is clean and no bit is left dirty', async (t) => {
  const r = await makeRig(parent, [{}, { writeMostly: true, delayMs: 50 }], { writeBehind: 16 })
  const m = r.mirror
  const slow = r.ctl[1]
  t.teardown(() => (slow.release(), m.close().catch(() => {})))
  slow.hold()
  const data = pattern(64 * KiB, 60)
  await m.write(data, 7 * CS)
  t.is(slow.writesDone, 0)
  let closed = false
  const closing = m.close().then(() => (closed = true))
  await new Promise((res) => setTimeout(res, 50))
  t.false(closed, 'close waits while a behind write is in flight')
  slow.release()
  await closing
  t.is(slow.writesDone, 1)
  sameBytes(t, onDisk(r.paths[1], 7 * CS, 64 * KiB), Buffer.from(data))
  t.true(JSON.parse(readFileSync(r.metaPath, 'utf8')).clean)
  t.deepEqual(readDisk(r.bitmapPath).dirtyList(16), [], 'close cleared the bit once every member had the write')
})

// ---------------------------------------------------------------------------------
// Reads

test('a read served by the write-mostly member waits for its behind writes: never older than an acknowledged write', async (t) => {
  const r = await makeRig(parent, [{}, { writeMostly: true, delayMs: 100 }], { writeBehind: 16 })
  const m = r.mirror
  const slow = r.ctl[1]
  t.teardown(() => (slow.release(), m.close().catch(() => {})))
  const data = pattern(64 * KiB, 40)
  slow.hold()
  await m.write(data, 2 * CS)
  t.is(slow.writesDone, 0, 'behind: acked, the slow member still writing')
  // Only the write-mostly member is left to serve reads.
  await m.removeMember(0)
  t.deepEqual(m.members.map((x) => x.state), ['removed', 'in-sync'])
  const back = allocAligned(16 * KiB)
  let readDone = false
  const reading = m.read(back, 2 * CS + 16 * KiB).then(() => (readDone = true))
  await new Promise((res) => setTimeout(res, 50))
  t.false(readDone, 'the read waits while the behind write is in flight')
  t.is(slow.reads, 0, 'and has not touched the member yet')
  // A range with nothing in flight reads at once.
  await m.read(allocAligned(4 * KiB), 10 * CS)
  t.is(slow.reads, 1)
  slow.release()
  await reading
  t.is(slow.writesDone, 1, 'the read came after the behind write')
  sameBytes(t, Buffer.from(back), Buffer.from(data.subarray(16 * KiB, 32 * KiB)), 'and returned the acknowledged data')
  t.is(slow.reads, 2)
  t.is(r.ctl[0].reads, 0)
})

test('reads are balanced over the in-sync members that are not write-mostly; the write-mostly one is not read', async (t) => {
  const r = await makeRig(parent, [{}, {}, { writeMostly: true, delayMs: 50 }], { writeBehind: 16 })
  const m = r.mirror
  t.teardown(() => m.close().catch(() => {}))
  const data = pattern(MiB, 50)
  await m.write(data, 0)
  const back = allocAligned(4 * KiB)
  for (let i = 0; i < 40; i++) {
    const off = (i * 7 % 256) * 4 * KiB
    await m.read(back, off)
    sameBytes(t, Buffer.from(back), Buffer.from(data.subarray(off, off + 4 * KiB)))
  }
  const [a, b, wm] = r.ctl.map((c) => c.reads)
  t.log(`reads: member 0 ${a}, member 1 ${b}, write-mostly ${wm}`)
  t.is(a + b, 40)
  t.true(a >= 10 && b >= 10, `both fast members served reads (${a}, ${b})`)
  t.is(wm, 0, 'the write-mostly member served none')
  t.is(m.stats().reads, 40)
  // Concurrent reads too.
  await Promise.all(Array.from({ length: 20 }, (_, i) => m.read(allocAligned(4 * KiB), i * 4 * KiB)))
  t.true(r.ctl[0].reads - a >= 5 && r.ctl[1].reads - b >= 5, 'concurrent reads spread as well')
  t.is(r.ctl[2].reads, 0)
})

