/**
 * Changed-block tracking over NBD, with QEMU's and libnbd's own tools:
 *
 * - a pattern written through qemu-io: `qemu-img map` with
 *   `x-dirty-bitmap=qemu:dirty-bitmap:NAME` (which reports the dirty ranges as
 *   `"data": false`) and `nbdinfo --map=qemu:dirty-bitmap:NAME` list exactly the
 *   written chunks; after a checkpoint and writes elsewhere, only the new ones;
 * - an incremental backup: a full copy (qemu-img convert), a checkpoint, more writes,
 *   then only the listed ranges copied from the export onto the full copy (qemu-img
 *   convert through raw offset/size windows) equals the disk (qemu-img compare);
 * - `md-bitmap mirror track|checkpoint|untrack` through the control socket of a
 *   running `md-bitmap serve`, `md-bitmap dirty` on the tracking file, and `mirror
 *   detail` listing the tracking bitmaps, live and (a mirror nobody holds) from their
 *   files, one that is gone by name;
 * - 20 times: `md-bitmap serve` (a child) SIGKILLed while this process writes to it
 *   through NBD; reopened, every chunk acknowledged, and every chunk whose bytes
 *   changed on a member, since the checkpoint is still set, and none that no write
 *   touched.
 *
 * Runs the built CLI (`npm run build:ts` first).
 */
import test from 'ava'
import { execFile } from 'node:child_process'
import { mkdirSync, readFileSync, rmSync } from 'node:fs'
import { join } from 'node:path'

import { Mirror, NbdMember, allocAligned } from '../src'
import { Prng } from '../src/cli/demo/prng'
import { requires } from './helpers/env'
import { KiB, MiB, pattern } from './helpers/mirror'
import { qemuIo, run } from './helpers/nbd'
import { serveCli, servedMirror } from './helpers/served-mirror'
import { diskTempDir, removeDir } from './helpers/tmp'
import { until } from './helpers/wait'

const withTools = requires(['nbdinfo', 'qemu-io', 'qemu-img'])

const dir = diskTempDir('md-bitmap-nbd-tracking-')
test.after.always(() => removeDir(dir))

const SIZE = 16 * MiB
const CHUNK = 64 * KiB
const CLI = join(__dirname, '..', 'bin', 'md-bitmap.js')

type Range = { offset: number; length: number }

/** The chunks `ranges` cover. */
function chunksOf(ranges: Range[]): number[] {
  const out: number[] = []
  for (const r of ranges) for (let c = Math.floor(r.offset / CHUNK); c < Math.ceil((r.offset + r.length) / CHUNK); c++) out.push(c)
  return out
}

const sorted = (s: Iterable<number>) => [...new Set(s)].sort((a, b) => a - b)

/** `--image-opts` of the export at `port` seen through tracking bitmap `name`. */
function dirtyOpts(port: number, name: string): string {
  return `driver=nbd,server.type=inet,server.host=127.0.0.1,server.port=${port},export=md,x-dirty-bitmap=qemu:dirty-bitmap:${name}`
}

/** `qemu-img map --output=json` through the dirty bitmap: the ranges it reports `"data": false` (dirty). */
async function qemuDirty(port: number, name: string): Promise<Range[]> {
  const out = JSON.parse(await run('qemu-img', ['map', '--output=json', '--image-opts', dirtyOpts(port, name)])) as { start: number; length: number; data: boolean }[]
  return out.filter((e) => !e.data).map((e) => ({ offset: e.start, length: e.length }))
}

/** `nbdinfo --map=qemu:dirty-bitmap:NAME --json`: the ranges of type 1 (dirty). */
async function nbdinfoDirty(url: string, name: string): Promise<Range[]> {
  const out = JSON.parse(await run('nbdinfo', [`--map=qemu:dirty-bitmap:${name}`, '--json', url])) as { offset: number; length: number; type: number }[]
  return out.filter((e) => e.type & 1).map((e) => ({ offset: e.offset, length: e.length }))
}

/** The built CLI; resolves with stdout, rejects with stderr on a non-zero exit. */
function cli(args: string[]): Promise<string> {
  return new Promise((resolve, reject) =>
    execFile(process.execPath, [CLI, ...args], { timeout: 60_000 }, (err, stdout, stderr) => (err ? reject(new Error(`md-bitmap ${args.join(' ')}: ${stderr}`)) : resolve(stdout))),
  )
}

withTools('qemu-img map with x-dirty-bitmap and nbdinfo --map list exactly the chunks written through qemu-io; after a checkpoint only the new ones; an incremental copy of the listed ranges equals the disk', async (t) => {
  const { mirror, server, d } = await servedMirror(t, join(dir, 'map'), { size: SIZE, chunkSize: CHUNK })
  const port = Number(/:(\d+)\//.exec(server.url)![1])
  await mirror.track('bk', { path: join(d, 'bk.track') })
  // A pattern: 4 KiB at chunk 1, 128 KiB from chunk 5 (two chunks), a 4 KiB write straddling chunks 20 and 21, a zeroed chunk 40.
  await qemuIo(server.url, [`write -P 0x11 ${CHUNK} 4k`, `write -P 0x22 ${5 * CHUNK} 128k`, `write -P 0x33 ${21 * CHUNK - 2048} 4k`, `write -z ${40 * CHUNK} 64k`])
  t.deepEqual(chunksOf(await qemuDirty(port, 'bk')), [1, 5, 6, 20, 21, 40], 'qemu-img map: the written chunks are "data": false')
  t.deepEqual(chunksOf(await nbdinfoDirty(server.url, 'bk')), [1, 5, 6, 20, 21, 40], 'nbdinfo --map agrees')
  const listed = await run('nbdinfo', ['--list', '--content', server.url])
  t.regex(listed, /qemu:dirty-bitmap:bk/, 'the export lists the context')

  // The full backup, then a checkpoint (no write in flight here: the copy is consistent).
  const full = join(d, 'full.img')
  await run('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', server.url, full])
  t.deepEqual(chunksOf(await mirror.checkpoint('bk')), [1, 5, 6, 20, 21, 40])
  t.deepEqual(await qemuDirty(port, 'bk'), [], 'nothing changed since the checkpoint')

  await qemuIo(server.url, [`write -P 0x44 ${100 * CHUNK} 64k`, `write -P 0x55 ${5 * CHUNK + 4096} 4k`, `discard ${200 * CHUNK} 128k`])
  const changed = await qemuDirty(port, 'bk')
  t.deepEqual(chunksOf(changed), [5, 100, 200, 201], 'only the chunks written since the checkpoint')
  t.deepEqual(chunksOf(await nbdinfoDirty(server.url, 'bk')), [5, 100, 200, 201])
  t.regex(await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', full, server.url]).catch((e: Error) => e.message), /differ|failed/, 'the full copy is out of date')

  // The incremental: each listed range copied from the export onto the full copy, through raw windows.
  for (const r of changed) {
    const window = `driver=raw,offset=${r.offset},size=${r.length}`
    await run('qemu-img', [
      'convert', '-n',
      '--image-opts', `${window},file.driver=nbd,file.server.type=inet,file.server.host=127.0.0.1,file.server.port=${port},file.export=md`,
      '--target-image-opts', `${window},file.driver=file,file.filename=${full}`,
    ])
  }
  t.regex(await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', full, server.url]), /Images are identical/, 'the full copy plus the changed ranges is the disk')
  t.deepEqual(chunksOf(await mirror.checkpoint('bk')), [5, 100, 200, 201])
})

withTools('md-bitmap mirror track|checkpoint|untrack on a served mirror, through its control socket; md-bitmap dirty reads the tracking file', async (t) => {
  const d = join(dir, 'cli')
  mkdirSync(d)
  const bitmap = join(d, 'disk.bitmap')
  await cli(['mirror', 'create', '--bitmap', bitmap, '--size', '4M', '--chunk', '64K', '--member', join(d, 'a.img'), '--member', join(d, 'b.img')])
  const s = await serveCli(t, ['--bitmap', bitmap, '--port', '0', '--export', 'md'])
  t.truthy(s.url, s.printed.err)
  const tracked = JSON.parse(await cli(['mirror', 'track', '--bitmap', bitmap, '--name', 'nightly', '--json']))
  t.deepEqual(tracked, { name: 'nightly', path: `${bitmap}.nightly.track`, chunkSize: CHUNK, dirtyChunks: 0 })
  t.deepEqual(JSON.parse(await cli(['mirror', 'track', '--bitmap', bitmap, '--list', '--json'])).map((i: { name: string }) => i.name), ['nightly'])
  await qemuIo(s.url!, [`write -P 0x66 ${3 * CHUNK} 4k`])
  const port = Number(/:(\d+)\//.exec(s.url!)![1])
  t.deepEqual(chunksOf(await qemuDirty(port, 'nightly')), [3])
  // mirror detail lists it, live, with the chunks changed since its checkpoint.
  t.deepEqual(JSON.parse(await cli(['mirror', 'detail', '--bitmap', bitmap, '--json'])).tracking, [{ name: 'nightly', path: `${bitmap}.nightly.track`, chunkSize: CHUNK, dirtyChunks: 1 }])
  t.regex(await cli(['mirror', 'detail', '--bitmap', bitmap]), /Tracking : nightly: 1 of 64 chunks \(64 KiB each\) changed since its checkpoint/)
  const dirty = JSON.parse(await cli(['dirty', '--json', `${bitmap}.nightly.track`]))
  t.deepEqual(dirty.ranges, [{ offset: 3 * CHUNK, length: CHUNK }], 'md-bitmap dirty reads the tracking file while it is served')
  const cp = JSON.parse(await cli(['mirror', 'checkpoint', '--bitmap', bitmap, '--name', 'nightly', '--json']))
  t.deepEqual(cp, { name: 'nightly', bytes: CHUNK, ranges: [{ offset: 3 * CHUNK, length: CHUNK }] })
  t.deepEqual(await qemuDirty(port, 'nightly'), [])
  t.regex(await cli(['mirror', 'checkpoint', '--bitmap', bitmap, '--name', 'nightly']), /checkpoint "nightly": 0 ranges changed/)
  await t.throwsAsync(cli(['mirror', 'checkpoint', '--bitmap', bitmap, '--name', 'other']), { message: /ETRACK_UNKNOWN/ })
  t.regex(await cli(['mirror', 'untrack', '--bitmap', bitmap, '--name', 'nightly']), /no longer tracking "nightly"/)
  t.deepEqual(JSON.parse(await cli(['mirror', 'track', '--bitmap', bitmap, '--list', '--json'])), [])
  t.is(JSON.parse(await cli(['mirror', 'detail', '--bitmap', bitmap, '--json'])).tracking, undefined, 'none listed once untracked')
})

test('mirror detail of a mirror nobody holds lists its tracking bitmaps from their files, and one it cannot read by name', async (t) => {
  const d = join(dir, 'stored-detail')
  mkdirSync(d)
  const bitmap = join(d, 'disk.bitmap')
  await cli(['mirror', 'create', '--bitmap', bitmap, '--size', '4M', '--chunk', '64K', '--member', join(d, 'a.img'), '--member', join(d, 'b.img')])
  const mirror = await Mirror.open({ bitmap })
  await mirror.track('bk', { path: join(d, 'bk.track') })
  await mirror.track('gone', { path: join(d, 'gone.track') })
  await mirror.write(allocAligned(4096, 4096).fill(1), 5 * CHUNK)
  await mirror.close()
  rmSync(join(d, 'gone.track'))
  const stored = JSON.parse(await cli(['mirror', 'detail', '--bitmap', bitmap, '--json']))
  t.deepEqual(stored.tracking, [
    { name: 'bk', path: join(d, 'bk.track'), chunkSize: CHUNK, dirtyChunks: 1 },
    { name: 'gone', path: join(d, 'gone.track') },
  ])
  const text = await cli(['mirror', 'detail', '--bitmap', bitmap])
  t.regex(text, /Tracking : bk: 1 of 64 chunks \(64 KiB each\) changed since its checkpoint/)
  t.regex(text, /Tracking : gone: file not readable/)
})

withTools.serial('SIGKILL of md-bitmap serve mid-write, 20 times: reopened, every chunk written since the checkpoint is still listed', async (t) => {
  const d = join(dir, 'crash')
  mkdirSync(d)
  const bitmap = join(d, 'disk.bitmap')
  const members = [join(d, 'a.img'), join(d, 'b.img')]
  const size = 4 * MiB
  const created = await Mirror.create({ bitmap, members: members.map((path) => ({ path })), size, chunkSize: CHUNK, daemonSleep: 1 })
  await created.track('bk', { path: join(d, 'bk.track') })
  await created.close()
  const seed = Number(process.env.MD_BITMAP_CRASH_SEED) || (Date.now() & 0xffff) * 7 + 1
  t.log(`seed ${seed} (replay with MD_BITMAP_CRASH_SEED=${seed})`)
  const prng = new Prng(seed)
  let sawUnacked = 0
  for (let round = 0; round < 20; round++) {
    const before = members.map((m) => readFileSync(m))
    const s = await serveCli(t, ['--bitmap', bitmap, '--port', '0', '--export', 'md', '--no-control'])
    t.truthy(s.url, s.printed.err)
    const member = await NbdMember.open(s.url!, { timeoutMs: 5000 })
    const issued = new Set<number>()
    const acked = new Set<number>()
    let stop = false
    let ackedWrites = 0
    const writer = async (w: number) => {
      for (let i = 0; !stop; i++) {
        const pages = 1 + prng.below(24)
        const offset = prng.below((size - pages * 4096) / 4096 + 1) * 4096
        const cs = chunksOf([{ offset, length: pages * 4096 }])
        for (const c of cs) issued.add(c) // before the write is issued
        try {
          await member.write(pattern(pages * 4096, round * 100000 + w * 1000 + i), offset)
        } catch {
          return // the server is gone
        }
        for (const c of cs) acked.add(c)
        ackedWrites++
      }
    }
    const writers = Array.from({ length: 6 }, (_, w) => writer(w))
    // Killed after a random number of acknowledged writes, the others mid-flight.
    const killAfter = 1 + prng.below(60)
    await until(() => ackedWrites >= killAfter, 20_000, 'writes to be acknowledged')
    s.child.kill('SIGKILL')
    await s.exited
    stop = true
    await Promise.all(writers)
    await member.close().catch(() => {})
    if (issued.size > acked.size) sawUnacked++

    const mirror = await Mirror.open({ bitmap })
    const set = new Set(chunksOf(mirror.changes('bk')))
    const after = members.map((m) => readFileSync(m))
    const changedOnDisk = new Set<number>()
    for (let c = 0; c < size / CHUNK; c++) {
      for (let m = 0; m < members.length; m++) if (!before[m].subarray(c * CHUNK, (c + 1) * CHUNK).equals(after[m].subarray(c * CHUNK, (c + 1) * CHUNK))) changedOnDisk.add(c)
    }
    const lostAcked = sorted(acked).filter((c) => !set.has(c))
    const lostChanged = sorted(changedOnDisk).filter((c) => !set.has(c))
    const neverWritten = sorted(set).filter((c) => !issued.has(c))
    t.deepEqual(lostAcked, [], `round ${round}: every acknowledged chunk is set`)
    t.deepEqual(lostChanged, [], `round ${round}: every chunk whose bytes changed on a member is set`)
    t.deepEqual(neverWritten, [], `round ${round}: no chunk is set that no write touched`)
    t.true(acked.size > 0, `round ${round}: some writes were acknowledged`)
    // The next round starts from a checkpoint, as a backup would.
    await mirror.checkpoint('bk')
    await mirror.close()
  }
  t.log(`${sawUnacked} of 20 rounds were killed with writes unacknowledged`)
})
