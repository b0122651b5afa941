/**
 * Structured replies and block status of the served mirror, against libnbd's nbdinfo
 * and nbdcopy and qemu-img from Debian, and a few raw exchanges for what no tool
 * shows:
 *
 * - `nbdinfo --map` (base:allocation) of a sparse mirror equals the data ranges of the
 *   source member as SEEK_DATA/SEEK_HOLE see them (`qemu-img map` of the raw file, which
 *   asks lseek), a preallocated (unwritten) range included, which FIEMAP would call an
 *   extent; and `qemu-img map` through NBD agrees;
 * - `nbdinfo --map=md-bitmap:write-intent` lists exactly the ranges `md-bitmap dirty`
 *   reads from the bitmap file;
 * - `nbdcopy --connections=4` into and out of the export with NBD_FLAG_CAN_MULTI_CONN,
 *   contents verified, four connections open at once;
 * - on the wire: a read of zeroes comes back as OFFSET_HOLE, with DF as one
 *   OFFSET_DATA; SET_META_CONTEXT before STRUCTURED_REPLY is refused; block status
 *   without a context is a structured EINVAL error.
 *
 * The dirty test runs the built CLI (`npm run build:ts` first).
 */
import test from 'ava'
import { execFile } from 'node:child_process'
import { randomFillSync } from 'node:crypto'
import { readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'

import { Cmd, CmdFlag, Opt, Rep, encodeInfoRequest, encodeOption, encodeRequest } from '../src/nbd/protocol'
import { encodeMetaContextRequest } from '../src/nbd/meta-context'
import { ReplyType } from '../src/nbd/protocol/structured-reply'
import { extents } from '../src/io/file-check'
import { requires } from './helpers/env'
import { diskTempDir, removeDir } from './helpers/tmp'
import { KiB, MiB } from './helpers/mirror'
import { qemuIo, run } from './helpers/nbd'
import { RawNbdClient } from './helpers/nbd-raw'
import { servedMirror as served } from './helpers/served-mirror'

const withLibnbd = requires(['nbdinfo', 'nbdcopy', 'qemu-io', 'qemu-img'])

const dir = diskTempDir('md-bitmap-nbd-block-status-')
test.after.always(() => removeDir(dir))

const SIZE = 32 * MiB
const CHUNK = 256 * KiB

const servedMirror = (t: { teardown(fn: () => unknown): void }, name: string) => served(t, join(dir, name), { size: SIZE, chunkSize: CHUNK })

type Range = { offset: number; length: number }

/** Merges adjacent ranges. */
function merged(ranges: Range[]): Range[] {
  const out: Range[] = []
  for (const r of [...ranges].sort((a, b) => a.offset - b.offset)) {
    const last = out[out.length - 1]
    if (last && last.offset + last.length === r.offset) last.length += r.length
    else out.push({ ...r })
  }
  return out
}

/** `nbdinfo --map[=CONTEXT] --json`: the ranges whose type is `pick`ed. */
async function nbdinfoMap(url: string, context: string | undefined, pick: (type: number) => boolean): Promise<Range[]> {
  const out = JSON.parse(await run('nbdinfo', [context ? `--map=${context}` : '--map', '--json', url])) as { offset: number; length: number; type: number }[]
  t0Total(out)
  return merged(out.filter((e) => pick(e.type)).map((e) => ({ offset: e.offset, length: e.length })))
}
/** The map covers the export. */
function t0Total(entries: { length: number }[]): void {
  const total = entries.reduce((n, e) => n + e.length, 0)
  if (total !== SIZE) throw new Error(`the map covers ${total} bytes, not ${SIZE}`)
}

/** `qemu-img map --output=json` of `image` (a raw file: SEEK_DATA/SEEK_HOLE; or an NBD URL): the data ranges. */
async function qemuImgData(image: string): Promise<Range[]> {
  const out = JSON.parse(await run('qemu-img', ['map', '--output=json', '-f', 'raw', image])) as { start: number; length: number; data: boolean }[]
  return merged(out.filter((e) => e.data).map((e) => ({ offset: e.start, length: e.length })))
}

withLibnbd('nbdinfo --map (base:allocation) of a sparse mirror equals SEEK_DATA of the source member; qemu-img map through NBD agrees', async (t) => {
  const { server, members, settled } = await servedMirror(t, 'allocation')
  await qemuIo(server.url, ['write -P 0x11 0 64k', 'write -P 0x22 3M 1M', 'write -P 0x33 17M 256k', 'write -P 0x44 31M 1M', 'flush'])
  await settled()
  // Preallocated, never written: an extent to FIEMAP, a hole to SEEK_DATA (and it reads as zeroes).
  await run('fallocate', ['-o', String(8 * MiB), '-l', String(2 * MiB), members[0]])
  t.true((await extents(members[0])).extents.some((e) => e.flags.includes('unwritten') && e.logical <= 8 * MiB && e.logical + e.length >= 10 * MiB), 'FIEMAP lists the preallocated range')
  const seek = await qemuImgData(members[0])
  t.true(seek.length >= 3, `the source member is sparse: ${JSON.stringify(seek)}`)
  t.false(seek.some((r) => r.offset < 10 * MiB && r.offset + r.length > 8 * MiB), `SEEK_DATA calls the preallocated range a hole: ${JSON.stringify(seek)}`)
  const viaNbd = await nbdinfoMap(server.url, undefined, (type) => (type & 1) === 0)
  t.deepEqual(viaNbd, seek)
  // The written ranges are inside the data, the rest of the data is filesystem rounding at most.
  for (const [o, l] of [[0, 64 * KiB], [3 * MiB, MiB], [17 * MiB, 256 * KiB], [31 * MiB, MiB]]) {
    t.true(viaNbd.some((r) => r.offset <= o && o + l <= r.offset + r.length), `${o}+${l} is data`)
  }
  t.true(viaNbd.reduce((n, r) => n + r.length, 0) < 4 * MiB, 'the holes are reported as holes')
  t.deepEqual(await qemuImgData(server.url), seek, 'qemu reads the same map through NBD')
  // And the data reads back (the holes did not hide any of it).
  await qemuIo(server.url, ['read -P 0x22 3M 1M', 'read -P 0 4M 13M', 'read -P 0x44 31M 1M'])
})

withLibnbd('nbdinfo --map=md-bitmap:write-intent lists the ranges md-bitmap dirty reads from the bitmap file', async (t) => {
  const { server, bitmap, mirror } = await servedMirror(t, 'write-intent')
  await qemuIo(server.url, ['write -P 0x55 0 4k', 'write -P 0x66 5M 1M', 'write -P 0x77 20M 300k', 'flush'])
  await mirror.flush()
  const list = await run('nbdinfo', ['--list', '--json', server.url])
  t.deepEqual(JSON.parse(list).exports[0].contexts.sort(), ['base:allocation', 'md-bitmap:write-intent'])
  const dirty = await nbdinfoMap(server.url, 'md-bitmap:write-intent', (type) => type === 1)
  const cli = await new Promise<string>((resolve, reject) =>
    execFile(process.execPath, [join(__dirname, '..', 'bin', 'md-bitmap.js'), 'dirty', bitmap, '--json'], (e, out, err) => (e ? reject(new Error(err)) : resolve(out))),
  )
  const fromFile = (JSON.parse(cli) as { ranges: Range[] }).ranges
  t.deepEqual(dirty, merged(fromFile))
  t.deepEqual(fromFile, [
    { offset: 0, length: CHUNK },
    { offset: 5 * MiB, length: MiB },
    { offset: 20 * MiB, length: 2 * CHUNK },
  ])
  const clean = await nbdinfoMap(server.url, 'md-bitmap:write-intent', (type) => type === 0)
  t.is(clean.reduce((n, r) => n + r.length, 0), SIZE - 3 * CHUNK - MiB)
})

withLibnbd('nbdcopy --connections=4 into and out of the export (multi-conn), contents verified', async (t) => {
  const { d, server, members, settled } = await servedMirror(t, 'nbdcopy')
  const info = JSON.parse(await run('nbdinfo', ['--json', server.url]))
  t.true(info.exports[0].can_multi_conn, 'NBD_FLAG_CAN_MULTI_CONN advertised')
  const src = join(d, 'src.raw')
  const data = Buffer.alloc(SIZE)
  randomFillSync(data, 0, 20 * MiB)
  writeFileSync(src, data)
  let most = 0
  const poll = setInterval(() => (most = Math.max(most, server.connections)), 2)
  try {
    await run('nbdcopy', ['--connections=4', '--threads=4', '--requests=16', src, server.url])
  } finally {
    clearInterval(poll)
  }
  t.is(most, 4, 'nbdcopy opened four connections')
  const out = join(d, 'out.raw')
  await run('nbdcopy', ['--connections=4', '--threads=4', server.url, out])
  t.true(readFileSync(out).equals(data), 'copied out as copied in')
  await settled()
  for (const m of members) t.true(readFileSync(m).equals(data), m)
})

// ---------------------------------------------------------------------------------
// On the wire

test('on the wire: OFFSET_HOLE for zeroes, one OFFSET_DATA with DF, meta contexts only after STRUCTURED_REPLY, block status without context is EINVAL', async (t) => {
  const { server, mirror } = await servedMirror(t, 'wire')
  const port = (server.address as { port: number }).port
  const data = Buffer.alloc(64 * KiB, 0x5a)
  await mirror.write(data, 128 * KiB)
  const c = await RawNbdClient.open({ port })
  t.teardown(() => void c.s.destroy())
  c.s.write(encodeOption(Opt.SET_META_CONTEXT, encodeMetaContextRequest('md', ['base:allocation'])))
  t.is((await c.optionReply()).type, Rep.ERR_INVALID, 'SET_META_CONTEXT before STRUCTURED_REPLY')
  c.s.write(encodeOption(Opt.STRUCTURED_REPLY))
  t.is((await c.optionReply()).type, Rep.ACK)
  c.s.write(encodeOption(Opt.LIST_META_CONTEXT, encodeMetaContextRequest('md', ['base:'])))
  const listed = await c.optionReply()
  t.is(listed.type, Rep.META_CONTEXT)
  t.is(listed.data.subarray(4).toString(), 'base:allocation')
  t.is((await c.optionReply()).type, Rep.ACK)
  c.s.write(encodeOption(Opt.GO, encodeInfoRequest('md', [])))
  for (;;) if ((await c.optionReply()).type === Rep.ACK) break

  // 512 KiB from 0: zeroes, the 64 KiB written at 128 KiB, zeroes.
  c.s.write(encodeRequest({ type: Cmd.READ, cookie: 1n, offset: 0, length: 512 * KiB }))
  const chunks = await c.reply()
  t.deepEqual(chunks.map((x) => x.type), [ReplyType.OFFSET_HOLE, ReplyType.OFFSET_DATA, ReplyType.OFFSET_HOLE])
  t.deepEqual([Number(chunks[0].payload.readBigUInt64BE(0)), chunks[0].payload.readUInt32BE(8)], [0, 128 * KiB])
  t.is(Number(chunks[1].payload.readBigUInt64BE(0)), 128 * KiB)
  t.true(chunks[1].payload.subarray(8).equals(data))
  t.deepEqual([Number(chunks[2].payload.readBigUInt64BE(0)), chunks[2].payload.readUInt32BE(8)], [192 * KiB, 320 * KiB])

  c.s.write(encodeRequest({ type: Cmd.READ, flags: CmdFlag.DF, cookie: 2n, offset: 0, length: 512 * KiB }))
  const one = await c.reply()
  t.deepEqual(one.map((x) => x.type), [ReplyType.OFFSET_DATA])
  t.is(one[0].payload.length, 8 + 512 * KiB)

  c.s.write(encodeRequest({ type: Cmd.BLOCK_STATUS, cookie: 3n, offset: 0, length: 512 * KiB }))
  const err = await c.reply()
  t.is(err[0].type, ReplyType.ERROR)
  t.is(err[0].payload.readUInt32BE(0), 22, 'EINVAL: no meta context was set')
  // Still serving: a write and its simple reply.
  c.s.write(Buffer.concat([encodeRequest({ type: Cmd.WRITE, cookie: 4n, offset: 0, length: 4096 }), Buffer.alloc(4096, 1)]))
  const simple = await c.read(16)
  t.is(simple.readUInt32BE(0), 0x67446698)
  t.is(simple.readUInt32BE(4), 0)
})
