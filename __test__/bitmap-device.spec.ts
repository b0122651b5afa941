/**
 * The Bitmap in device mode on a loop-mounted ext4: the same core behaviour as in file
 * mode (group commit, two-pass clearing, NEEDED, close), judged by reading the file
 * with O_DIRECT and by mdadm -X afterwards; and a write error on the bitmap itself (the
 * loop device shrunk under it) kicks the bitmap: 'error' is emitted, stats().kicked,
 * later startWrites resolve without I/O, and close() rejects with the error's code;
 * an 'error' listener that throws (in a child process) changes none of that.
 */
import type { ExecutionContext } from 'ava'
import { randomBytes } from 'node:crypto'
import { closeSync, fsyncSync, mkdirSync, openSync, writeSync } from 'node:fs'
import { join } from 'node:path'

import { Bitmap, MdBitmapError, NEEDED, extents } from '../src'
import { chunkCounter, daemonPass } from '../src/bitmap/testing'
import { fsCaps, requires } from './helpers/env'
import { STATE_STALE, decode, encode, pagedFileSize } from '../src/bitmap/superblock'
import { PAGE, deviceSize, readDirect, writeWhole } from './helpers/io'
import { sh, withFs } from './helpers/loopfs'
import { failPageOne } from './helpers/bitmap-kick'
import { startCrashChild } from './helpers/crash-child'
import { examineBitmap, mdadmState, readDisk } from './helpers/mdadm'

const MiB = 1 << 20
const FS_OPTIONS = { mkfsArgs: ['-b', '4096'], mountOptions: 'errors=continue' }

const core = requires([...fsCaps('ext4'), 'mdadm'])

core('device mode: group commit, two-pass clearing, NEEDED, close; mdadm -X agrees afterwards', async (t) => {
  await withFs('ext4', 64, async (dir, dev) => {
    const path = join(dir, 'disk.bitmap')
    const CS = 4096
    const CHUNKS = 33000 // two pages of bits
    const size = CHUNKS * CS - 512
    const b = await Bitmap.create(path, { size, chunkSize: CS, daemonSleep: 3600, writeBehind: 64, mode: 'device' })
    let closed = false
    try {
      t.is(b.stats().mode, 'device')
      t.false(b.stats().kicked)

      // Group commit: clean chunks of one page in one tick → one page write.
      const w0 = b.stats().pagesWritten
      const set = [0, 1, 9, 500, 30719]
      await Promise.all(set.map((c) => b.startWrite(c * CS, 512)))
      t.is(b.stats().pagesWritten - w0, 1)
      t.deepEqual(readDisk(path).dirtyList(CHUNKS), set, 'the bits are on the device, read back through the file')
      // Across the page boundary: one write per page.
      const w1 = b.stats().pagesWritten
      await Promise.all([b.startWrite(30720 * CS, CS), b.startWrite((CHUNKS - 1) * CS, 512), b.startWrite(2 * CS, CS)])
      t.is(b.stats().pagesWritten - w1, 2)
      // Bits already set: nothing written.
      const w2 = b.stats().pagesWritten
      await b.startWrite(0, 1024)
      t.is(b.stats().pagesWritten, w2)
      b.endWrite(0, 1024)

      // Two-pass clearing.
      for (const c of [0, 1, 9, 30720]) b.endWrite(c * CS, c === 30720 ? CS : 512)
      b.endWrite(2 * CS, CS, false) // failed: NEEDED
      await daemonPass(b)
      t.deepEqual(readDisk(path).dirtyList(CHUNKS), [0, 1, 2, 9, 500, 30719, 30720, CHUNKS - 1], 'one pass: nothing cleared yet')
      await daemonPass(b)
      t.deepEqual(readDisk(path).dirtyList(CHUNKS), [2, 500, 30719, CHUNKS - 1], 'two passes: the idle chunks are clear on the device')
      t.is(chunkCounter(b, 2 * CS), 2 | NEEDED)

      // Degraded: nothing clears.
      b.degraded = true
      b.endWrite(500 * CS, 512)
      for (let i = 0; i < 3; i++) await daemonPass(b)
      t.true(readDisk(path).bit(500))
      b.degraded = false

      // Close with one write still in flight: its bit and the NEEDED ones stay.
      const before = { sb: b.superblock, stats: b.stats() }
      await b.close()
      closed = true
      const after = b.stats()
      const disk = readDisk(path)
      t.deepEqual(disk.dirtyList(CHUNKS), [2, 500, 30719, CHUNKS - 1], "in flight at close (30719, last) and NEEDED (2, 500) stay")
      t.is(after.dirty, disk.dirtyList(CHUNKS).length)

      // mdadm -X, reading the file through the filesystem, agrees with the library.
      const x = examineBitmap(path)
      let compared = 0
      const same = (name: string, got: unknown, want: unknown) => {
        compared++
        t.is(got, want, `${name}: mdadm -X says ${String(got)}, the library ${String(want)}\n${x.text}`)
      }
      same('magic', x.magic, '6d746962')
      same('version', x.version, before.sb.version)
      same('uuid', x.uuid.replace(/:/g, ''), Buffer.from(before.sb.uuid).toString('hex'))
      same('events', x.events, after.events)
      same('events cleared', x.eventsCleared, after.eventsCleared)
      same('state', x.state, mdadmState(b.superblock.state))
      same('chunksize', x.chunkSize, after.chunkSize)
      same('daemon', x.daemonSleep, 3600)
      same('write mode', x.writeBehind, after.maxWriteBehind)
      same('sync size', x.syncSizeKiB, Math.floor(size / 1024))
      same('bits', x.bits, after.chunks)
      same('dirty', x.dirty, after.dirty)
      t.log(`${compared} fields compared with mdadm -X on ${dev}`)

      // Reopened (file mode), the same chunks load as NEEDED.
      const r = await Bitmap.open(path)
      try {
        for (const c of disk.dirtyList(CHUNKS)) t.is(chunkCounter(r, c * CS) & NEEDED, NEEDED)
        t.is(r.stats().dirty, after.dirty)
      } finally {
        await r.close()
      }
    } finally {
      if (!closed) await b.close().catch(() => {})
    }
  }, FS_OPTIONS)
})

const kick = requires([...fsCaps('ext4'), 'truncate'])

/** Where logical byte `off` of a file is on its device. */
async function physicalOf(path: string, off: number): Promise<number> {
  const e = (await extents(path)).extents.find((x) => off >= x.logical && off < x.logical + x.length)
  if (!e) throw new Error(`offset ${off} of ${path} is not mapped`)
  return e.physical + (off - e.logical)
}

/**
 * A bitmap file written by hand with its first page apart from the rest: page 0, then
 * a 4 MiB guard file, then the other pages, each synced, so the device can be shrunk
 * between them (page 0, the superblock, stays writable; the bits past it do not).
 */
function writeSplitBitmap(dir: string, path: string, size: number, chunkSize: number): void {
  const file = new Uint8Array(pagedFileSize({ syncSize: size / 512, chunkSize }))
  file.set(encode({ uuid: randomBytes(16), syncSize: size / 512, chunkSize, daemonSleep: 3600 }))
  // Page 0 alone (closed, so ext4 drops the file's preallocation), then small files
  // that take the blocks after it, then a big one: the rest lands far away.
  writeWhole(path, file.subarray(0, PAGE))
  mkdirSync(join(dir, 'small'))
  for (let i = 0; i < 256; i++) writeWhole(join(dir, 'small', String(i)), new Uint8Array(PAGE))
  writeWhole(join(dir, 'guard'), new Uint8Array(4 * MiB))
  const fd = openSync(path, 'r+')
  writeSync(fd, file, PAGE, file.length - PAGE, PAGE)
  fsyncSync(fd)
  closeSync(fd)
}

/** The bitmap of the kick tests, on a loop-mounted ext4 whose device can be cut after page 0. */
interface SplitBitmap {
  path: string
  /** The chunk size (64 KiB) and the chunk count (70000: three pages of bits). */
  CS: number
  CHUNKS: number
  /** Cuts the loop device right after page 0 (the superblock's page): later pages fail with EIO. */
  shrink(): void
}

/**
 * Runs `body` on a bitmap file whose page 0 lies apart from the rest on its device,
 * gives the device back in full afterwards (even if `body` failed), and checks that
 * the next open resyncs everything: the bits past the cut came back as zeros.
 */
async function withSplitBitmap(t: ExecutionContext, mode: 'device' | 'file', body: (b: SplitBitmap) => Promise<void>) {
  await withFs('ext4', 64, async (dir, dev, ctx) => {
    // A filler first, so the bitmap's blocks lie well past the start of the device.
    writeWhole(join(dir, 'filler'), new Uint8Array(12 * MiB))
    const path = join(dir, 'disk.bitmap')
    const CS = 64 * 1024
    const CHUNKS = 70000 // three pages of bits
    writeSplitBitmap(dir, path, CHUNKS * CS, CS)
    const p0 = await physicalOf(path, 0)
    const p1 = await physicalOf(path, PAGE)
    const SHRINK = p0 + PAGE // right after the superblock's page
    t.true(p1 >= SHRINK, `page 0 at ${p0}, page 1 at ${p1}: the device can be cut between them at ${SHRINK}`)

    const image = ctx.image!
    const fullSize = deviceSize(dev)
    let shrunk = false
    const shrink = () => {
      sh('truncate', ['-s', String(SHRINK), image])
      sh('losetup', ['-c', dev])
      shrunk = true
      t.is(deviceSize(dev), SHRINK)
    }
    try {
      await body({ path, CS, CHUNKS, shrink })
    } finally {
      if (shrunk) {
        // Give the filesystem its device back before it is unmounted.
        sh('truncate', ['-s', String(fullSize), image])
        sh('losetup', ['-c', dev])
      }
    }
    t.is(deviceSize(dev), fullSize)
    const r = await Bitmap.open(path, { mode })
    try {
      t.true(r.wasStale)
      t.is(r.stats().dirty, CHUNKS)
      t.deepEqual(r.dirtyChunks(), [{ offset: 0, length: CHUNKS * CS }])
    } finally {
      await r.close()
    }
  }, FS_OPTIONS)
}

/** Whether the superblock on the device (page 0, read with O_DIRECT) carries STALE. */
function staleOnDisk(path: string): boolean {
  return (decode(readDirect(path, 0, PAGE)).state & STATE_STALE) !== 0
}

async function kickTest(t: ExecutionContext, mode: 'device' | 'file') {
  await withSplitBitmap(t, mode, async ({ path, CS, shrink }) => {
    const b = await Bitmap.open(path, { mode })
    try {
      t.is(b.stats().mode, mode === 'device' ? 'device' : 'direct')
      const errors: MdBitmapError[] = []
      b.on('error', (e: MdBitmapError) => errors.push(e))
      await b.startWrite(40000 * CS, 512) // page 1
      t.true(readDisk(path).bit(40000))
      t.false(b.stats().kicked)
      shrink()

      // The next write of page 1 fails: the bitmap is kicked, the startWrite still
      // resolves. Meanwhile, writes into page 0 (the superblock's page) go on every
      // tick: none of them may take the STALE mark off the disk again.
      const w0 = b.stats().pagesWritten
      const { failing, page0 } = await failPageOne(b, CS)
      await failing
      await Promise.all(page0)
      t.true(b.stats().pagesWritten > w0, 'the page write was tried')
      t.log(`${page0.length} page-0 startWrites around the failure`)
      t.true(b.stats().kicked, 'kicked')
      t.is(errors.length, 1, "'error' emitted once")
      const err = errors[0]
      t.true(err instanceof MdBitmapError)
      // Through the filesystem the kernel fails the write with EIO; on the block device
      // itself a write past its end is ENOSPC.
      t.true((mode === 'device' ? ['ENOSPC', 'EIO'] : ['EIO']).includes(err.code), `${err.code}: ${err.message}`)
      t.is(b.error, err)
      t.regex(err.message, /no longer used/)

      // Later startWrites resolve with no I/O, into clean chunks of every page alike.
      const w1 = b.stats().pagesWritten
      await Promise.all([b.startWrite(200 * CS, 512), b.startWrite(65000 * CS, CS), b.startWrite(40000 * CS, 512)])
      t.is(b.stats().pagesWritten, w1, 'a kicked bitmap writes nothing')
      b.endWrite(40000 * CS, 512)
      b.endWrite(200 * CS, 512)
      await daemonPass(b)
      await daemonPass(b)
      t.is(b.stats().pagesWritten, w1, 'nor does its daemon')
      t.is(errors.length, 1, 'still one error')

      const closing = await t.throwsAsync(b.close(), { instanceOf: MdBitmapError })
      t.is(closing?.code, err.code, 'close() rejects with the error code')
      // Only page 0 can be read back now.
      t.true(staleOnDisk(path), 'the superblock (still writable) was marked STALE')
    } finally {
      await b.close().catch(() => {})
    }
  })
}

kick('a write error on the bitmap (device mode, the loop device shrunk) kicks it: error event, kicked, no more I/O, close rejects', (t) =>
  kickTest(t, 'device'),
)
kick('a write error on the bitmap (file mode, the loop device shrunk) kicks it the same way', (t) => kickTest(t, 'file'))

kick("an 'error' listener that throws cannot unwind the failed page write: the kick completes as with any listener (child process)", async (t) => {
  await withSplitBitmap(t, 'file', async ({ path, CS, shrink }) => {
    const c = startCrashChild('bitmap-kick-listener.ts', [path, String(CS)])
    try {
      await c.waitFor('ready', 30_000)
      shrink()
      c.send('go')
      await c.waitFor('done', 60_000)
      await c.ended
    } finally {
      // Before the device is given back and the filesystem unmounted: the child holds the file.
      await c.kill()
    }
    const lines = c.lines
    t.log(lines.join('\n'))
    // close's line: its code (the message names the file).
    const seen = lines.filter((l) => l !== 'ready').map((l) => (l.startsWith('close ') ? l.split(' ').slice(0, 2).join(' ') : l))
    t.deepEqual(
      seen,
      ['error EIO', 'uncaught the error listener threw', 'failing ok', 'page0 ok', 'later ok 0', 'close EIO', 'done'],
      "the listener ran once, its throw reached the process as an uncaught exception, and the bitmap's own work went on",
    )
    t.true(staleOnDisk(path), 'the superblock was marked STALE')
  })
})
