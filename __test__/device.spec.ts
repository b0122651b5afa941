/**
 * Device mode on a loop-mounted ext4: pages written straight on the block device at the
 * file's physical offsets must land exactly there (read back through the filesystem with
 * O_DIRECT) and nowhere else (the device compared byte for byte before and after).
 */
import { randomBytes } from 'node:crypto'
import * as fs from 'node:fs'
import { join } from 'node:path'
import { PageStore, allocAligned, extents, type ExtentInfo } from '../src'
import { fsCaps, requires } from './helpers/env'
import { PAGE, changedBlocks, deviceSize, findAligned, newMarker, patternPage, readBuffered, readDirect, sha } from './helpers/io'
import { sh, withFs } from './helpers/loopfs'
import { rejectsWith } from './helpers/errors'

const t = requires([...fsCaps('ext4'), 'lsattr', 'chattr', 'sync'])

const immutable = (f: string) => sh('lsattr', [f]).split(' ')[0].includes('i')

/** Where logical byte `off` of the file is on the device. */
function physicalOf(map: ExtentInfo[], off: number): number {
  const e = map.find((x) => off >= x.logical && off < x.logical + x.length)
  if (!e) throw new Error(`offset ${off} is not mapped`)
  return e.physical + (off - e.logical)
}

/**
 * Writes `pages` pages of random data to `file`, interleaved chunk by chunk (with fsync)
 * with a guard file, so the file is fragmented and its neighbours on the device are
 * another file's data. Returns the file's content.
 */
function writeFragmented(dir: string, file: string, pages: number): { data: Buffer; guards: Map<string, Buffer> } {
  const data = randomBytes(pages * PAGE)
  const guards = new Map<string, Buffer>()
  const g0 = randomBytes(64 * PAGE)
  fs.writeFileSync(join(dir, 'guard0'), g0)
  guards.set(join(dir, 'guard0'), g0)
  const guard = randomBytes(pages * PAGE)
  const fd = fs.openSync(file, 'w')
  const gd = fs.openSync(join(dir, 'guard1'), 'w')
  const chunk = 4 * PAGE
  for (let off = 0; off < data.length; off += chunk) {
    fs.writeSync(fd, data, off, chunk, off)
    fs.fsyncSync(fd)
    fs.writeSync(gd, guard, off, chunk, off)
    fs.fsyncSync(gd)
  }
  fs.closeSync(fd)
  fs.closeSync(gd)
  guards.set(join(dir, 'guard1'), guard)
  const g2 = randomBytes(64 * PAGE)
  fs.writeFileSync(join(dir, 'guard2'), g2)
  guards.set(join(dir, 'guard2'), g2)
  sh('sync', ['-f', dir])
  return { data, guards }
}

/** Makes sure nothing the filesystem has pending reaches the device while we compare it. */
function quiesce(dir: string) {
  sh('sync', ['-f', dir])
  sh('sync', ['-f', dir])
}

t('device mode: pages land at the file\'s physical offsets and nowhere else on the device', async (tt) => {
  await withFs('ext4', 32, async (dir, dev) => {
    const file = join(dir, 'bitmap')
    const PAGES = 64
    const { data, guards } = writeFragmented(dir, file, PAGES)
    const map = (await extents(file)).extents
    tt.true(map.length >= 2, `the file is fragmented (${map.length} extents), so writes cross extents`)

    const s = await PageStore.open(file, { mode: 'on-device' })
    let closed = false
    try {
      tt.is(s.mode, 'device')
      tt.is(s.device, dev)
      tt.is(s.reason, null)
      tt.is(s.size, PAGES * PAGE)
      tt.is(s.alignmentSource, 'block-device')
      tt.is(s.alignment, Number(fs.readFileSync(`/sys/class/block/${dev.slice(5)}/queue/logical_block_size`, 'utf8')))

      // Pinned: immutable while open, so the filesystem will not move its blocks.
      tt.true(immutable(file), 'lsattr shows i while a device-mode store is open')
      tt.throws(() => fs.openSync(file, 'r+'), { code: 'EPERM' }, 'the file cannot be opened for writing')

      quiesce(dir)
      const before = readDirect(dev, 0, deviceSize(dev))

      const marker = newMarker()
      const expect = Buffer.from(data)
      const written = new Set<number>() // page indices
      const writes: Promise<void>[] = []
      // Every other page, one page at a time...
      for (let i = 0; i < PAGES; i += 2) {
        const p = patternPage(marker, i, 1)
        writes.push(s.write(p, i * PAGE))
        Buffer.from(p).copy(expect, i * PAGE)
        written.add(i)
      }
      // ...and one multi-page write across the first extent boundary (split by the store).
      const boundary = map
        .map((e) => e.logical + e.length)
        .find((b) => b >= 4 * PAGE && b + 4 * PAGE <= PAGES * PAGE)
      if (boundary === undefined) return tt.fail(`no extent boundary with room around it: ${JSON.stringify(map)}`)
      const span = allocAligned(8 * PAGE, s.alignment)
      for (let k = 0; k < 8; k++) {
        const i = boundary / PAGE - 4 + k
        span.set(patternPage(marker, i, 2), k * PAGE)
        written.add(i)
      }
      await Promise.all(writes)
      await s.write(span, boundary - 4 * PAGE)
      Buffer.from(span).copy(expect, boundary - 4 * PAGE)
      await s.sync()
      tt.is(s.error(), null)

      // Device-mode reads see the new bytes.
      const back = allocAligned(PAGES * PAGE, s.alignment)
      await s.read(back, 0)
      tt.true(Buffer.from(back).equals(expect), 'reading back through the store')

      // On the device: exactly the written pages changed, each at its physical offset.
      const after = readDirect(dev, 0, deviceSize(dev))
      const changed = changedBlocks(before, after, 512)
      const expectedChanged = [...written]
        .flatMap((i) => Array.from({ length: PAGE / 512 }, (_, k) => physicalOf(map, i * PAGE) + k * 512))
        .sort((a, b) => a - b)
      tt.deepEqual(changed, expectedChanged, 'the changed 512-byte sectors are exactly the written pages\' sectors')
      const outside = changed.filter((o) => !map.some((e) => o >= e.physical && o < e.physical + e.length))
      tt.deepEqual(outside, [], 'nothing outside the file\'s extents changed')
      // Each written page's marker is found once, where the map says that page lives.
      for (const i of written) {
        const head = Buffer.from(patternPage(marker, i, 0).subarray(0, 20))
        tt.deepEqual(findAligned(after, head), [physicalOf(map, i * PAGE)], `page ${i} on the device`)
      }

      await s.close()
      closed = true
      tt.false(immutable(file), 'unpinned after close')

      // Through the filesystem: O_DIRECT sees the device's bytes...
      tt.true(Buffer.from(readDirect(file, 0, PAGES * PAGE)).equals(expect), 'O_DIRECT read through the filesystem')
      // ...and so does an ordinary read, because the stale page cache was dropped.
      tt.true(readBuffered(file).equals(expect), 'buffered read after close')
      for (const [g, content] of guards) {
        tt.true(Buffer.from(readDirect(g, 0, content.length)).equals(content), `${g} untouched`)
      }
      // And the file is writable again.
      fs.closeSync(fs.openSync(file, 'r+'))
    } finally {
      if (!closed) await s.close()
    }
  }, { mkfsArgs: ['-b', '4096'] })
})

t('device mode: I/O at or past the end of the file is refused and changes nothing on the device', async (tt) => {
  await withFs('ext4', 32, async (dir, dev) => {
    const file = join(dir, 'bitmap')
    const { data } = writeFragmented(dir, file, 8)
    const s = await PageStore.open(file, { mode: 'on-device' })
    try {
      tt.is(s.mode, 'device')
      quiesce(dir)
      const before = sha(readDirect(dev, 0, deviceSize(dev)))
      const page = allocAligned(PAGE, s.alignment).fill(0xcc)
      const two = allocAligned(2 * PAGE, s.alignment).fill(0xcc)
      await rejectsWith(tt, s.write(page, 8 * PAGE), 'EOUT_OF_RANGE')
      await rejectsWith(tt, s.write(page, 9 * PAGE), 'EOUT_OF_RANGE')
      await rejectsWith(tt, s.write(two, 7 * PAGE), 'EOUT_OF_RANGE')
      await rejectsWith(tt, s.write(page, 2 ** 40), 'EOUT_OF_RANGE')
      await rejectsWith(tt, s.read(page, 8 * PAGE), 'EOUT_OF_RANGE')
      await rejectsWith(tt, s.write(page.subarray(0, 100), 0), 'EALIGN')
      tt.is(s.error(), null)
      tt.is(s.pending, 0)
      await s.sync()
      tt.is(sha(readDirect(dev, 0, deviceSize(dev))), before, 'the device is byte-for-byte unchanged')
    } finally {
      await s.close()
    }
    tt.true(readBuffered(file).equals(data))
  }, { mkfsArgs: ['-b', '4096'] })
})

t('device mode: a file already immutable stays immutable after close; refusals leave no pin', async (tt) => {
  await withFs('ext4', 32, async (dir) => {
    const file = join(dir, 'bitmap')
    fs.writeFileSync(file, randomBytes(4 * PAGE))
    sh('sync', ['-f', dir])
    sh('chattr', ['+i', file])
    try {
      const s = await PageStore.open(file, { mode: 'on-device' })
      tt.true(immutable(file))
      const p = allocAligned(PAGE, s.alignment).fill(0x42)
      await s.write(p, PAGE)
      await s.close()
      tt.true(immutable(file), 'the pin was not ours to remove')
      tt.true(Buffer.from(readDirect(file, PAGE, PAGE)).equals(Buffer.from(p)))
    } finally {
      sh('chattr', ['-i', file])
    }
    // A file device mode refuses (a hole) is not left pinned.
    const sparse = join(dir, 'sparse')
    sh('truncate', ['-s', String(4 * PAGE), sparse])
    await rejectsWith(tt, PageStore.open(sparse, { mode: 'on-device' }), 'EDEVICE_MODE_UNSUPPORTED')
    tt.false(immutable(sparse))
  }, { mkfsArgs: ['-b', '4096'] })
})
