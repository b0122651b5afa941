/**
 * The NBD member's write-zeroes fallback, against a real server that lacks
 * `NBD_CMD_WRITE_ZEROES`: nbdkit's file plugin under its `nozero` filter (which takes
 * the flag away), with its `log` filter in front of it recording every request the
 * client sent. Neither nbd-server (3.24) nor qemu-nbd can be told to leave the flag
 * out of a writable export.
 *
 * The mirror's discard and writeZeroes must then reach the remote member as
 * `NBD_CMD_WRITE`s of zeroes (never as a WRITE_ZEROES the server did not offer, nor as
 * a TRIM, after which NBD promises nothing about the contents), and both members must
 * read zeroes there.
 */
import test from 'ava'
import { readFileSync, truncateSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { Mirror, NbdMember, openNbdOrFileMember } from '../src'
import { TxFlag } from '../src/nbd/protocol'
import { requires } from './helpers/env'
import { IDLE, KiB, MiB, pattern } from './helpers/mirror'
import { startNbdkit } from './helpers/nbd'
import { diskTempDir, removeDir } from './helpers/tmp'

const dir = diskTempDir('md-bitmap-nbd-zeroes-')
test.after.always(() => removeDir(dir))

const SIZE = 4 * MiB
const CHUNK = 64 * KiB

/** The requests nbdkit's log filter recorded: command, offset and length. */
function loggedRequests(log: string): { cmd: string; offset: number; count: number }[] {
  const out: { cmd: string; offset: number; count: number }[] = []
  for (const m of readFileSync(log, 'utf8').matchAll(/connection=\d+ (\w+) id=\d+ offset=(0x[0-9a-f]+) count=(0x[0-9a-f]+)/g)) {
    out.push({ cmd: m[1], offset: Number(m[2]), count: Number(m[3]) })
  }
  return out
}

/** Whether the requests of kind `cmd` cover [offset, offset + length) whole. */
function covered(reqs: { cmd: string; offset: number; count: number }[], cmd: string, offset: number, length: number): boolean {
  const ranges = reqs.filter((r) => r.cmd === cmd).sort((a, b) => a.offset - b.offset)
  let at = offset
  for (const r of ranges) if (r.offset <= at && r.offset + r.count > at) at = r.offset + r.count
  return at >= offset + length
}

const withNbdkit = requires(['nbdkit'])
withNbdkit('an NBD member on a server without WRITE_ZEROES (nbdkit nozero): discard and writeZeroes go out as writes of zeroes; both members read zeroes', async (t) => {
  const remote = join(dir, 'remote.img')
  const local = join(dir, 'local.img')
  const log = join(dir, 'requests.log')
  writeFileSync(remote, '')
  truncateSync(remote, SIZE)
  const k = await startNbdkit(t, 'file', [`file=${remote}`, `logfile=${log}`], ['log', 'nozero'])

  const probe = await NbdMember.open(k.url)
  t.is(probe.info.flags & TxFlag.SEND_WRITE_ZEROES, 0, 'the server does not offer WRITE_ZEROES')
  t.not(probe.info.flags & TxFlag.SEND_TRIM, 0, 'it offers TRIM, which must not be used for zeroes')
  await probe.close()

  const mirror = await Mirror.create({
    bitmap: join(dir, 'bitmap'),
    members: [{ path: local }, { path: k.url }],
    size: SIZE,
    chunkSize: CHUNK,
    daemonSleep: IDLE,
    assumeClean: true,
    openMember: openNbdOrFileMember,
  })
  t.teardown(() => mirror.close().catch(() => {}))
  const data = pattern(MiB, 7)
  await mirror.write(data, 0)
  await mirror.writeZeroes(256 * KiB, 256 * KiB)
  await mirror.discard(640 * KiB, 128 * KiB)
  await mirror.flush()
  t.deepEqual(mirror.members.map((m) => m.state), ['in-sync', 'in-sync'])
  await mirror.close()

  const expected = Buffer.from(data.buffer, data.byteOffset, data.length)
  expected.fill(0, 256 * KiB, 512 * KiB)
  expected.fill(0, 640 * KiB, 768 * KiB)
  for (const [name, path] of [['local', local], ['remote', remote]]) {
    const bytes = readFileSync(path)
    t.true(bytes.subarray(0, MiB).equals(expected), `the ${name} member reads zeroes where zeroed and the data elsewhere`)
  }

  const reqs = loggedRequests(log)
  t.deepEqual(reqs.filter((r) => r.cmd !== 'Write' && r.cmd !== 'Read'), [], 'the client sent no Zero or Trim request, only reads and writes')
  t.true(covered(reqs, 'Write', 256 * KiB, 256 * KiB), 'writeZeroes went out as writes over its range')
  t.true(covered(reqs, 'Write', 640 * KiB, 128 * KiB), 'discard went out as writes over its range')
})
