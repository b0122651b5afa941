/**
 * NBD over TLS (NBD_OPT_STARTTLS), both ends, against Debian's tools on 127.0.0.1 and
 * Unix sockets, with credentials made in the test by certtool and psktool:
 *
 * - the served mirror (`serveNbd` with `tls`, and `md-bitmap serve --tls-creds`/
 *   `--tls-psk`) to qemu-img convert/compare and qemu-io through `--object
 *   tls-creds-x509,…,endpoint=client` and `tls-creds-psk`, and to `nbdinfo nbds://…`;
 * - refusals: a plaintext client, a client trusting another CA, a client without a
 *   certificate when peers are verified, a wrong pre-shared key; the server goes on
 *   serving the others;
 * - `NbdMember` as the write-mostly member over TLS to `qemu-nbd --tls-creds` (X.509
 *   with client certificates, and PSK) and to nbd-server (`force_tls`): writes,
 *   write-behind, members identical; qemu-nbd killed mid-workload, then reAdd over TLS
 *   copies only the dirty chunks; and
 *   its typed errors (a server certificate from another CA, a server without TLS, a
 *   plain URL to a TLS server).
 *
 * The CLI test runs the built package (`npm run build:ts` first).
 */
import test from 'ava'
import { randomFillSync } from 'node:crypto'
import { mkdirSync, readFileSync, truncateSync, writeFileSync } from 'node:fs'
import { connect } from 'node:net'
import { join } from 'node:path'

import {
  FileMember,
  Mirror,
  NbdMember,
  allocAligned,
  formatNbdUrlTls,
  isNbdUrl,
  listNbdExports,
  parseNbdUrlTls,
  parsePskFile,
  readClientTlsCredentials,
  readServerTlsCredentials,
  type Member,
  type MemberSpec,
  type NbdClientTlsOptions,
  type NbdServerTlsCredentials,
} from '../src'
import { encodeMetaContextRequest } from '../src/nbd/meta-context'
import { Opt, Rep, encodeInfoRequest, encodeOption } from '../src/nbd/protocol'
import { makePki, makePsk, TLS_TOOLS, type Pki } from './helpers/certs'
import { requires } from './helpers/env'
import { diskTempDir, removeDir } from './helpers/tmp'
import { IDLE, KiB, MiB, codeOf } from './helpers/mirror'
import { until } from './helpers/wait'
import { QEMU_TOOLS, run, startNbdServer, startQemuNbd } from './helpers/nbd'
import { RawNbdClient } from './helpers/nbd-raw'
import { serveCli, servedMirror as served } from './helpers/served-mirror'

const withQemu = requires([...QEMU_TOOLS, ...TLS_TOOLS])
const withNbdinfo = requires([...QEMU_TOOLS, ...TLS_TOOLS, 'nbdinfo'])
const withNbdServerTls = requires([...TLS_TOOLS, 'nbd-server'])
const withTls = requires(TLS_TOOLS)

const dir = diskTempDir('md-bitmap-nbd-tls-')
test.after.always(() => removeDir(dir))

const SIZE = 16 * MiB

let pkiMade: Promise<{ pki: Pki; other: Pki; psk: { dir: string; file: string; identity: string }; wrongPsk: { dir: string; file: string; identity: string } }> | undefined
/** One CA, another CA, and two pre-shared keys for the same identity, made once for the file. */
function credentials() {
  pkiMade ??= (async () => ({
    pki: await makePki(join(dir, 'pki')),
    other: await makePki(join(dir, 'other'), 'another CA'),
    psk: await makePsk(join(dir, 'psk'), 'alice'),
    wrongPsk: await makePsk(join(dir, 'wrong-psk'), 'alice'),
  }))()
  return pkiMade
}

/** The served two-member mirror of helpers/served-mirror, with `tls`. */
const servedMirror = (t: { teardown(fn: () => unknown): void }, name: string, tls: NbdServerTlsCredentials, where: { socket?: string } = {}) =>
  served(t, join(dir, `served-${name}`), { size: SIZE, ...where, serve: { tls } })

/** qemu's `--image-opts` for the export at `port` through the TLS object `tls0`. */
function imageOpts(port: number): string {
  return `driver=raw,file.driver=nbd,file.host=127.0.0.1,file.port=${port},file.export=md,file.tls-creds=tls0`
}
const x509Object = (d: string) => ['--object', `tls-creds-x509,id=tls0,endpoint=client,dir=${d}`]
const pskObject = (p: { dir: string; identity: string }) => ['--object', `tls-creds-psk,id=tls0,endpoint=client,dir=${p.dir},username=${p.identity}`]

/** Random data in a raw file of SIZE bytes (the first half random, the rest zero). */
function sourceImage(d: string): string {
  const src = join(d, 'src.raw')
  const data = Buffer.alloc(SIZE)
  randomFillSync(data, 0, SIZE / 2)
  writeFileSync(src, data)
  return src
}

/** Whether a plain TCP connection still gets the NBD greeting: the server still serves. */
function greets(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect({ host: '127.0.0.1', port })
    let got = Buffer.alloc(0)
    s.on('data', (b) => {
      got = Buffer.concat([got, b])
      if (got.length >= 8) {
        s.destroy()
        resolve(got.subarray(0, 8).toString('latin1') === 'NBDMAGIC')
      }
    })
    s.on('error', () => resolve(false))
    s.on('close', () => resolve(false))
  })
}

withQemu('X.509: qemu-img convert/compare and qemu-io through tls-creds-x509 into the served mirror; members identical', async (t) => {
  const { pki } = await credentials()
  const { d, server, members, settled } = await servedMirror(t, 'x509', await readServerTlsCredentials({ dir: pki.server }))
  t.regex(server.url, /^nbds:\/\/127\.0\.0\.1:\d+\/md$/)
  const port = (server.address as { port: number }).port
  const src = sourceImage(d)
  await run('qemu-img', ['convert', '-n', ...x509Object(pki.anonymous), '-f', 'raw', src, '--target-image-opts', imageOpts(port)])
  t.regex(await run('qemu-img', ['compare', ...x509Object(pki.anonymous), '--image-opts', `driver=raw,file.filename=${src}`, imageOpts(port)]), /Images are identical/)
  const io = await run('qemu-io', [...x509Object(pki.anonymous), '--image-opts', imageOpts(port), '-c', 'write -P 0x5a 12M 1M', '-c', 'read -P 0x5a 12M 1M', '-c', 'read -P 0 9M 1M'])
  t.notRegex(io, /Pattern verification failed|error/i)
  t.regex(io, /read 1048576\/1048576 bytes/)
  await settled()
  const expected = readFileSync(src)
  expected.fill(0x5a, 12 * MiB, 13 * MiB)
  for (const m of members) t.true(readFileSync(m).equals(expected), `${m} has what the clients wrote`)
  // A client certificate is fine where none is required.
  t.regex(await run('qemu-img', ['info', ...x509Object(pki.client), '--image-opts', imageOpts(port)]), /virtual size: 16 MiB/)
})

withQemu('X.509: a plaintext client and a client trusting another CA are refused; the server goes on serving', async (t) => {
  const { pki, other } = await credentials()
  const { server } = await servedMirror(t, 'refused', await readServerTlsCredentials({ dir: pki.server }))
  const port = (server.address as { port: number }).port
  const plain = `nbd://127.0.0.1:${port}/md`
  const e1 = await t.throwsAsync(run('qemu-img', ['info', '-f', 'raw', plain]))
  t.regex(e1!.message, /TLS/i, 'qemu says the server wants TLS')
  const e2 = await t.throwsAsync(run('qemu-img', ['info', ...x509Object(other.anonymous), '--image-opts', imageOpts(port)]))
  t.regex(e2!.message, /certificate|verif|TLS/i)
  // Our own client, in the clear: the typed error, and no export listed or opened.
  t.is(await codeOf(NbdMember.open(plain)), 'ENBD_TLS_REQUIRED')
  t.true(await greets(port))
  t.regex(await run('qemu-img', ['info', ...x509Object(pki.anonymous), '--image-opts', imageOpts(port)]), /virtual size: 16 MiB/, 'a good client is still served')
})

withQemu('X.509 with verifyPeer: a client without a certificate is refused, one with a certificate from the CA is served', async (t) => {
  const { pki, other } = await credentials()
  const { server } = await servedMirror(t, 'verify-peer', await readServerTlsCredentials({ dir: pki.server, verifyPeer: true }))
  const port = (server.address as { port: number }).port
  await t.throwsAsync(run('qemu-img', ['info', ...x509Object(pki.anonymous), '--image-opts', imageOpts(port)]))
  // A certificate from another CA, trusting the right CA for the server.
  const mixed = join(dir, 'mixed')
  mkdirSync(mixed)
  writeFileSync(join(mixed, 'ca-cert.pem'), readFileSync(pki.caCert))
  writeFileSync(join(mixed, 'client-cert.pem'), readFileSync(join(other.client, 'client-cert.pem')))
  writeFileSync(join(mixed, 'client-key.pem'), readFileSync(join(other.client, 'client-key.pem')))
  await t.throwsAsync(run('qemu-img', ['info', ...x509Object(mixed), '--image-opts', imageOpts(port)]))
  t.regex(await codeOf(NbdMember.open(`nbds://127.0.0.1:${port}/md`, { tls: await readClientTlsCredentials(mixed) })), /^ENBD_TLS/)
  t.regex(await run('qemu-img', ['info', ...x509Object(pki.client), '--image-opts', imageOpts(port)]), /virtual size: 16 MiB/)
  const m = await NbdMember.open(`nbds://127.0.0.1:${port}/md?tls-certificates=${pki.client}`)
  t.is(m.size, SIZE)
  await m.close()
})

withQemu('PSK: qemu-img and qemu-io through tls-creds-psk; a wrong key is refused', async (t) => {
  const { psk, wrongPsk } = await credentials()
  const { d, server, members, settled } = await servedMirror(t, 'psk', await readServerTlsCredentials({ pskFile: psk.file }))
  const port = (server.address as { port: number }).port
  const src = sourceImage(d)
  await run('qemu-img', ['convert', '-n', ...pskObject(psk), '-f', 'raw', src, '--target-image-opts', imageOpts(port)])
  t.regex(await run('qemu-img', ['compare', ...pskObject(psk), '--image-opts', `driver=raw,file.filename=${src}`, imageOpts(port)]), /Images are identical/)
  const io = await run('qemu-io', [...pskObject(psk), '--image-opts', imageOpts(port), '-c', 'read -P 0 10M 1M'])
  t.notRegex(io, /Pattern verification failed|error/i)
  await t.throwsAsync(run('qemu-img', ['info', ...pskObject(wrongPsk), '--image-opts', imageOpts(port)]))
  t.is(await codeOf(NbdMember.open(`nbds://127.0.0.1:${port}/md?tls-psk-file=${wrongPsk.file}`)), 'ENBD_TLS')
  await settled()
  for (const m of members) t.true(readFileSync(m).equals(readFileSync(src)), m)
})

withNbdinfo('nbdinfo nbds:// with certificates (TCP and Unix socket) and with a PSK file', async (t) => {
  const { pki, psk } = await credentials()
  const tls = { ...(await readServerTlsCredentials({ dir: pki.server })), psk: (await readServerTlsCredentials({ pskFile: psk.file })).psk }
  const { server } = await servedMirror(t, 'nbdinfo', tls)
  const out = await run('nbdinfo', ['--json', `${server.url}?tls-certificates=${pki.anonymous}`])
  const info = JSON.parse(out)
  t.is(info.exports[0]['export-size'], SIZE)
  t.is(info.TLS ?? info.exports[0].TLS ?? true, true)
  t.regex(await run('nbdinfo', ['--size', `${server.url.replace('//', `//${psk.identity}@`)}?tls-psk-file=${psk.file}`]), new RegExp(`^${SIZE}`))
  await t.throwsAsync(run('nbdinfo', ['--size', server.url.replace(/^nbds/, 'nbd')]), { message: /TLS|tls/ })

  const sock = join(dir, 'nbdinfo.sock')
  const { server: onSocket } = await servedMirror(t, 'nbdinfo-unix', tls, { socket: sock })
  t.is(onSocket.url, `nbds+unix:///md?socket=${sock}`)
  // Over a Unix socket, libnbd checks the certificate against "localhost".
  t.regex(await run('nbdinfo', ['--size', `${onSocket.url}&tls-certificates=${pki.anonymous}`]), new RegExp(`^${SIZE}`))
  // Our own client over the Unix socket (the chain is verified; no host name to check), and listing over TLS.
  const m = await NbdMember.open(`${onSocket.url}&tls-certificates=${pki.anonymous}`)
  t.is(m.size, SIZE)
  await m.close()
  t.deepEqual(await listNbdExports(server.url, { tls: await readClientTlsCredentials(pki.anonymous) }), [{ name: 'md', description: '' }])
  t.is(await codeOf(listNbdExports(server.url.replace(/^nbds/, 'nbd'))), 'ENBD_TLS_REQUIRED')
})

/** An opener with TLS options for the NbdMembers it opens (kept, to be checked). */
function tlsOpener(tls: NbdClientTlsOptions) {
  const opened: NbdMember[] = []
  const open = async (spec: MemberSpec): Promise<Member> => {
    if (!isNbdUrl(spec.path)) return FileMember.open(spec.path)
    const m = await NbdMember.open(spec.path, { timeoutMs: 10_000, tls })
    opened.push(m)
    return m
  }
  return { open, opened }
}

/** A new directory with a zeroed remote file of SIZE bytes (and the local member's path). */
function remoteFile(name: string): { d: string; remote: string; local: string } {
  const d = join(dir, name)
  mkdirSync(d)
  const remote = join(d, 'remote.img')
  writeFileSync(remote, '')
  truncateSync(remote, SIZE)
  return { d, remote, local: join(d, 'local.img') }
}

/** A mirror of the local file and `url` (write-mostly, write-behind), both zeroes to start with. */
async function tlsMirror(t: { teardown(fn: () => unknown): void }, f: { d: string; local: string }, url: string, tls: NbdClientTlsOptions) {
  const o = tlsOpener(tls)
  const mirror = await Mirror.create({
    bitmap: join(f.d, 'bitmap'),
    members: [{ path: f.local }, { path: url, writeMostly: true }],
    size: SIZE,
    chunkSize: 64 * KiB,
    writeBehind: 64,
    daemonSleep: IDLE,
    assumeClean: true,
    openMember: o.open,
  })
  t.teardown(() => mirror.close().catch(() => {}))
  return { mirror, opened: o.opened }
}

/** qemu-nbd with `qemuArgs` (its TLS) on a zeroed remote file, and a mirror onto it over nbds://. */
async function remoteMirrorOverTls(t: { teardown(fn: () => unknown): void }, name: string, qemuArgs: string[], tls: NbdClientTlsOptions) {
  const f = remoteFile(name)
  const q = await startQemuNbd(t, f.remote, { args: qemuArgs })
  const url = q.url.replace(/^nbd:/, 'nbds:')
  return { ...f, q, url, ...(await tlsMirror(t, f, url, tls)) }
}

async function writeAndCompare(t: import('ava').ExecutionContext, mirror: Mirror, local: string, remote: string) {
  const data = allocAligned(4 * MiB)
  randomFillSync(data)
  await Promise.all([0, 1, 2, 3].map((i) => mirror.write(data.subarray(i * MiB, (i + 1) * MiB), 2 * MiB + i * 2 * MiB)))
  t.true(mirror.stats().behindWrites > 0, 'writes went behind to the remote member')
  await until(() => mirror.stats().behindInFlight === 0 && mirror.members.every((m) => m.writesInFlight === 0), 20_000, 'behind writes to drain')
  await mirror.flush()
  const back = allocAligned(MiB)
  await mirror.read(back, 4 * MiB)
  t.true(Buffer.from(back).equals(Buffer.from(data.subarray(MiB, 2 * MiB))))
  await mirror.close()
  t.true(readFileSync(local).equals(readFileSync(remote)), 'local and remote members identical')
}

withQemu('NbdMember over TLS to qemu-nbd --tls-creds (X.509, client certificate verified): write-behind, members identical', async (t) => {
  const { pki } = await credentials()
  const { mirror, opened, local, remote, url } = await remoteMirrorOverTls(
    t,
    'member-x509',
    ['--object', `tls-creds-x509,id=tls0,endpoint=server,dir=${pki.server},verify-peer=on`, '--tls-creds', 'tls0'],
    await readClientTlsCredentials(pki.client),
  )
  t.is(opened.length, 1)
  t.true(opened[0].connected)
  t.true(mirror.members.every((m) => m.state === 'in-sync'))
  await writeAndCompare(t, mirror, local, remote)
  // Without a client certificate qemu-nbd refuses; with another CA we refuse qemu-nbd.
  t.regex(await codeOf(NbdMember.open(url, { tls: await readClientTlsCredentials(pki.anonymous) })), /^ENBD_TLS/)
  const { other } = await credentials()
  t.is(await codeOf(NbdMember.open(url, { tls: await readClientTlsCredentials(other.client) })), 'ENBD_TLS_CERTIFICATE')
  t.is(await codeOf(NbdMember.open(url.replace(/^nbds/, 'nbd'))), 'ENBD_TLS_REQUIRED')
})

withQemu('NbdMember over TLS to qemu-nbd killed mid-workload: degraded, then reAdd over TLS copies only the dirty chunks; members identical', async (t) => {
  const { pki } = await credentials()
  const serverArgs = ['--object', `tls-creds-x509,id=tls0,endpoint=server,dir=${pki.server},verify-peer=on`, '--tls-creds', 'tls0']
  const { d, q, mirror, local, remote } = await remoteMirrorOverTls(t, 'member-killed', serverArgs, await readClientTlsCredentials(pki.client))
  const data = allocAligned(MiB)
  randomFillSync(data)
  await mirror.write(data, 0)
  await until(() => mirror.members[1].writesInFlight === 0, 10_000, 'the remote to catch up')
  q.kill('SIGKILL')
  await q.exited
  // Writes go on; the remote turns faulty on the first one that meets the dead connection.
  const later = allocAligned(256 * KiB)
  randomFillSync(later)
  for (let i = 0; i < 8; i++) await mirror.write(later, 8 * MiB + i * 256 * KiB)
  await until(() => mirror.members[1].state === 'faulty', 10_000, 'the remote member to turn faulty')
  t.regex(mirror.members[1].error?.code ?? '', /^ENBD_/)
  await until(() => mirror.stats().behindInFlight === 0, 20_000, 'the failed behind writes to end')
  const needed = mirror.bitmap!.neededChunks()
  t.true(needed.length > 0)
  const q2 = await startQemuNbd(t, remote, { port: q.port, args: serverArgs })
  t.teardown(() => q2.stop())
  const report = await mirror.reAdd(1)
  t.is(report.recovery, 'bitmap')
  t.deepEqual(new Set(report.chunks), new Set(needed))
  t.log(`${needed.length} chunks needed, ${report.chunksCopied} copied of ${SIZE / (64 * KiB)}`)
  t.true(report.chunksCopied < SIZE / (64 * KiB), 'only the dirty chunks')
  t.deepEqual(mirror.members.map((m) => m.state), ['in-sync', 'in-sync'])
  await mirror.close()
  t.true(readFileSync(local).equals(readFileSync(remote)), `members identical (${d})`)
})

withNbdServerTls('NbdMember over TLS to nbd-server (force_tls, X.509): write-behind, members identical', async (t) => {
  const { pki } = await credentials()
  const f = remoteFile('nbd-server')
  const ns = await startNbdServer(t, f.d, f.remote, 'remote', [
    `certfile = ${join(pki.server, 'server-cert.pem')}`,
    `keyfile = ${join(pki.server, 'server-key.pem')}`,
    `cacertfile = ${pki.caCert}`,
    'force_tls = true',
  ])
  t.is(await codeOf(NbdMember.open(ns.url)), 'ENBD_TLS_REQUIRED', 'nbd-server refuses the clear')
  const { mirror, opened } = await tlsMirror(t, f, ns.url.replace(/^nbd:/, 'nbds:'), await readClientTlsCredentials(pki.client))
  t.is(opened.length, 1)
  await writeAndCompare(t, mirror, f.local, f.remote)
})

withQemu('NbdMember over TLS to qemu-nbd with tls-creds-psk: write-behind, members identical', async (t) => {
  const { psk } = await credentials()
  const key = readFileSync(psk.file, 'utf8').trim().split(':')[1]
  const { mirror, local, remote } = await remoteMirrorOverTls(
    t,
    'member-psk',
    ['--object', `tls-creds-psk,id=tls0,endpoint=server,dir=${psk.dir}`, '--tls-creds', 'tls0'],
    { psk: { identity: psk.identity, key: Buffer.from(key, 'hex') } },
  )
  await writeAndCompare(t, mirror, local, remote)
})

withQemu('NbdMember: nbds:// to a server without TLS is ENBD_TLS_REFUSED, and a mirror does not use the member', async (t) => {
  const { pki } = await credentials()
  const f = remoteFile('no-tls')
  const q = await startQemuNbd(t, f.remote)
  const url = q.url.replace(/^nbd:/, 'nbds:')
  t.is(await codeOf(NbdMember.open(url, { tls: await readClientTlsCredentials(pki.client) })), 'ENBD_TLS_REFUSED')
  const o = tlsOpener(await readClientTlsCredentials(pki.client))
  const mirror = await Mirror.create({
    bitmap: join(f.d, 'bitmap'),
    members: [{ path: f.local }, { path: url, writeMostly: true }],
    size: SIZE,
    chunkSize: 64 * KiB,
    daemonSleep: IDLE,
    openMember: o.open,
  }).catch((e) => e)
  if (mirror instanceof Mirror) {
    t.teardown(() => mirror.close().catch(() => {}))
    t.not(mirror.members[1].state, 'in-sync', 'the member that would not start TLS is not used')
    t.is(mirror.members[1].error?.code, 'ENBD_TLS_REFUSED')
  } else {
    t.is((mirror as { code?: string }).code, 'ENBD_TLS_REFUSED')
  }
  t.is(o.opened.length, 0)
})

withQemu('md-bitmap serve --tls-creds --tls-verify-peer --tls-psk: qemu-img with a client certificate or the key; without, refused', async (t) => {
  const { pki, psk } = await credentials()
  const d = join(dir, 'cli')
  mkdirSync(d)
  const bitmap = join(d, 'bitmap')
  const m = await Mirror.create({ bitmap, members: [{ path: join(d, 'a.img') }, { path: join(d, 'b.img'), writeMostly: true }], size: SIZE, chunkSize: 64 * KiB, writeBehind: 16 })
  await m.close()
  const { child, exited, printed, url } = await serveCli(t, ['--bitmap', bitmap, '--port', '0', '--export', 'md', '--tls-creds', pki.server, '--tls-verify-peer', '--tls-psk', psk.file])
  t.regex(url ?? '', /^nbds:\/\/127\.0\.0\.1:\d+\/md$/, `stdout: ${printed.out} stderr: ${printed.err}`)
  const port = Number(/:(\d+)\//.exec(url!)![1])
  await run('qemu-io', [...x509Object(pki.client), '--image-opts', imageOpts(port), '-c', 'write -P 0x42 0 1M'])
  const io = await run('qemu-io', [...pskObject(psk), '--image-opts', imageOpts(port), '-c', 'read -P 0x42 0 1M'])
  t.notRegex(io, /Pattern verification failed|error/i)
  await t.throwsAsync(run('qemu-img', ['info', ...x509Object(pki.anonymous), '--image-opts', imageOpts(port)]))
  await t.throwsAsync(run('qemu-img', ['info', '-f', 'raw', url!.replace(/^nbds/, 'nbd')]))
  child.kill('SIGTERM')
  t.is(await exited, 0, `stderr: ${printed.err}`)
  t.true(readFileSync(join(d, 'a.img')).subarray(0, MiB).every((b) => b === 0x42))
})

test('TLS URLs and key files: nbds:// and nbds+unix:// parse (a PSK user name is no part of the address); psktool lines', (t) => {
  t.deepEqual(parseNbdUrlTls('nbds://alice@127.0.0.1:10811/disk?tls-psk-file=/k'), { address: { kind: 'tcp', host: '127.0.0.1', port: 10811, exportName: 'disk' }, tls: true })
  t.deepEqual(parseNbdUrlTls('nbds+unix:///disk?socket=/run/x.sock'), { address: { kind: 'unix', socket: '/run/x.sock', exportName: 'disk' }, tls: true })
  t.deepEqual(parseNbdUrlTls('nbd://h/x'), { address: { kind: 'tcp', host: 'h', port: 10809, exportName: 'x' }, tls: false })
  t.is(formatNbdUrlTls({ kind: 'tcp', host: 'h', port: 1, exportName: 'x' }, true), 'nbds://h:1/x')
  for (const bad of ['nbds+unix:///x', 'nbds://h:0/x', 'nbds://']) t.is((t.throws(() => parseNbdUrlTls(bad)) as { code?: string } | undefined)?.code, 'ENBD_URL', bad)
  const keys = parsePskFile('alice:00ff10\n\nbob:abcd\n')
  t.deepEqual([...keys.keys()], ['alice', 'bob'])
  t.true(keys.get('alice')!.equals(Buffer.from([0, 0xff, 0x10])))
  for (const bad of ['alice', 'alice:xyz', 'alice:abc', '']) t.is((t.throws(() => parsePskFile(bad)) as { code?: string } | undefined)?.code, 'EINVAL', JSON.stringify(bad))
})

withTls('before STARTTLS nothing is listed or served: every option but STARTTLS and ABORT is ERR_TLS_REQD, EXPORT_NAME hangs up; garbage after STARTTLS ends that client only', async (t) => {
  const { pki } = await credentials()
  const { server } = await servedMirror(t, 'raw', await readServerTlsCredentials({ dir: pki.server }))
  const port = (server.address as { port: number }).port
  const c = await RawNbdClient.open({ port })
  t.teardown(() => void c.s.destroy())
  const none = new Uint8Array(0)
  const asks: [number, Uint8Array][] = [
    [Opt.LIST, none],
    [Opt.INFO, encodeInfoRequest('md', [])],
    [Opt.GO, encodeInfoRequest('md', [])],
    [Opt.STRUCTURED_REPLY, none],
    [Opt.LIST_META_CONTEXT, encodeMetaContextRequest('md', [])],
    [Opt.SET_META_CONTEXT, encodeMetaContextRequest('md', ['base:allocation'])],
    [999, none],
  ]
  for (const [opt, data] of asks) {
    c.s.write(encodeOption(opt, data))
    const r = await c.optionReply()
    t.is(r.type, Rep.ERR_TLS_REQD, `option ${opt}`)
  }
  c.s.write(encodeOption(Opt.STARTTLS, new Uint8Array(1)))
  t.is((await c.optionReply()).type, Rep.ERR_INVALID, 'STARTTLS with data')
  c.s.write(encodeOption(Opt.EXPORT_NAME, new TextEncoder().encode('md')))
  await c.closed
  t.is(await c.read(1).then(() => 'bytes', () => 'closed'), 'closed', 'no export in the clear: the server hung up')

  const g = await RawNbdClient.open({ port })
  t.teardown(() => void g.s.destroy())
  g.s.write(encodeOption(Opt.STARTTLS))
  t.is((await g.optionReply()).type, Rep.ACK)
  g.s.write(Buffer.alloc(300, 0x41))
  await g.closed
  const m = await NbdMember.open(`${server.url}?tls-certificates=${pki.anonymous}`)
  t.is(m.size, SIZE, 'the server goes on serving')
  await m.close()
})
