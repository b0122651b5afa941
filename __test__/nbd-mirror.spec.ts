/**
 * Mirrors with a remote write-mostly member over NBD, against Debian's servers on
 * 127.0.0.1: qemu-nbd and nbd-server serving a file. Writes, reads, write-behind
 * acknowledging before the remote has the data, the remote server killed mid-workload
 * (the mirror keeps going degraded; reconnect + reAdd copies only the dirty chunks),
 * and crash consistency with a SIGKILLed writer process (fixtures/nbd-writer.ts).
 */
import test, { type ExecutionContext } from 'ava'
import { mkdirSync, readFileSync, truncateSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'

import { FileMember, Mirror, NbdMember, SlowMember, allocAligned, isNbdUrl, openNbdOrFileMember, type Member, type MemberSpec } from '../src'
import { Prng } from '../src/cli/demo/prng'
import { SECTOR } from '../src/cli/demo/tagged-data'
import { killRunning, replaySeed, startCrashChild } from './helpers/crash-child'
import { fsCaps, requires } from './helpers/env'
import { changedBlocks } from './helpers/io'
import { CRASH_FS_PARENT, settleWrites, withFs } from './helpers/loopfs'
import { readDisk } from './helpers/mdadm'
import { IDLE, KiB, MiB, pattern } from './helpers/mirror'
import { startNbdServer, startQemuNbd, type QemuNbd } from './helpers/nbd'
import { checkSectors, readWriteLog } from './helpers/tagged-writes'
import { diskTempDir, removeDir } from './helpers/tmp'
import { sleep, until } from './helpers/wait'

const withQemu = requires(['qemu-nbd'])
const withNbdServer = requires(['nbd-server'])

const dir = diskTempDir('md-bitmap-nbd-mirror-')
test.after.always(() => removeDir(dir))

const SIZE = 8 * MiB
const CHUNK = 64 * KiB
const buf = (b: Uint8Array) => Buffer.from(b.buffer, b.byteOffset, b.length)

/** A fresh sub-directory (of `base`) with a zeroed remote file of SIZE bytes. */
function setup(name: string, base = dir): { d: string; local: string; remote: string; bitmap: string } {
  const d = join(base, name)
  mkdirSync(d)
  const remote = join(d, 'remote.img')
  writeFileSync(remote, '')
  truncateSync(remote, SIZE)
  return { d, local: join(d, 'local.img'), remote, bitmap: join(d, 'bitmap') }
}

/** An opener that keeps the NbdMembers it opened and slows the remote by `slow.delayMs`. */
function opener() {
  const opened: NbdMember[] = []
  const slow: SlowMember[] = []
  const open = async (spec: MemberSpec): Promise<Member> => {
    if (!isNbdUrl(spec.path)) return FileMember.open(spec.path)
    const m = await NbdMember.open(spec.path, { timeoutMs: 10_000 })
    opened.push(m)
    const s = new SlowMember(m, 0)
    slow.push(s)
    return s
  }
  return { open, opened, slow, setDelay: (ms: number) => slow.forEach((s) => (s.delayMs = ms)) }
}

/** Random non-overlapping batches of writes; `model` follows. Returns the chunks written. */
async function workload(mirror: Mirror, model: Uint8Array, n: number, seed: number, region: [number, number] = [0, SIZE]): Promise<Set<number>> {
  const prng = new Prng(seed)
  const chunks = new Set<number>()
  for (let done = 0; done < n; ) {
    const batch: { offset: number; data: Uint8Array }[] = []
    for (let k = 0; k < 8 && done < n; k++, done++) {
      const len = Math.min(64, 1 + prng.below(64)) * 4 * KiB
      const offset = region[0] + prng.below((region[1] - region[0] - len) / 4096 + 1) * 4096
      if (batch.some((w) => w.offset < offset + len && offset < w.offset + w.data.length)) continue
      batch.push({ offset, data: pattern(len, seed * 10_000 + done) })
    }
    await Promise.all(batch.map((w) => mirror.write(w.data, w.offset)))
    for (const w of batch) {
      model.set(w.data, w.offset)
      for (let c = Math.floor(w.offset / CHUNK); c <= Math.floor((w.offset + w.data.length - 1) / CHUNK); c++) chunks.add(c)
    }
  }
  return chunks
}

async function readAll(m: { read(t: Uint8Array, o: number): Promise<void> }): Promise<Uint8Array> {
  const out = allocAligned(SIZE)
  await m.read(out, 0)
  return out
}

async function createMirror(f: ReturnType<typeof setup>, url: string, open: (s: MemberSpec) => Promise<Member>, writeBehind = 256): Promise<Mirror> {
  return Mirror.create({
    bitmap: f.bitmap,
    members: [{ path: f.local }, { path: url, writeMostly: true }],
    size: SIZE,
    chunkSize: CHUNK,
    writeBehind,
    daemonSleep: IDLE,
    assumeClean: true,
    openMember: open,
  })
}

withQemu('NbdMember on qemu-nbd: many requests in flight matched by handle, FUA, trim, flush; typed errors', async (t) => {
  const f = setup('qemu-member')
  const q = await startQemuNbd(t, f.remote)
  const m = await NbdMember.open(q.url)
  t.teardown(() => m.close())
  t.is(m.size, SIZE)
  // 128 writes of distinct pages at once, then 128 reads at once: each reply must land in its own buffer.
  const pages = Array.from({ length: 128 }, (_, i) => pattern(4 * KiB, 500 + i))
  await Promise.all(pages.map((p, i) => m.write(p, i * 8 * KiB, { fua: i % 2 === 0 })))
  const back = await Promise.all(pages.map(async (_, i) => {
    const b = allocAligned(4 * KiB)
    await m.read(b, i * 8 * KiB)
    return b
  }))
  t.true(back.every((b, i) => buf(b).equals(buf(pages[i]))))
  await m.flush()
  await m.trim(2 * MiB, MiB)
  const file = readFileSync(f.remote)
  t.true(pages.every((p, i) => file.subarray(i * 8 * KiB, i * 8 * KiB + 4 * KiB).equals(buf(p))), 'the file behind qemu-nbd has every write')
  // Typed errors.
  const codeOf = (p: Promise<unknown>) => p.then(() => 'no error', (e) => e.code)
  t.is(await codeOf(m.read(allocAligned(4096), SIZE)), 'EOUT_OF_RANGE')
  t.is(await codeOf(NbdMember.open(q.url.replace(/remote$/, 'nope'))), 'ENBD_UNKNOWN_EXPORT')
  t.is(await codeOf(NbdMember.open(`nbd://127.0.0.1:${q.port! === 1 ? 2 : 1}/x`)), 'ECONNREFUSED')
  // TLS URLs are understood now; a malformed one is still ENBD_URL.
  t.is(await codeOf(NbdMember.open('nbds+unix:///x')), 'ENBD_URL')
  const ro = await startQemuNbd(t, f.remote, { readOnly: true, exportName: 'ro' })
  const r = await NbdMember.open(ro.url)
  t.true(r.readOnly)
  t.is(await codeOf(r.write(allocAligned(4096), 0)), 'EROFS')
  await r.close()
})

withQemu('qemu-nbd write-mostly member: write-behind acks before the remote has the data; reads; members identical', async (t) => {
  const f = setup('qemu-basic')
  const q = await startQemuNbd(t, f.remote)
  const o = opener()
  const mirror = await createMirror(f, q.url, o.open)
  t.teardown(() => mirror.close().catch(() => {}))
  const model = new Uint8Array(SIZE)

  // Behind: the remote's write starts 1.5 s late; the ack must not wait for it.
  o.setDelay(1500)
  const data = pattern(64 * KiB, 1)
  const t0 = performance.now()
  await mirror.write(data, 128 * KiB)
  const ackMs = performance.now() - t0
  model.set(data, 128 * KiB)
  t.is(mirror.stats().behindWrites, 1)
  t.is(mirror.members[1].writesInFlight, 1, 'the remote write is still in flight at the ack')
  t.true(buf(readFileSync(f.remote).subarray(128 * KiB, 192 * KiB)).equals(Buffer.alloc(64 * KiB)), 'the remote file does not have it yet')
  await until(() => mirror.members[1].writesInFlight === 0, 10_000, 'the behind write to finish')
  const doneMs = performance.now() - t0
  t.log(`ack after ${ackMs.toFixed(1)} ms; the remote had it after ${doneMs.toFixed(1)} ms`)
  t.true(doneMs >= 1500 && ackMs < doneMs)
  t.true(buf(readFileSync(f.remote).subarray(128 * KiB, 192 * KiB)).equals(buf(data)), 'the remote file has it now')

  // A random workload, then reads through the mirror (the local member).
  o.setDelay(0)
  await workload(mirror, model, 150, 7)
  t.true(buf(await readAll(mirror)).equals(buf(model)))
  t.true(o.opened[0].inFlight >= 0 && o.opened[0].connected)

  // Reads from the remote: with the local member out, the mirror reads over NBD.
  await mirror.removeMember(0)
  const remoteView = await readAll(mirror)
  t.true(buf(remoteView).equals(buf(model)), 'the remote member holds every acknowledged write')
  const report = await mirror.reAdd(0)
  t.is(report.recovery, 'bitmap')
  await mirror.close()
  t.true(readFileSync(f.local).equals(readFileSync(f.remote)), 'members byte-identical')
  t.true(readFileSync(f.local).equals(buf(model)))
})

withNbdServer('nbd-server write-mostly member: behind writes, close, reopen, read from the remote, members identical', async (t) => {
  const f = setup('nbd-server')
  const s = await startNbdServer(t, f.d, f.remote)
  const o = opener()
  const mirror = await createMirror(f, s.url, o.open)
  t.teardown(() => mirror.close().catch(() => {}))
  t.is(o.opened[0].size, SIZE)
  const model = new Uint8Array(SIZE)
  o.setDelay(500)
  const data = pattern(32 * KiB, 3)
  await mirror.write(data, 0)
  model.set(data, 0)
  t.is(mirror.members[1].writesInFlight, 1, 'acknowledged while the remote write waits')
  o.setDelay(0)
  await workload(mirror, model, 80, 11)
  await mirror.close()
  t.true(readFileSync(f.local).equals(readFileSync(f.remote)), 'members byte-identical after close')

  // Reopen (a new connection to the daemon), read from the remote alone.
  const o2 = opener()
  const again = await Mirror.open({ bitmap: f.bitmap, openMember: o2.open })
  t.teardown(() => again.close().catch(() => {}))
  t.deepEqual(again.members.map((m) => m.state), ['in-sync', 'in-sync'])
  await again.removeMember(0)
  t.true(buf(await readAll(again)).equals(buf(model)))
  await again.reAdd(0)
  await workload(again, model, 40, 12)
  await again.close()
  t.true(readFileSync(f.local).equals(buf(model)))
  t.true(readFileSync(f.remote).equals(buf(model)))
})

withQemu('qemu-nbd killed mid-workload: the mirror keeps serving degraded; reconnect + reAdd copies only the dirty chunks', async (t) => {
  const f = setup('qemu-kill')
  let q = await startQemuNbd(t, f.remote)
  const o = opener()
  const mirror = await createMirror(f, q.url, o.open, 64)
  t.teardown(() => mirror.close().catch(() => {}))
  const faulty: string[] = []
  mirror.on('member-faulty', (e: { index: number; error: { code: string } }) => faulty.push(`${e.index}:${e.error.code}`))
  const model = new Uint8Array(SIZE)

  // Phase 1: the first half, fully on both members before the kill.
  const before = await workload(mirror, model, 60, 21, [0, SIZE / 2])
  await until(() => mirror.members[1].writesInFlight === 0, 10_000, 'the remote to catch up')

  // Phase 2: writes to the second half, the remote lagging; qemu-nbd dies in the middle.
  o.setDelay(5)
  let stop = false
  const after = new Set<number>()
  let writes = 0
  const writer = (async () => {
    for (let seed = 100; !stop; seed++) {
      for (const c of await workload(mirror, model, 8, seed, [SIZE / 2, SIZE])) after.add(c)
      writes += 8
    }
  })()
  await sleep(150)
  q.kill('SIGKILL')
  await q.exited
  await until(() => mirror.members[1].state === 'faulty', 10_000, 'the remote member to turn faulty')
  const writesAtKill = writes
  await sleep(200)
  stop = true
  await writer
  t.true(writes > writesAtKill, 'writes went on after the remote died')
  t.deepEqual(faulty, ['1:ENBD_DISCONNECTED'])
  t.is(mirror.members[1].error?.code, 'ENBD_DISCONNECTED')
  t.true(mirror.degraded)
  t.true(buf(await readAll(mirror)).equals(buf(model)), 'reads are served (from the local member) while degraded')
  // Behind writes that met the dead connection end (NEEDED) once the failure is on disk.
  await until(() => mirror.stats().behindInFlight === 0, 20_000, 'the failed behind writes to end')
  const needed = new Set(mirror.bitmap!.neededChunks())
  t.true(needed.size > 0)
  for (const c of needed) t.true(after.has(c), `chunk ${c} marked but never written after phase 1`)

  // The server comes back on the same port; reAdd reconnects and copies the dirty chunks only.
  q = await startQemuNbd(t, f.remote, { port: q.port })
  const report = await mirror.reAdd(1)
  t.is(report.recovery, 'bitmap')
  t.log(`${needed.size} chunks needed, ${report.chunksCopied} copied of ${SIZE / CHUNK}; ${before.size} chunks written before the kill`)
  t.deepEqual(new Set(report.chunks), needed)
  t.true(report.chunks.every((c) => !before.has(c) || after.has(c)), 'no chunk written only before the kill is copied')
  t.true(report.chunksCopied < SIZE / CHUNK)
  t.deepEqual(mirror.members.map((m) => m.state), ['in-sync', 'in-sync'])
  t.false(mirror.degraded)
  await workload(mirror, model, 16, 999)
  await mirror.close()
  t.true(readFileSync(f.local).equals(readFileSync(f.remote)), 'members byte-identical')
  t.true(readFileSync(f.local).equals(buf(model)))
})

// ---------------------------------------------------------------------------------
// Crash consistency

const CRASH_ITERATIONS = Number(process.env.MD_BITMAP_NBD_CRASH_ITERATIONS) || 4

// The files live on a filesystem of their own, so that after each kill the writes the
// dead writer left in flight can be waited for (settleWrites) before the files are read
// (crash-settle.spec.ts).
const withQemuCrashFs = requires(['qemu-nbd', 'root', 'loop', 'fsfreeze', ...fsCaps('ext4')])
withQemuCrashFs(`SIGKILL of a writer with a remote qemu-nbd member: resync makes the members identical with every acknowledged write (${CRASH_ITERATIONS} iterations)`, async (t) => {
  t.timeout(120_000)
  t.teardown(killRunning)
  await withFs('ext4', 64, async (mnt) => {
    const q = await crashes(t, mnt)
    // Nothing may hold the filesystem open when it is unmounted.
    await q.stop()
  }, { parentDir: CRASH_FS_PARENT })
})

async function crashes(t: ExecutionContext, mnt: string): Promise<QemuNbd> {
  const f = setup('crash', mnt)
  let q: QemuNbd = await startQemuNbd(t, f.remote)
  const port = q.port
  const m = await Mirror.create({
    bitmap: f.bitmap,
    members: [{ path: f.local }, { path: q.url, writeMostly: true }],
    size: SIZE,
    chunkSize: CHUNK,
    writeBehind: 256,
    daemonSleep: 1,
    assumeClean: true,
    openMember: openNbdOrFileMember,
  })
  await m.close()
  const chunks = SIZE / CHUNK
  const model = new Uint32Array(SIZE / SECTOR)
  let lagging = 0
  let unacked = 0
  let copied = 0
  // MD_BITMAP_NBD_CRASH_SEED replays a run's choices (the timing is the machine's).
  const seed0 = replaySeed(t, 'MD_BITMAP_NBD_CRASH_SEED')
  const prng = new Prng(seed0)
  for (let it = 1; it <= CRASH_ITERATIONS; it++) {
    const idBase = it * 2 ** 20
    const w = startCrashChild('nbd-writer.ts', [f.bitmap, String(seed0 + it), String(idBase)])
    await w.waitFor('ready', 20_000)
    await sleep(100 + prng.below(300))
    t.is(await w.kill(), 'SIGKILL', `writer stderr: ${w.stderr}`)
    // The remote dies too (as in a power cut of both ends): the file is then stable.
    q.kill('SIGKILL')
    await q.exited
    // The writes they submitted through io_uring may still be landing: the crash's state is what they leave.
    settleWrites(mnt)

    const log = readWriteLog(w.lines)
    for (const l of log.rejected) t.fail(`a write was rejected: ${l}`)
    t.true(log.order.length > 0, 'the writer wrote')
    if (log.order.some((x) => !x.acked)) unacked++

    // The invariant on the files as the crash left them.
    const dirty = new Set(readDisk(f.bitmap).dirtyList(chunks))
    const differ = changedBlocks(readFileSync(f.local), readFileSync(f.remote), CHUNK).map((o) => o / CHUNK)
    if (differ.length) lagging++
    t.deepEqual(differ.filter((c) => !dirty.has(c)), [], 'members differ only in chunks whose bit is set on disk')

    q = await startQemuNbd(t, f.remote, { port })
    const mirror = await Mirror.open({ bitmap: f.bitmap, openMember: openNbdOrFileMember })
    try {
      t.deepEqual(mirror.members.map((x) => x.state), ['in-sync', 'in-sync'])
      const report = await mirror.resync()
      copied += report.chunksCopied
      t.deepEqual(report.chunks.filter((c) => !dirty.has(c)), [], 'resync copies only chunks dirty at the crash')
    } finally {
      await mirror.close()
    }
    const l2 = readFileSync(f.local)
    t.true(l2.equals(readFileSync(f.remote)), `iteration ${it}: members byte-identical after resync`)

    // Each sector: the last acknowledged write over it, or a write in flight over it.
    const problems: string[] = []
    checkSectors(problems, l2, log, CHUNK, idBase, model)
    if (problems.length) {
      t.fail(`iteration ${it} (replay with MD_BITMAP_NBD_CRASH_SEED=${seed0}):\n${problems.join('\n')}`)
      return q
    }
  }
  t.log(`${CRASH_ITERATIONS} iterations: ${unacked} kills with writes in flight, ${lagging} with the remote lagging, ${copied} chunks copied`)
  t.true(unacked > 0, 'some kill caught writes in flight')
  return q
}
