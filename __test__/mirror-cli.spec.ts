/**
 * `md-bitmap mirror …` from the shell, run as child processes from the bin entry (the
 * built CLI in dist/), with `md-bitmap serve` holding the mirror and qemu-io writing
 * through it: the life cycle end to end through the CLI alone (create, write, fail,
 * write more, detail shows degraded and the dirty count, re-add copies only the dirty
 * chunks, the members compare equal with cmp); the commands acting live through the
 * control socket; a second serve failing ELOCKED; after kill -9 of the holder, the
 * commands open the mirror at once. Every server is killed in teardown. It runs the
 * built CLI (`npm run build:ts` first, as `npm install` does).
 */
import test, { type ExecutionContext } from 'ava'
import { execFileSync, spawn } from 'node:child_process'
import { connect } from 'node:net'
import { existsSync, mkdirSync, statSync } from 'node:fs'
import { join, resolve } from 'node:path'

import { Mirror, SlowMember, openFileMember } from '../src'
import { requires } from './helpers/env'
import { diskTempDir, removeDir } from './helpers/tmp'
import { QEMU_TOOLS, qemuIo } from './helpers/nbd'
import { serveCli } from './helpers/served-mirror'

const ROOT = resolve(__dirname, '..')
const BIN = join(ROOT, 'bin', 'md-bitmap.js')
const withQemu = requires([...QEMU_TOOLS, 'cmp'])

const dir = diskTempDir('md-bitmap-mirror-cli-')
test.after.always(() => removeDir(dir))

interface Run {
  status: number | null
  stdout: string
  stderr: string
}

function cli(cwd: string, args: string[], timeoutMs = 60_000): Promise<Run> {
  return new Promise((res, rej) => {
    const child = spawn(process.execPath, [BIN, ...args], { cwd, stdio: ['ignore', 'pipe', 'pipe'] })
    let stdout = ''
    let stderr = ''
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d))
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d))
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs)
    child.on('error', rej)
    child.on('close', (status) => {
      clearTimeout(timer)
      res({ status, stdout, stderr })
    })
  })
}

/** Runs a command that must succeed; returns its parsed --json output. */
async function json(t: ExecutionContext, cwd: string, args: string[]): Promise<any> {
  const r = await cli(cwd, [...args, '--json'])
  t.is(r.status, 0, `md-bitmap ${args.join(' ')}: ${r.stderr}`)
  return JSON.parse(r.stdout)
}

/** A failure: one line on stderr naming the code, and the status. */
function failsWith(t: ExecutionContext, r: Run, code: string, status: number): void {
  t.is(r.status, status, r.stderr)
  t.regex(r.stderr, new RegExp(`^md-bitmap: ${code}: \\S[^\\n]{10,}\\n$`))
}

/** `md-bitmap serve` of the mirror in `cwd`, on a Unix socket named after `name` (killed at teardown). */
async function serve(t: ExecutionContext, cwd: string, name: string) {
  const s = await serveCli(t, ['--bitmap', join(cwd, 'disk.bitmap'), '--socket', join(cwd, `${name}.nbd`)])
  t.truthy(s.url, s.printed.err)
  return { ...s, url: s.url!, err: () => s.printed.err }
}

function cmp(a: string, b: string): boolean {
  try {
    execFileSync('cmp', [a, b], { stdio: 'pipe' })
    return true
  } catch {
    return false
  }
}

const KiB = 1024

withQemu('the life cycle through the CLI alone: create, serve + qemu-io, fail 1, more writes, detail degraded, re-add copies only the dirty chunks, cmp equal', async (t) => {
  const d = join(dir, 'lifecycle')
  mkdirSync(d)
  const created = await json(t, d, ['mirror', 'create', '--bitmap', 'disk.bitmap', '--size', '16M', '--chunk', '64K', '--member', 'a.img', '--member', 'b.img', '--delay', '1'])
  t.is(created.state, 'clean')
  t.deepEqual(created.members.map((m: { path: string; state: string }) => [m.path, m.state]), [[join(d, 'a.img'), 'in-sync'], [join(d, 'b.img'), 'in-sync']])

  const s = await serve(t, d, 'lifecycle')
  t.regex(s.err(), new RegExp(`control socket ${join(d, 'disk.bitmap.mirror.sock')}`))
  await qemuIo(s.url, ['write -P 0x11 0 1M', 'flush'])
  // The daemon (every second) clears the bits of the first write once it is idle.
  let first = await json(t, d, ['mirror', 'detail', '--bitmap', 'disk.bitmap'])
  t.is(first.state === 'active' || first.state === 'clean', true, first.state)
  for (const deadline = Date.now() + 20_000; first.dirtyChunks > 0 && Date.now() < deadline; ) {
    await new Promise((r) => setTimeout(r, 300))
    first = await json(t, d, ['mirror', 'detail', '--bitmap', 'disk.bitmap'])
  }
  t.is(first.dirtyChunks, 0, 'the first write’s bits were cleared')
  t.is(first.state, 'clean')
  const fail = await json(t, d, ['mirror', 'fail', '--bitmap', 'disk.bitmap', '--member', '1'])
  t.deepEqual(fail, { index: 1, path: join(d, 'b.img'), state: 'faulty' })
  await qemuIo(s.url, ['write -P 0x22 4M 128k', 'write -P 0x33 10M 64k', 'write -P 0x44 15M 4k'])
  const degraded = await json(t, d, ['mirror', 'detail', '--bitmap', 'disk.bitmap'])
  t.is(degraded.state, 'degraded')
  t.deepEqual(degraded.members.map((m: { state: string }) => m.state), ['in-sync', 'faulty'])
  t.true(degraded.members[1].events < degraded.members[0].events, 'the faulty member’s events stopped')
  // The chunks written while degraded (2 + 1 + 1) stay dirty: no bit is cleared while degraded.
  t.is(degraded.dirtyChunks, 4)
  t.false(cmp(join(d, 'a.img'), join(d, 'b.img')), 'member 1 missed the writes')

  const readd = await json(t, d, ['mirror', 're-add', '--bitmap', 'disk.bitmap', '--member', '1'])
  t.is(readd.recovery, 'bitmap')
  t.is(readd.chunksCopied, degraded.dirtyChunks, 'exactly the dirty chunks were copied')
  t.true(readd.chunksCopied < 256)
  t.is(readd.bytesCopied, readd.chunksCopied * 64 * KiB)
  const after = await json(t, d, ['mirror', 'detail', '--bitmap', 'disk.bitmap'])
  t.not(after.state, 'degraded')
  t.deepEqual(after.members.map((m: { state: string }) => m.state), ['in-sync', 'in-sync'])

  s.child.kill('SIGTERM')
  t.is(await s.exited, 0, s.err())
  t.false(existsSync(join(d, 'disk.bitmap.mirror.sock')), 'the control socket is removed at close')
  t.true(cmp(join(d, 'a.img'), join(d, 'b.img')), 'cmp: the members are byte-identical')
  const closed = await json(t, d, ['mirror', 'detail', '--bitmap', 'disk.bitmap'])
  t.is(closed.state, 'clean')
  t.is(closed.dirtyChunks, 0, 'a clean close cleared every bit')
  t.deepEqual(await json(t, d, ['mirror', 'detail', '--bitmap', 'disk.bitmap']), closed, 'detail of a mirror nobody holds changes nothing (events included)')
})

withQemu('live control: detail, fail, remove, re-add, add act on the served mirror; a second serve fails ELOCKED; after kill -9 the commands open it at once', async (t) => {
  const d = join(dir, 'live')
  mkdirSync(d)
  await json(t, d, ['mirror', 'create', '--bitmap', 'disk.bitmap', '--size', '8M', '--chunk', '64K', '--member', 'a.img', '--write-mostly', 'b.img', '--write-behind', '16'])
  const s = await serve(t, d, 'live')
  const sockStat = statSync(join(d, 'disk.bitmap.mirror.sock'))
  t.true(sockStat.isSocket())
  t.is(sockStat.mode & 0o777, 0o600, 'owner-only')

  const second = await cli(d, ['serve', '--bitmap', 'disk.bitmap', '--socket', join(d, 'second.nbd')])
  failsWith(t, second, 'ELOCKED', 1)
  t.true(second.stderr.includes(`locked by process ${s.child.pid}`), second.stderr)
  t.true(second.stderr.includes(join(d, 'disk.bitmap.mirror.sock')), 'names the control socket')

  await qemuIo(s.url, ['write -P 0x5a 0 256k'])
  const live = await json(t, d, ['mirror', 'detail', '--bitmap', 'disk.bitmap'])
  t.deepEqual(Object.keys(live).sort(), ['chunkSize', 'dirtyChunks', 'engine', 'events', 'members', 'size', 'state', 'uuid'])
  t.true(['uring', 'aio', 'threads'].includes(live.engine.name), 'a served mirror shows its I/O engine')
  t.deepEqual(live.members[1], { index: 1, path: join(d, 'b.img'), state: 'in-sync', writeMostly: true, events: live.events })
  t.is(live.size, 8 * 1024 * KiB)
  t.is(live.chunkSize, 64 * KiB)
  t.true(live.dirtyChunks >= 4, 'the write is live in the served mirror’s bitmap')
  // The text form says the same.
  const text = await cli(d, ['mirror', 'detail', '--bitmap', 'disk.bitmap'])
  t.is(text.status, 0)
  t.regex(text.stdout, new RegExp(`UUID : ${live.uuid}`))
  t.regex(text.stdout, /State : (active|clean)/)

  t.deepEqual(await json(t, d, ['mirror', 'remove', '--bitmap', 'disk.bitmap', '--member', '1']), { index: 1, path: join(d, 'b.img'), state: 'removed' })
  failsWith(t, await cli(d, ['mirror', 'remove', '--bitmap', 'disk.bitmap', '--member', '0']), 'EMIRROR_LAST_MEMBER', 1)
  failsWith(t, await cli(d, ['mirror', 'fail', '--bitmap', 'disk.bitmap', '--member', '0']), 'EMIRROR_LAST_MEMBER', 1)
  await qemuIo(s.url, ['write -P 0x6b 2M 64k'])
  const readd = await json(t, d, ['mirror', 're-add', '--bitmap', 'disk.bitmap', '--member', '1'])
  t.is(readd.recovery, 'bitmap')
  const added = await json(t, d, ['mirror', 'add', '--bitmap', 'disk.bitmap', '--path', 'c.img'])
  t.deepEqual(added, { index: 2, recovery: 'full', chunksCopied: 128, bytesCopied: 8 * 1024 * KiB })
  const three = await json(t, d, ['mirror', 'detail', '--bitmap', 'disk.bitmap'])
  t.deepEqual(three.members.map((m: { state: string }) => m.state), ['in-sync', 'in-sync', 'in-sync'])

  // kill -9: the lock dies with the holder; the stale socket is refused, and the command opens the mirror itself.
  s.child.kill('SIGKILL')
  await s.exited
  t.true(existsSync(join(d, 'disk.bitmap.mirror.sock')), 'SIGKILL left the socket file behind')
  const started = Date.now()
  const reopened = await json(t, d, ['mirror', 'detail', '--bitmap', 'disk.bitmap'])
  t.true(Date.now() - started < 15_000)
  t.is(reopened.uuid, live.uuid)
  t.deepEqual(reopened.members.map((m: { state: string }) => m.state), ['in-sync', 'in-sync', 'in-sync'])
  t.false(existsSync(join(d, 'disk.bitmap.mirror.sock')), 'the stale socket was removed by the new owner')
  t.deepEqual(await json(t, d, ['mirror', 'detail', '--bitmap', 'disk.bitmap']), reopened, 'nothing changed by reading it')
  const resynced = await cli(d, ['resync', '--bitmap', 'disk.bitmap', '--json'])
  t.is(resynced.status, 0, resynced.stderr)
  t.is((await json(t, d, ['mirror', 'detail', '--bitmap', 'disk.bitmap'])).state, 'clean', 'after the resync the killed mirror is clean')
  t.true(cmp(join(d, 'a.img'), join(d, 'c.img')), 'the added member holds the data')
})

withQemu('mirror check live through serve: 3 sectors corrupted in two chunks of member 1 behind the mirror’s back: exit 3 with mismatchSectors 3 and those chunks; --repair fixes them; a second check finds 0', async (t) => {
  const d = join(dir, 'check')
  mkdirSync(d)
  await json(t, d, ['mirror', 'create', '--bitmap', 'disk.bitmap', '--size', '4M', '--chunk', '64K', '--member', 'a.img', '--member', 'b.img'])
  const s = await serve(t, d, 'check')
  await qemuIo(s.url, ['write -P 0x5a 0 4M', 'flush'])
  // Behind the mirror's back: sectors 130 and 131 (chunk 1) and 1100 (chunk 8) of member 1.
  for (const sector of [130, 131, 1100]) {
    execFileSync('dd', ['if=/dev/urandom', `of=${join(d, 'b.img')}`, 'bs=512', 'count=1', `seek=${sector}`, 'conv=notrunc', 'oflag=direct', 'status=none'])
  }
  const found = await cli(d, ['mirror', 'check', '--bitmap', 'disk.bitmap', '--json'])
  t.is(found.status, 3, found.stderr)
  t.regex(found.stderr, /^md-bitmap: EVERIFY: the members differ in 3 sectors; [^\n]+\n$/)
  const report = JSON.parse(found.stdout)
  t.is(report.mismatchSectors, 3)
  t.deepEqual(report.mismatchedChunks, [1, 8])
  t.is(report.chunksChecked, 64)
  t.falsy(report.repaired)
  const repaired = await json(t, d, ['mirror', 'check', '--bitmap', 'disk.bitmap', '--repair'])
  t.is(repaired.mismatchSectors, 3)
  t.truthy(repaired.repaired)
  const clean = await json(t, d, ['mirror', 'check', '--bitmap', 'disk.bitmap'])
  t.is(clean.mismatchSectors, 0)
  t.deepEqual(clean.mismatchedChunks, [])
  s.child.kill('SIGTERM')
  t.is(await s.exited, 0, s.err())
  t.true(cmp(join(d, 'a.img'), join(d, 'b.img')), 'cmp: identical after the repair')
})

test('an application holding a mirror with control: true: `mirror add` runs live, and `mirror detail` meanwhile shows recovering with progress, rate and ETA', async (t) => {
  const d = join(dir, 'app')
  mkdirSync(d)
  // The new member's writes are slowed so the recovery lasts a few seconds.
  const mirror = await Mirror.create({
    bitmap: join(d, 'disk.bitmap'),
    members: [{ path: join(d, 'a.img') }],
    size: 8 * 1024 * KiB,
    chunkSize: 64 * KiB,
    control: true,
    openMember: async (spec) => {
      const m = await openFileMember(spec)
      return spec.path.endsWith('slow.img') ? new SlowMember(m, 40) : m
    },
  })
  t.teardown(() => mirror.close().catch(() => {}))
  // A relative path is the command's (its working folder), not the holder's.
  const adding = cli(d, ['mirror', 'add', '--bitmap', 'disk.bitmap', '--path', 'slow.img'])
  let seen: any
  for (const deadline = Date.now() + 30_000; !seen && Date.now() < deadline; ) {
    const detail = await json(t, d, ['mirror', 'detail', '--bitmap', 'disk.bitmap'])
    if (detail.progress && detail.progress.chunksDone > 0) seen = detail
  }
  t.truthy(seen, 'detail showed the recovery in progress')
  t.is(seen.state, 'recovering')
  t.is(seen.members[1].state, 'recovering')
  t.is(seen.progress.action, 'recovery')
  t.is(seen.progress.chunksTotal, 128)
  t.true(seen.progress.rate > 0)
  t.true(Number.isInteger(seen.progress.etaSeconds) && seen.progress.etaSeconds >= 0)
  const added = await adding
  t.is(added.status, 0, added.stderr)
  t.is(added.stdout, 'member 1 is in sync: full recovery copied 128 chunks (8 MiB)\n')
  t.regex(added.stderr, /add: +100\.0%/, 'progress lines on stderr')
  t.deepEqual(mirror.members.map((m) => m.state), ['in-sync', 'in-sync'])
  const text = await cli(d, ['mirror', 'detail', '--bitmap', 'disk.bitmap'])
  t.notRegex(text.stdout, /Status :/, 'no progress once it is done')
  await mirror.close()
  t.true(cmp(join(d, 'a.img'), join(d, 'slow.img')))
})

/** Sends raw bytes to a control socket; resolves with every line it answered before closing. */
function raw(path: string, bytes: string): Promise<any[]> {
  return new Promise((res, rej) => {
    const s = connect(path, () => s.end(bytes))
    let text = ''
    s.setEncoding('utf8').on('data', (d: string) => (text += d))
    s.on('error', rej)
    s.on('close', () => res(text.split('\n').filter(Boolean).map((l) => JSON.parse(l))))
  })
}

test('the control protocol to a raw client: one JSON line per request, malformed ones answered with EINVAL, the mirror unharmed', async (t) => {
  const d = join(dir, 'protocol')
  mkdirSync(d)
  const mirror = await Mirror.create({ bitmap: join(d, 'disk.bitmap'), members: [{ path: join(d, 'a.img') }, { path: join(d, 'b.img') }], size: 4 * 1024 * KiB, chunkSize: 64 * KiB, control: true })
  t.teardown(() => mirror.close().catch(() => {}))
  const sock = mirror.controlSocket!
  const detail = await raw(sock, JSON.stringify({ op: 'detail' }) + '\n')
  t.is(detail.length, 1)
  t.is(detail[0].type, 'result')
  t.is(detail[0].result.uuid, mirror.uuid)
  t.deepEqual(detail[0].result.members.map((m: { state: string }) => m.state), ['in-sync', 'in-sync'])
  t.deepEqual(detail[0].result.engine, { name: mirror.stats().engine, reason: mirror.stats().engineReason }, 'a live mirror\'s detail shows its I/O engine')
  for (const [bytes, why] of [
    ['not json\n', /a line of JSON/],
    [JSON.stringify({ op: 'format-disk' }) + '\n', /op must be one of detail, fail, remove, re-add, add, check/],
    [JSON.stringify({ op: 'fail' }) + '\n', /fail needs a member/],
    [JSON.stringify({ op: 'fail', member: -1 }) + '\n', /member must be a slot number/],
    ['x'.repeat(70 * 1024), /at most 65536 bytes/],
  ] as const) {
    const lines = await raw(sock, bytes)
    t.is(lines.length, 1)
    t.is(lines[0].type, 'error')
    t.is(lines[0].error.code, 'EINVAL')
    t.regex(lines[0].error.message, why)
  }
  // Half-closed right after the request, without a line end, as `printf … | nc -U` does: still answered.
  t.is((await raw(sock, JSON.stringify({ op: 'detail' })))[0].result.uuid, mirror.uuid)
  t.deepEqual(await raw(sock, ''), [], 'nothing asked, nothing answered, connection ended')
  const fail = await raw(sock, JSON.stringify({ op: 'fail', member: 1 }) + '\n')
  t.deepEqual(fail, [{ type: 'result', result: { index: 1, path: join(d, 'b.img'), state: 'faulty' } }])
  t.true(mirror.degraded)
  const last = await raw(sock, JSON.stringify({ op: 'fail', member: 0 }) + '\n')
  t.is(last[0].error.code, 'EMIRROR_LAST_MEMBER')
  await mirror.close()
  t.false(existsSync(sock))
})

test('usage: --help for every subcommand, one-line errors with exit status 2 for bad arguments, ENOENT-style failures with 1', async (t) => {
  const d = join(dir, 'usage')
  mkdirSync(d)
  for (const sub of ['create', 'detail', 'fail', 'remove', 're-add', 'add', 'check']) {
    const r = await cli(d, ['mirror', sub, '--help'])
    t.is(r.status, 0, sub)
    t.regex(r.stdout, new RegExp(`^Usage: md-bitmap mirror ${sub} `), sub)
  }
  const top = await cli(d, ['mirror', '--help'])
  t.regex(top.stdout, /control socket/)
  failsWith(t, await cli(d, ['mirror', 'frobnicate']), 'EUSAGE', 2)
  failsWith(t, await cli(d, ['mirror', 'detail']), 'EUSAGE', 2)
  failsWith(t, await cli(d, ['mirror', 'fail', '--bitmap', 'x.bitmap']), 'EUSAGE', 2)
  failsWith(t, await cli(d, ['mirror', 'fail', '--bitmap', 'x.bitmap', '--member', 'one']), 'EUSAGE', 2)
  failsWith(t, await cli(d, ['mirror', 'create', '--bitmap', 'x.bitmap', '--size', '1M', '--chunk', '64K']), 'EUSAGE', 2)
  failsWith(t, await cli(d, ['mirror', 'detail', '--bitmap', 'missing.bitmap']), 'EMIRROR_METADATA', 1)
})
