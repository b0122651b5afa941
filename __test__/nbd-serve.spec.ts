/**
 * A mirror served over NBD (serveNbd), with qemu-io and qemu-img from Debian as the
 * clients, on 127.0.0.1 and on a Unix socket: patterns written and read back
 * (qemu-io's `read -P` verifies every byte), unaligned writes (the client does the
 * read-modify-write at the advertised minimum block size), `qemu-img convert` into
 * the export, and `qemu-img compare` of the export against each member file; and the
 * `md-bitmap serve` command (the built CLI, rebuilt first when src/ is newer: helpers/built.ts).
 */
import test from 'ava'
import { randomFillSync } from 'node:crypto'
import { closeSync, mkdirSync, openSync, readFileSync, truncateSync, writeFileSync, writeSync } from 'node:fs'
import { join } from 'node:path'

import { FileMember, Mirror, NbdMember, allocAligned, openNbdOrFileMember, serveNbd } from '../src'
import { ensureBuilt } from './helpers/built'
import { requires } from './helpers/env'
import { KiB, MiB } from './helpers/mirror'
import { diskTempDir, removeDir } from './helpers/tmp'
import { QEMU_TOOLS, qemuIo, run, startQemuNbd } from './helpers/nbd'
import { serveCli, servedMirror as served } from './helpers/served-mirror'

const withQemu = requires(QEMU_TOOLS)

const dir = diskTempDir('md-bitmap-nbd-serve-')
test.after.always(() => removeDir(dir))
test.before(ensureBuilt)

const SIZE = 16 * MiB

/** The served two-member mirror of helpers/served-mirror, SIZE bytes, in dir/name. */
const servedMirror = (t: { teardown(fn: () => unknown): void }, name: string, where: { socket?: string } = {}) => served(t, join(dir, name), { size: SIZE, ...where })

withQemu('qemu-io writes patterns into the served mirror and reads them back; qemu-img compare matches both members', async (t) => {
  const { mirror, server, members, settled } = await servedMirror(t, 'qemu-io')
  t.regex(server.url, /^nbd:\/\/127\.0\.0\.1:\d+\/md$/)
  const info = await run('qemu-img', ['info', '--output=json', '-f', 'raw', server.url])
  t.is(JSON.parse(info)['virtual-size'], SIZE)
  await qemuIo(server.url, ['write -P 0xab 0 64k', 'write -P 0xcd 1M 1M', 'write -P 0x11 15M 1M', 'write -z 2M 128k', 'flush'])
  // Unaligned: qemu reads around it and writes whole blocks of the advertised minimum.
  await qemuIo(server.url, ['write -P 0x77 1000 3000'])
  const out = await qemuIo(server.url, [
    'read -P 0xab 0 1000',
    'read -P 0x77 1000 3000',
    'read -P 0xab 4000 61536',
    'read -P 0xcd 1M 1M',
    'read -P 0x11 15M 1M',
    'read -P 0 2M 128k',
    'read -P 0 64k 960k',
  ])
  t.regex(out, /read 61536\/61536 bytes/)
  t.true(mirror.stats().writes > 0)
  t.true(mirror.stats().behindWrites > 0, 'writes went behind to the write-mostly member')

  // What the mirror says matches what the clients wrote, read through the library too.
  const b = allocAligned(4096)
  await mirror.read(b, 0)
  t.is(b[999], 0xab)
  t.is(b[1000], 0x77)
  t.is(b[3999], 0x77)
  t.is(b[4000], 0xab)

  await settled()
  for (const m of members) {
    const cmp = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', server.url, m])
    t.regex(cmp, /Images are identical/, m)
  }
  t.true(readFileSync(members[0]).equals(readFileSync(members[1])))
  // A pattern that is not there fails the verification (the check can fail).
  await t.throwsAsync(qemuIo(server.url, ['read -P 0xcd 0 4k']), { message: /Pattern verification failed/ })
})

withQemu('qemu-img convert into the served mirror (Unix socket); compare against the source and both members', async (t) => {
  const sock = join(dir, 'serve.sock')
  const { server, members, settled, d } = await servedMirror(t, 'convert', { socket: sock })
  t.is(server.url, `nbd+unix:///md?socket=${sock}`)
  const src = join(d, 'src.raw')
  const data = Buffer.alloc(8 * MiB)
  randomFillSync(data)
  writeFileSync(src, Buffer.concat([data, Buffer.alloc(SIZE - data.length)]))
  await run('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', src, server.url])
  t.regex(await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', src, server.url]), /Images are identical/)
  await settled()
  for (const m of members) t.regex(await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', src, m]), /Images are identical/, m)
  // And it can fail: one byte changed in the source.
  const fh = openSync(src, 'r+')
  writeSync(fh, Buffer.from([data[4096] ^ 0xff]), 0, 1, 4096)
  closeSync(fh)
  await t.throwsAsync(run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', src, server.url]), { message: /differ|Content mismatch/i })
})

test('NbdMember on a served mirror: large requests split at the advertised maximum; FUA and flush reach the mirror', async (t) => {
  const d = join(dir, 'split')
  mkdirSync(d)
  const file = join(d, 'target.img')
  await FileMember.ensure(file, 4 * MiB)
  const target = await FileMember.open(file)
  let flushes = 0
  const counted = Object.assign(Object.create(target), { flush: () => (flushes++, target.flush()) })
  t.teardown(() => target.close())
  const server = await serveNbd(counted, { port: 0, exportName: 'f', maxPayload: 64 * KiB })
  t.teardown(() => server.close())
  const m = await NbdMember.open(server.url)
  t.deepEqual(m.info.blockSize, { min: target.alignment, preferred: Math.max(4096, target.alignment), max: 64 * KiB })
  const data = allocAligned(MiB)
  randomFillSync(data)
  const before = server.requests
  await m.write(data, MiB, { fua: true })
  t.is(server.requests - before, 16, '1 MiB in 64 KiB requests')
  t.is(flushes, 16, 'each FUA piece flushed')
  await m.flush()
  t.is(flushes, 17)
  const back = allocAligned(MiB)
  await m.read(back, MiB)
  t.true(Buffer.from(back).equals(Buffer.from(data)))
  // Many requests in flight, each answered with its own data.
  const pages = await Promise.all(Array.from({ length: 200 }, async (_, i) => {
    const p = allocAligned(4096)
    await m.read(p, MiB + ((i * 4096) % MiB))
    return p
  }))
  t.true(pages.every((p, i) => Buffer.from(p).equals(Buffer.from(data.subarray((i * 4096) % MiB, ((i * 4096) % MiB) + 4096)))))
  await m.close()
  t.false(m.connected)
  t.is(await m.read(allocAligned(4096), 0).then(() => 'ok', (e) => e.code), 'ECLOSED')
})

withQemu('md-bitmap serve: a mirror with a remote qemu-nbd member served on a Unix socket; qemu-io through it; SIGTERM closes cleanly', async (t) => {
  const d = join(dir, 'cli')
  mkdirSync(d)
  const local = join(d, 'local.img')
  const remote = join(d, 'remote.img')
  writeFileSync(remote, '')
  truncateSync(remote, SIZE)
  const q = await startQemuNbd(t, remote)
  const bitmap = join(d, 'bitmap')
  const m = await Mirror.create({
    bitmap,
    members: [{ path: local }, { path: q.url, writeMostly: true }],
    size: SIZE,
    chunkSize: 64 * KiB,
    writeBehind: 16,
    assumeClean: true,
    openMember: openNbdOrFileMember,
  })
  await m.close()
  const sock = join(d, 'md.sock')
  const { child, exited, printed, url } = await serveCli(t, ['--bitmap', bitmap, '--socket', sock, '--export', 'md'])
  t.is(url, `nbd+unix:///md?socket=${sock}`, `stdout: ${printed.out} stderr: ${printed.err}`)
  await qemuIo(url!, ['write -P 0x3c 0 1M', 'write -P 0x3d 5M 64k', 'write -P 0x3e 7777 1234'])
  await qemuIo(url!, ['read -P 0x3c 0 7777', 'read -P 0x3e 7777 1234', 'read -P 0x3c 9011 1039565', 'read -P 0x3d 5M 64k'])
  child.kill('SIGTERM')
  t.is(await exited, 0, `stderr: ${printed.err}`)
  t.regex(printed.err, /SIGTERM: stopping/)
  t.true(JSON.parse(readFileSync(`${bitmap}.mirror.json`, 'utf8')).clean, 'closed cleanly')
  t.true(readFileSync(local).equals(readFileSync(remote)), 'the remote member has every write after the clean close')
  const again = await Mirror.open({ bitmap, openMember: openNbdOrFileMember })
  t.false(again.needsResync)
  await again.close()
})
