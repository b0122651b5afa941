/**
 * Discard and write-zeroes: `mirror.discard` / `mirror.writeZeroes` punch holes in the
 * member files (fewer blocks on disk, `du`), leave every member reading zeroes and the
 * members identical, and mark the chunks in the bitmap like a write; members without
 * a cheaper way get zeroes written; a member on a block device (a loop device) is
 * zeroed with unmapping, so its backing file shrinks. Through `md-bitmap serve`: a guest-style `fstrim`
 * (ext4 on a loop device over `nbdfuse`'s view of the export, since the nbd kernel
 * module is not available) and qemu-io's `discard` / `write -z` shrink both member
 * files; and the same over an NBD member on qemu-nbd (`NBD_CMD_WRITE_ZEROES`).
 */
import test, { type ExecutionContext } from 'ava'
import { execFileSync, spawn } from 'node:child_process'
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { FileMember, Mirror, NbdMember, allocAligned, openNbdOrFileMember, type Member, type MemberSpec } from '../src'
import { TxFlag } from '../src/nbd/protocol'
import { ensureBuilt } from './helpers/built'
import { requires } from './helpers/env'
import { attachLoop, detach, isMounted, unmount } from './helpers/loopfs'
import { IDLE, KiB, MiB, codeOf, onDisk, pattern } from './helpers/mirror'
import { qemuIo, run, startQemuNbd } from './helpers/nbd'
import { serveCli, servedMirror } from './helpers/served-mirror'
import { diskTempDir, removeDir } from './helpers/tmp'
import { sleep, until } from './helpers/wait'

const dir = diskTempDir('md-bitmap-discard-')
test.after.always(() => removeDir(dir))

/** Bytes a file takes on disk (`du -B1`). */
function du(path: string): number {
  return Number(execFileSync('du', ['-B1', '--', path], { encoding: 'utf8' }).split('\t')[0])
}

const zeroes = (n: number) => Buffer.alloc(n)

/** A mirror on two plain file members (member 1 write-mostly, with write-behind), `data` written over its first `filled` bytes. */
async function filledMirror(t: ExecutionContext, name: string, size: number, filled: number) {
  const d = join(dir, name)
  mkdirSync(d)
  const paths = [join(d, 'a.img'), join(d, 'b.img')]
  const mirror = await Mirror.create({
    bitmap: join(d, 'bitmap'),
    members: [{ path: paths[0] }, { path: paths[1], writeMostly: true }],
    size,
    chunkSize: 64 * KiB,
    writeBehind: 64,
    daemonSleep: IDLE,
  })
  t.teardown(() => mirror.close().catch(() => {}))
  const data = pattern(filled, 9)
  for (let o = 0; o < filled; o += MiB) await mirror.write(data.subarray(o, o + MiB), o)
  await mirror.flush()
  await until(() => mirror.stats().behindInFlight === 0, 10_000, 'behind writes to drain')
  return { d, mirror, paths, data }
}

test('discard and writeZeroes punch holes in both member files; every member reads zeroes; the bits are set like a write', async (t) => {
  const { mirror, paths, data } = await filledMirror(t, 'lib', 16 * MiB, 8 * MiB)
  const before = paths.map(du)
  for (const b of before) t.true(b >= 8 * MiB, `written: ${b}`)
  await mirror.bitmap!.settle()
  t.deepEqual(mirror.bitmap!.dirtyChunks(), [], 'no bit set before')

  await mirror.discard(MiB, 3 * MiB)
  t.deepEqual(mirror.bitmap!.dirtyChunks(), [{ offset: MiB, length: 3 * MiB }], 'the discarded chunks are marked like a write')
  await mirror.writeZeroes(5 * MiB, 2 * MiB)
  await mirror.flush()
  const after = paths.map(du)
  for (const [i, p] of paths.entries()) {
    t.true(after[i] <= before[i] - 5 * MiB, `${p} gave back its blocks: ${before[i]} → ${after[i]}`)
    t.is(statSync(p).size, 16 * MiB, 'the size is kept')
    const bytes = onDisk(p, 0, 8 * MiB)
    t.true(bytes.subarray(MiB, 4 * MiB).equals(zeroes(3 * MiB)), `${p} reads zeroes where discarded`)
    t.true(bytes.subarray(5 * MiB, 7 * MiB).equals(zeroes(2 * MiB)), `${p} reads zeroes where zeroed`)
    t.true(bytes.subarray(0, MiB).equals(Buffer.from(data.subarray(0, MiB))), `${p} keeps the rest`)
    t.true(bytes.subarray(4 * MiB, 5 * MiB).equals(Buffer.from(data.subarray(4 * MiB, 5 * MiB))), `${p} keeps the rest`)
  }
  t.true(onDisk(paths[0], 0, 16 * MiB).equals(onDisk(paths[1], 0, 16 * MiB)), 'the members are identical')
  const b = allocAligned(MiB)
  b.fill(1)
  await mirror.read(b, 2 * MiB)
  t.true(Buffer.from(b).equals(zeroes(MiB)), 'the mirror reads zeroes')
  t.is((await mirror.check()).mismatchSectors, 0)

  t.is(await codeOf(mirror.discard(100, 4096)), 'EALIGN')
  t.is(await codeOf(mirror.writeZeroes(15 * MiB, 2 * MiB)), 'EOUT_OF_RANGE')
  t.is(await codeOf(mirror.discard(0, 0)), 'EINVAL')
})

/** A member with only what the seam requires (no discard, no writeZeroes) over `inner`, whose writes complete `delayMs` late. */
function bareMember(inner: FileMember, delayMs: number): Member & { writes: number; writesInFlight: number } {
  return {
    path: inner.path,
    size: inner.size,
    alignment: inner.alignment,
    writes: 0,
    writesInFlight: 0,
    read: (target, offset) => inner.read(target, offset),
    async write(data, offset) {
      this.writes++
      this.writesInFlight++
      try {
        if (delayMs) await sleep(delayMs)
        await inner.write(data, offset)
      } finally {
        this.writesInFlight--
      }
    },
    flush: () => inner.flush(),
    close: () => inner.close(),
  }
}

test('a member without discard/writeZeroes gets zeroes written through write, in its write order after a behind write', async (t) => {
  const d = join(dir, 'bare')
  mkdirSync(d)
  const paths = [join(d, 'a.img'), join(d, 'b.img')]
  const bare: ReturnType<typeof bareMember>[] = []
  const openMember = async (spec: MemberSpec) => (bare[spec.index] = bareMember(await FileMember.open(spec.path), spec.writeMostly ? 50 : 0))
  const m = await Mirror.create({ bitmap: join(d, 'bitmap'), members: [{ path: paths[0] }, { path: paths[1], writeMostly: true }], size: MiB, chunkSize: 64 * KiB, writeBehind: 16, daemonSleep: IDLE, openMember })
  t.teardown(() => m.close().catch(() => {}))
  // A behind write still in flight on the slow member, then a discard over it: the
  // discard must land after it there, or the slow member would keep the old data.
  await m.write(pattern(256 * KiB, 4), 0)
  t.is(m.stats().behindWrites, 1)
  t.true(m.members[1].writesInFlight > 0, 'the behind write is still in flight on the slow member')
  const writesBefore = bare.map((b) => b.writes)
  await m.discard(0, 256 * KiB)
  for (const i of [0, 1]) t.true(bare[i].writes > writesBefore[i], `member ${i}: zeroes were written through write`)
  await until(() => bare[1].writesInFlight === 0, 10_000, 'the slow member to finish')
  for (const p of paths) t.true(onDisk(p, 0, 256 * KiB).equals(zeroes(256 * KiB)), `${p} reads zeroes`)
})

const withLoop = requires(['root', 'loop', 'losetup'])

withLoop('a member on a block device (a loop device): discard zeroes it with unmapping, so its backing file shrinks too', async (t) => {
  const d = join(dir, 'blockdev')
  mkdirSync(d)
  const image = join(d, 'backing.img')
  const file = join(d, 'file.img')
  execFileSync('truncate', ['-s', `${16 * MiB}`, image])
  const loop = attachLoop(image)
  t.teardown(() => detach(loop))
  const mirror = await Mirror.create({ bitmap: join(d, 'bitmap'), members: [{ path: loop }, { path: file }], size: 16 * MiB, chunkSize: 64 * KiB, daemonSleep: IDLE, assumeClean: true })
  t.teardown(() => mirror.close().catch(() => {}))
  const data = pattern(8 * MiB, 5)
  await mirror.write(data, 0)
  await mirror.flush()
  const before = [du(image), du(file)]
  await mirror.discard(MiB, 6 * MiB)
  await mirror.flush()
  const after = [du(image), du(file)]
  t.true(after[0] <= before[0] - 5 * MiB, `the loop device's backing file: ${before[0]} → ${after[0]}`)
  t.true(after[1] <= before[1] - 5 * MiB, `the file member: ${before[1]} → ${after[1]}`)
  for (const p of [loop, file]) {
    const bytes = onDisk(p, 0, 8 * MiB)
    t.true(bytes.subarray(MiB, 7 * MiB).equals(zeroes(6 * MiB)), `${p} reads zeroes`)
    t.true(bytes.subarray(7 * MiB).equals(Buffer.from(data.subarray(7 * MiB))), `${p} keeps the rest`)
  }
  t.is((await mirror.check()).mismatchSectors, 0)
  await mirror.close()
})

const withNbdfuse = requires(['root', 'loop', 'fs:fuse', 'nbdfuse', 'mkfs.ext4', 'fstrim', 'losetup'])

withNbdfuse('a guest-style fstrim (ext4 over the export served by md-bitmap serve) makes both member files smaller; the members stay identical', async (t) => {
  t.timeout(180_000)
  const SIZE = 64 * MiB
  const d = join(dir, 'fstrim')
  mkdirSync(d)
  const paths = [join(d, 'a.img'), join(d, 'b.img')]
  const bitmap = join(d, 'bitmap')
  const created = await Mirror.create({ bitmap, members: [{ path: paths[0] }, { path: paths[1], writeMostly: true }], size: SIZE, chunkSize: 64 * KiB, writeBehind: 256 })
  await created.close()
  ensureBuilt()
  const serve = await serveCli(t, ['--bitmap', bitmap, '--socket', join(d, 'md.sock'), '--export', 'md'])
  const url = serve.url
  t.truthy(url, serve.printed.err)

  // The "guest": nbdfuse shows the export as a file, a loop device makes it a disk.
  // Named like the loop helpers' directories, so a crashed run's leftovers are swept.
  const g = mkdtempSync(join(tmpdir(), `md-bitmap-test-${process.pid}-fstrim-`))
  const fuseDir = join(g, 'fuse')
  const fsDir = join(g, 'mnt')
  mkdirSync(fuseDir)
  mkdirSync(fsDir)
  let loop: string | null = null
  const nbdfuse = spawn('nbdfuse', [join(fuseDir, 'disk'), url!], { stdio: ['ignore', 'ignore', 'pipe'] })
  let nbdfuseErr = ''
  nbdfuse.stderr.setEncoding('utf8').on('data', (x: string) => (nbdfuseErr += x))
  t.teardown(() => void nbdfuse.kill('SIGKILL'))
  t.teardown(() => {
    if (isMounted(fsDir)) unmount(fsDir)
    if (loop) detach(loop)
    if (isMounted(fuseDir)) unmount(fuseDir)
    rmSync(g, { recursive: true, force: true })
  })
  await until(() => isMounted(fuseDir) || nbdfuse.exitCode !== null, 20_000, 'nbdfuse to show the export')
  t.true(existsSync(join(fuseDir, 'disk')), nbdfuseErr)
  loop = attachLoop(join(fuseDir, 'disk'))
  execFileSync('mkfs.ext4', ['-q', '-F', '-E', 'nodiscard,lazy_itable_init=0,lazy_journal_init=0', loop])
  execFileSync('mount', ['-t', 'ext4', loop, fsDir])
  execFileSync('dd', ['if=/dev/urandom', `of=${join(fsDir, 'data')}`, 'bs=1M', 'count=32', 'conv=fsync', 'status=none'])
  execFileSync('sync', ['-f', fsDir])
  await until(() => paths.every((p) => du(p) >= 32 * MiB), 20_000, 'both members to hold the file')
  const before = paths.map(du)

  rmSync(join(fsDir, 'data'))
  execFileSync('sync', ['-f', fsDir])
  const trimmed = execFileSync('fstrim', ['-v', fsDir], { encoding: 'utf8' })
  t.regex(trimmed, /trimmed/)
  const after = paths.map(du)
  for (const [i, p] of paths.entries()) t.true(after[i] <= before[i] - 30 * MiB, `${p}: ${before[i]} → ${after[i]} bytes on disk after fstrim`)

  unmount(fsDir)
  detach(loop)
  loop = null
  unmount(fuseDir)
  serve.child.kill('SIGTERM')
  t.is(await serve.exited, 0, serve.printed.err)
  t.true(readFileSync(paths[0]).equals(readFileSync(paths[1])), 'the members are identical')
  const again = await Mirror.open({ bitmap })
  t.teardown(() => again.close().catch(() => {}))
  t.false(again.needsResync, 'closed cleanly')
  t.is((await again.check()).mismatchSectors, 0)
})

const withQemu = requires(['qemu-io', 'qemu-nbd'])

withQemu('qemu-io discard and write -z -u through the served mirror shrink both members; write -z (NO_HOLE) zeroes without punching', async (t) => {
  const { server, mirror, members: paths, settled } = await servedMirror(t, join(dir, 'qemu-io'), { size: 16 * MiB })
  await qemuIo(server.url, ['write -P 0x5a 0 12M', 'flush'])
  await settled()
  const sizes = () => paths.map(du)
  const s0 = sizes()
  await qemuIo(server.url, ['discard 0 4M'])
  const s1 = sizes()
  for (const i of [0, 1]) t.true(s1[i] <= s0[i] - 4 * MiB, `discard: ${s0[i]} → ${s1[i]}`)
  // write -z: NBD_CMD_WRITE_ZEROES with NO_HOLE: zeroes, the blocks kept.
  await qemuIo(server.url, ['write -z 4M 2M'])
  const s2 = sizes()
  for (const i of [0, 1]) t.true(s2[i] >= s1[i] - 64 * KiB, `write -z keeps the blocks: ${s1[i]} → ${s2[i]}`)
  // write -z -u: WRITE_ZEROES that may unmap: punched.
  await qemuIo(server.url, ['write -z -u 6M 4M'])
  const s3 = sizes()
  for (const i of [0, 1]) t.true(s3[i] <= s2[i] - 4 * MiB, `write -z -u: ${s2[i]} → ${s3[i]}`)
  await qemuIo(server.url, ['read -P 0 0 10M'])
  await mirror.flush()
  t.true(onDisk(paths[0], 0, 16 * MiB).equals(onDisk(paths[1], 0, 16 * MiB)), 'the members are identical')
  t.is((await mirror.check()).mismatchSectors, 0)
})

withQemu('an NBD member on qemu-nbd: discard sends NBD_CMD_WRITE_ZEROES, which punches the remote file; both members read zeroes', async (t) => {
  const d = join(dir, 'nbd-member')
  mkdirSync(d)
  const local = join(d, 'local.img')
  const remote = join(d, 'remote.img')
  await FileMember.ensure(remote, 16 * MiB)
  const q = await startQemuNbd(t, remote, { args: ['--discard=unmap'] })
  const probe = await NbdMember.open(q.url)
  t.true((probe.flags & TxFlag.SEND_WRITE_ZEROES) !== 0, 'qemu-nbd takes WRITE_ZEROES')
  await probe.close()
  const mirror = await Mirror.create({
    bitmap: join(d, 'bitmap'),
    members: [{ path: local }, { path: q.url, writeMostly: true }],
    size: 16 * MiB,
    chunkSize: 64 * KiB,
    writeBehind: 64,
    daemonSleep: IDLE,
    openMember: openNbdOrFileMember,
  })
  t.teardown(() => mirror.close().catch(() => {}))
  const data = pattern(8 * MiB, 2)
  for (let o = 0; o < 8 * MiB; o += MiB) await mirror.write(data.subarray(o, o + MiB), o)
  await mirror.flush()
  await until(() => mirror.stats().behindInFlight === 0, 10_000, 'behind writes to drain')
  const before = [du(local), du(remote)]
  await mirror.discard(0, 6 * MiB)
  await mirror.flush()
  const after = [du(local), du(remote)]
  t.true(after[0] <= before[0] - 5 * MiB, `local: ${before[0]} → ${after[0]}`)
  t.true(after[1] <= before[1] - 5 * MiB, `remote: ${before[1]} → ${after[1]}`)
  t.true(onDisk(remote, 0, 8 * MiB).equals(onDisk(local, 0, 8 * MiB)), 'the members are identical')
  t.true(onDisk(remote, 0, 6 * MiB).equals(zeroes(6 * MiB)))
  t.is((await mirror.check()).mismatchSectors, 0)
  await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', local, remote])
})
