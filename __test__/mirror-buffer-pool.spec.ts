/**
 * The mirror's buffer pool (src/io/buffer-pool.ts): buffers are reused by exact
 * length, the pool keeps no more than its budget, a buffer is never lent twice, and a
 * larger alignment drops the smaller one's buffers. Then through a real mirror: a
 * behind write's copy is not handed to the next behind write while the slow member
 * still writes it (the data each write leaves on the slow member is its own), and the
 * memory budget's fallbacks are what they were. Unaligned callers' buffers go through
 * the mirror's staging pool: a copy is never handed to another I/O while its own is in
 * flight, and is reused once it settled, failed or not. And with the huge-page advice refused
 * (a seccomp filter, as a sandbox may have), large buffers are ordinary memory and a
 * resync through them works as before.
 */
import test from 'ava'
import { execFile } from 'node:child_process'
import { mkdtempSync } from 'node:fs'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { isAligned } from '../src/io/aligned'
import { BufferPool } from '../src/io/buffer-pool'
import { KiB, MiB, makeRig, onDisk, pattern, rigParent, sameBytes } from './helpers/mirror'
import { hugeKbGained, hugePagesByMapping, hugePagesOn } from './helpers/huge-pages'
import { noHugePageAdvice } from './helpers/seccomp'
import { removeDir } from './helpers/tmp'
import { requires } from './helpers/env'
import { sleep } from './helpers/wait'

const parent = rigParent('md-mirror-buffer-pool-')
test.after.always(() => removeDir(parent))

test('a buffer given back is lent again for the same length, not for another; never while lent', (t) => {
  const pool = new BufferPool(MiB)
  const a = pool.take(64 * KiB, 4096)
  t.is(a.length, 64 * KiB)
  t.true(isAligned(a, 4096))
  const b = pool.take(64 * KiB, 4096)
  t.not(b.buffer, a.buffer, 'a lent buffer is not lent again')
  pool.give(a)
  t.deepEqual(pool.bytes, { lent: 64 * KiB, free: 64 * KiB })
  t.is(pool.take(4 * KiB, 4096).buffer === a.buffer, false, 'another length gets another buffer')
  const again = pool.take(64 * KiB, 4096)
  t.is(again, a, 'the same length reuses it')
  pool.give(again)
  pool.give(again)
  t.deepEqual(pool.bytes, { lent: 64 * KiB + 4 * KiB, free: 64 * KiB }, 'given twice: counted once')
  const c = pool.take(64 * KiB, 4096)
  const d = pool.take(64 * KiB, 4096)
  t.is(c, a)
  t.not(d, a, 'a buffer given twice is on the free list once: lent to one holder')
})

test('the pool keeps at most its budget: lent and free together', (t) => {
  const pool = new BufferPool(256 * KiB)
  const lent = Array.from({ length: 4 }, () => pool.take(64 * KiB, 4096))
  t.deepEqual(pool.bytes, { lent: 256 * KiB, free: 0 })
  for (const b of lent) pool.give(b)
  t.deepEqual(pool.bytes, { lent: 0, free: 256 * KiB })
  // A new length needs room: free buffers of other lengths are dropped.
  const big = pool.take(128 * KiB, 4096)
  t.deepEqual(pool.bytes, { lent: 128 * KiB, free: 128 * KiB })
  // Past the budget (the caller's admission said yes anyway): nothing is kept free.
  const more = [pool.take(128 * KiB, 4096), pool.take(128 * KiB, 4096)]
  t.deepEqual(pool.bytes, { lent: 384 * KiB, free: 0 })
  pool.give(more[0])
  t.deepEqual(pool.bytes, { lent: 256 * KiB, free: 0 }, 'given back over budget: dropped')
  pool.give(more[1])
  pool.give(big)
  t.deepEqual(pool.bytes, { lent: 0, free: 256 * KiB })
})

test('a larger alignment drops the buffers of the smaller one', (t) => {
  const pool = new BufferPool(MiB)
  const small = pool.take(8 * KiB, 512)
  const kept = pool.take(8 * KiB, 512)
  pool.give(kept)
  const aligned = pool.take(8 * KiB, 65536)
  t.not(aligned, kept)
  t.true(isAligned(aligned, 65536))
  t.deepEqual(pool.bytes, { lent: 16 * KiB, free: 0 })
  pool.give(small)
  t.deepEqual(pool.bytes, { lent: 8 * KiB, free: 0 }, 'a buffer of the old alignment given back is dropped')
})

test('buffers of 1 MiB and more come from huge pages, two to a 2 MiB page; the one not lent waits on the free list', (t) => {
  const pool = new BufferPool(4 * MiB)
  const a = pool.take(MiB, 4096)
  t.deepEqual(pool.bytes, { lent: MiB, free: MiB }, 'its neighbour in the huge page is counted free')
  const b = pool.take(MiB, 4096)
  const before = hugePagesByMapping()
  t.deepEqual(pool.bytes, { lent: 2 * MiB, free: 0 })
  t.is(b.buffer, a.buffer, 'the second comes from the same huge page')
  t.is(Math.abs(b.byteOffset - a.byteOffset), MiB)
  const first = a.byteOffset < b.byteOffset ? a : b
  t.true(isAligned(first, 2 * MiB), 'the page starts 2 MiB-aligned')
  a.fill(1)
  b.fill(2)
  const gained = hugeKbGained(before)
  if (hugePagesOn()) t.true(gained >= 2048, `backed by a huge page once touched (+${gained} kB)`)
  t.true(a.every((x) => x === 1) && b.every((x) => x === 2), 'two buffers, no overlap')
  // Not a divisor of 2 MiB: memory of its own length, 2 MiB-aligned, its whole 2 MiB
  // pages huge and the rest small: never more huge pages than the bytes the budget counts.
  const odd = pool.take(MiB + 4096, 4096)
  t.deepEqual(pool.bytes, { lent: 3 * MiB + 4096, free: 0 })
  t.true(isAligned(odd, 2 * MiB))
  t.true(odd.buffer.byteLength <= MiB + 4096 + 2 * MiB, `its own length and the alignment's slack (${odd.buffer.byteLength} bytes)`)
  const small = hugePagesByMapping()
  odd.fill(3)
  if (hugePagesOn()) t.true(hugeKbGained(small) < 2048, 'no whole 2 MiB page inside 1 MiB + 4 KiB: no huge page')
  const pool2 = new BufferPool(8 * MiB)
  const three = pool2.take(3 * MiB, 4096)
  t.deepEqual(pool2.bytes, { lent: 3 * MiB, free: 0 })
  const beforeThree = hugePagesByMapping()
  three.fill(4)
  const grew = hugeKbGained(beforeThree)
  if (hugePagesOn()) t.true(grew >= 2048 && grew < 4096, `3 MiB written: one huge page, not two (AnonHugePages +${grew} kB)`)
  t.true(pool.take(64 * KiB, 4096).buffer.byteLength < 2 * MiB, 'small buffers: ordinary memory, not a huge page each')
})

test('behind writes: a copy still being written to the slow member is not reused by the next behind write; each write lands with its own data', async (t) => {
  const r = await makeRig(parent, [{}, { writeMostly: true }], { writeBehind: 64 })
  const m = r.mirror
  t.teardown(() => (r.ctl[1].release(), m.close().catch(() => {})))
  // The slow member holds every write: each behind copy stays in flight.
  r.ctl[1].hold()
  const caller = pattern(64 * KiB, 0)
  const datas = Array.from({ length: 8 }, (_, i) => pattern(64 * KiB, i + 1))
  for (const [i, d] of datas.entries()) {
    // The caller reuses one buffer: the copies are the only place the slow member's data lives.
    caller.set(d)
    await m.write(caller, i * 64 * KiB)
  }
  t.is(m.stats().behindInFlight, datas.length, 'every write is behind, in flight on the slow member')
  r.ctl[1].release()
  await r.ctl[1].idle()
  // Sequential behind writes once nothing is in flight: the copies are reused.
  for (const [i, d] of datas.entries()) {
    caller.set(d)
    await m.write(caller, (8 + i) * 64 * KiB)
  }
  await m.close()
  for (const [i, d] of datas.entries()) {
    sameBytes(t, onDisk(r.paths[1], i * 64 * KiB, 64 * KiB), d, `write ${i} held in flight: its own data on the slow member`)
    sameBytes(t, onDisk(r.paths[1], (8 + i) * 64 * KiB, 64 * KiB), d, `write ${8 + i}: its own data`)
  }
  sameBytes(t, onDisk(r.paths[1], 0, MiB), onDisk(r.paths[0], 0, MiB), 'members identical')
})

test('behind writes: the memory budget still decides, and its fallbacks are counted as before', async (t) => {
  const r = await makeRig(parent, [{}, { writeMostly: true }], { writeBehind: 64, behindMemoryLimit: 128 * KiB })
  const m = r.mirror
  t.teardown(() => (r.ctl[1].release(), m.close().catch(() => {})))
  r.ctl[1].hold()
  const buf = pattern(64 * KiB, 9)
  await m.write(buf, 0)
  await m.write(buf, 64 * KiB)
  t.like(m.stats(), { behindWrites: 2, behindInFlight: 2, behindBytes: 128 * KiB, behindFallbacks: { limit: 0, memory: 0 } })
  // A third would pass the budget: synchronous, so it waits for the held slow member.
  const third = m.write(buf, 128 * KiB)
  let acked = false
  void third.then(() => (acked = true))
  await sleep(50)
  t.false(acked, 'over budget: the write waits for the slow member')
  t.like(m.stats(), { behindFallbacks: { limit: 0, memory: 1 }, behindBytes: 128 * KiB })
  r.ctl[1].release()
  await third
  await r.ctl[1].idle()
  t.like(m.stats(), { behindInFlight: 0, behindBytes: 0, behindBytesHighWater: 128 * KiB })
})

test("unaligned callers: each write's aligned copy stays its own while in flight, is reused once the write ended (also after a member failed it), and reads bounce through reused copies too", async (t) => {
  const r = await makeRig(parent, [{}, {}], { size: 2 * MiB })
  const m = r.mirror
  t.teardown(() => (r.ctl[1].release(), m.close().catch(() => {})))
  const seen: { what: string; buf: Uint8Array; offset: number }[] = []
  r.ctl[0].onIo = (what, buf, offset) => seen.push({ what, buf, offset })
  const odd = (data: Uint8Array) => {
    const backing = new Uint8Array(data.length + 1)
    backing.set(data, 1)
    return backing.subarray(1)
  }
  const datas = Array.from({ length: 8 }, (_, i) => pattern(64 * KiB, i + 1))
  // Held on member 1: all 8 writes in flight at once.
  r.ctl[1].hold()
  const first = datas.map((d, i) => m.write(odd(d), i * 64 * KiB))
  while (seen.length < 8) await sleep(1)
  const inFlight = seen.splice(0).map((s) => s.buf)
  t.is(new Set(inFlight).size, 8, 'eight writes in flight: eight copies')
  t.true(inFlight.every((b) => isAligned(b, m.alignment)), 'each copy is aligned')
  r.ctl[1].release()
  await Promise.all(first)
  // One at a time now: the copies come back.
  for (const [i, d] of datas.entries()) await m.write(odd(d), (8 + i) * 64 * KiB)
  const again = seen.splice(0).map((s) => s.buf)
  t.true(again.every((b) => inFlight.includes(b)), 'sequential writes reuse the copies the first ones gave back')
  // Member 1 fails a write: the write still ends, and its copy is reused by the next.
  r.ctl[1].failWrite = (offset) => offset === 16 * 64 * KiB
  await m.write(odd(datas[0]), 16 * 64 * KiB)
  await m.write(odd(datas[1]), 17 * 64 * KiB)
  const [failedCopy, nextCopy] = seen.splice(0).map((s) => s.buf)
  t.is(nextCopy, failedCopy, 'the copy of the write a member failed was given back')
  // Reads into unaligned targets: through a copy, reused from one read to the next.
  const targets = [0, 1].map(() => odd(new Uint8Array(64 * KiB)))
  await m.read(targets[0], 0)
  await m.read(targets[1], 9 * 64 * KiB)
  const reads = seen.splice(0).filter((s) => s.what === 'read').map((s) => s.buf)
  t.is(reads.length, 2)
  t.is(reads[1], reads[0], "the second read reused the first one's copy")
  sameBytes(t, targets[0], datas[0], 'read 0')
  sameBytes(t, targets[1], datas[1], 'read 9')
  await m.close()
  for (const [i, d] of datas.entries()) {
    sameBytes(t, onDisk(r.paths[0], i * 64 * KiB, 64 * KiB), d, `write ${i} (in flight together): its own data`)
    sameBytes(t, onDisk(r.paths[0], (8 + i) * 64 * KiB, 64 * KiB), d, `write ${8 + i} (a reused copy): its own data`)
    sameBytes(t, onDisk(r.paths[1], (8 + i) * 64 * KiB, 64 * KiB), d, `write ${8 + i} on member 1`)
  }
  sameBytes(t, onDisk(r.paths[0], 17 * 64 * KiB, 64 * KiB), datas[1], 'the write after the failed one: its own data')
})

// The refusal a sandbox's seccomp profile can make of madvise(MADV_HUGEPAGE) (EPERM), for
// real: the child runs under a filter refusing that advice alone (helpers/seccomp.ts).
// Before 0c971f9 the refusal failed every large allocation of the pool, a resync's with it.
requires(['cc'])('huge-page advice refused (a seccomp filter): large buffers are ordinary memory, zero-filled, and a resync through the pool copies every byte', async (t) => {
  t.true(hugePagesOn(), 'transparent huge pages are on here (madvise or always): the comparison needs them')
  const run = async (prefix: string[]) => {
    const dir = mkdtempSync(join(parent, 'huge-'))
    const [cmd, ...args] = [...prefix, process.execPath, '--import', 'tsx', join(__dirname, 'fixtures', 'huge-page-buffers.ts'), dir]
    const { stdout } = await promisify(execFile)(cmd, args, { timeout: 60_000 })
    return JSON.parse(stdout) as { advised: number; zeroed: boolean; hugeKb: number; resync: { chunks: number; same: boolean } }
  }
  const [plain, refused] = await Promise.all([run([]), run(noHugePageAdvice())])
  t.log(`advice allowed: ${plain.advised} bytes advised, AnonHugePages +${plain.hugeKb} kB; refused: ${refused.advised} bytes, +${refused.hugeKb} kB`)
  t.is(plain.advised, 4 * MiB, 'allowed, the advice covers the region (so the filter is what refuses it below)')
  t.is(refused.advised, 0, 'refused: nothing advised, and no error')
  for (const r of [plain, refused]) {
    t.true(r.zeroed, 'zero-filled, then holding what was written')
    t.deepEqual(r.resync, { chunks: 8, same: true }, 'the resync copied all 8 chunks and the members are identical')
  }
  t.true(plain.hugeKb >= 4096, 'allowed: backed by huge pages once written')
})
