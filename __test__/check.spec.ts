/**
 * check(), extents() and PageStore.open() on real filesystems: what a file must be like
 * for file mode and device mode, judged on ext4, xfs, btrfs and tmpfs.
 */
import type { ExecutionContext } from 'ava'
import { randomBytes } from 'node:crypto'
import * as fs from 'node:fs'
import { join } from 'node:path'
import { PageStore, allocAligned, check, extents, type CheckInfo } from '../src'
import { fsCaps, requires } from './helpers/env'
import { PAGE, readDirect, writeWhole } from './helpers/io'
import { sh, withFs } from './helpers/loopfs'
import { rejectsWith } from './helpers/errors'

const MiB = 1 << 20
const SIZE = 1 * MiB

const codes = (c: CheckInfo) => c.problems.map((p) => p.code).sort()

/** The map covers [0, size) exactly once, in order, with no gap. */
function assertCovers(t: ExecutionContext, c: CheckInfo, size: number) {
  t.truthy(c.map, 'check() has an extent map')
  let at = 0
  for (const e of c.map!.extents) {
    t.is(e.logical, at, `extent starts where the previous ended (${JSON.stringify(e)})`)
    at = e.logical + e.length
  }
  t.true(at >= size, `extents cover the file (${at} of ${size})`)
}

for (const fsType of ['ext4', 'xfs'] as const) {
  const t4 = requires([...fsCaps(fsType), 'fallocate', 'dd', 'truncate'])
  const sizeMiB = fsType === 'xfs' ? 300 : 64
  const mkfsArgs = fsType === 'ext4' ? ['-b', '4096'] : []

  t4(`${fsType}: a fully written file is fine for file and device mode`, async (t) => {
    await withFs(fsType, sizeMiB, async (dir, dev) => {
      const f = join(dir, 'whole')
      const data = randomBytes(SIZE)
      writeWhole(f, data)
      const c = await check(f)
      t.deepEqual(c.problems, [])
      t.true(c.fileModeOk)
      t.true(c.deviceModeOk)
      t.is(c.fsType, fsType)
      t.is(c.device, dev)
      t.is(c.fileSize, SIZE)
      assertCovers(t, c, SIZE)
      t.true(c.map!.extents.every((e) => !e.flags.includes('unwritten') && !e.flags.includes('shared')))
      t.true(c.map!.extents.at(-1)!.flags.includes('last'))

      const s = await PageStore.open(f)
      try {
        t.is(s.mode, 'direct')
        t.is(s.reason, null)
        t.is(s.size, SIZE)
        const page = allocAligned(PAGE, s.alignment)
        await s.read(page, 5 * PAGE)
        t.deepEqual(Buffer.from(page), data.subarray(5 * PAGE, 6 * PAGE))
      } finally {
        await s.close()
      }
    }, { mkfsArgs })
  })

  t4(`${fsType}: an fallocate'd file has unwritten extents until written`, async (t) => {
    await withFs(fsType, sizeMiB, async (dir) => {
      const f = join(dir, 'prealloc')
      sh('fallocate', ['-l', String(SIZE), f])
      const c = await check(f)
      t.false(c.fileModeOk)
      t.false(c.deviceModeOk)
      t.true(c.problems.length > 0)
      t.true(c.problems.every((p) => p.code === 'EEXTENT_UNWRITTEN'), JSON.stringify(c.problems))
      // The unwritten problems cover the whole file, and each blocks both modes.
      const covered = c.problems.reduce((n, p) => n + (p.length ?? 0), 0)
      t.is(covered, SIZE)
      t.is(c.problems[0].offset, 0)
      t.true(c.problems.every((p) => p.blocksFileMode && p.blocksDeviceMode))
      await rejectsWith(t, PageStore.open(f), 'EFILE_MODE_UNSUPPORTED')
      await rejectsWith(t, PageStore.open(f, { mode: 'on-device' }), 'EDEVICE_MODE_UNSUPPORTED')
      // A refused device-mode open must not leave the file pinned.
      t.false(sh('lsattr', [f]).split(' ')[0].includes('i'), 'not left immutable')

      // Written once in place (no truncation) and synced: now fine.
      const data = randomBytes(SIZE)
      const src = join(dir, '..', 'data')
      fs.writeFileSync(src, data)
      sh('dd', [`if=${src}`, `of=${f}`, `bs=${SIZE}`, 'count=1', 'conv=notrunc', 'status=none'])
      sh('sync', [])
      const after = await check(f)
      t.deepEqual(after.problems, [])
      t.true(after.fileModeOk)
      t.true(after.deviceModeOk)
      t.deepEqual(Buffer.from(readDirect(f, 0, SIZE)), data)
      const s = await PageStore.open(f)
      t.is(s.mode, 'direct')
      await s.close()
    }, { mkfsArgs })
  })

  t4(`${fsType}: a sparse file reports each hole with its offset and length`, async (t) => {
    await withFs(fsType, sizeMiB, async (dir) => {
      const f = join(dir, 'sparse')
      sh('truncate', ['-s', String(SIZE), f])
      const mid = SIZE / 2
      const fd = fs.openSync(f, 'r+')
      fs.writeSync(fd, randomBytes(PAGE), 0, PAGE, mid)
      fs.fsyncSync(fd)
      fs.closeSync(fd)
      const c = await check(f)
      t.false(c.fileModeOk)
      t.false(c.deviceModeOk)
      const holes = c.problems.filter((p) => p.code === 'EEXTENT_HOLE').map((p) => [p.offset, p.length])
      t.deepEqual(holes, [
        [0, mid],
        [mid + PAGE, SIZE - mid - PAGE],
      ])
      t.deepEqual(codes(c), ['EEXTENT_HOLE', 'EEXTENT_HOLE'])
      await rejectsWith(t, PageStore.open(f), 'EFILE_MODE_UNSUPPORTED')

      // A file that is one hole (never written at all) is one hole.
      const empty = join(dir, 'empty')
      sh('truncate', ['-s', String(SIZE), empty])
      const ce = await check(empty)
      t.deepEqual(ce.problems.map((p) => [p.code, p.offset, p.length]), [['EEXTENT_HOLE', 0, SIZE]])
    }, { mkfsArgs })
  })
}

const txfs = requires([...fsCaps('xfs'), 'cp'])
txfs('xfs: a reflinked copy has shared extents and is refused in both modes', async (t) => {
  await withFs('xfs', 300, async (dir) => {
    const orig = join(dir, 'orig')
    const copy = join(dir, 'copy')
    writeWhole(orig, randomBytes(SIZE))
    sh('cp', ['--reflink=always', orig, copy])
    for (const f of [copy, orig]) {
      const c = await check(f)
      t.false(c.fileModeOk, `${f}: file mode refused`)
      t.false(c.deviceModeOk, `${f}: device mode refused`)
      t.true(codes(c).includes('EEXTENT_SHARED'), JSON.stringify(c.problems))
      t.true(c.map!.extents.every((e) => e.flags.includes('shared')))
      const shared = c.problems.filter((p) => p.code === 'EEXTENT_SHARED')
      t.is(shared.reduce((n, p) => n + p.length!, 0), SIZE)
    }
    const e = await rejectsWith(t, PageStore.open(copy), 'EFILE_MODE_UNSUPPORTED')
    t.regex(e.message, /EEXTENT_SHARED/)
    await rejectsWith(t, PageStore.open(copy, { mode: 'on-device' }), 'EDEVICE_MODE_UNSUPPORTED')
    t.false(sh('lsattr', [copy]).split(' ')[0].includes('i'), 'not left immutable')
    // A private copy is fine again.
    const priv = join(dir, 'private')
    sh('cp', ['--reflink=never', copy, priv])
    sh('sync', [])
    const cp = await check(priv)
    t.deepEqual(cp.problems, [])
  })
})

const tbtrfs = requires(fsCaps('btrfs'))
tbtrfs('btrfs: device mode is refused (not physical), file mode works', async (t) => {
  await withFs('btrfs', 128, async (dir) => {
    const f = join(dir, 'whole')
    const data = randomBytes(SIZE)
    writeWhole(f, data)
    const c = await check(f)
    t.is(c.fsType, 'btrfs')
    t.true(c.fileModeOk)
    t.false(c.deviceModeOk)
    t.deepEqual(codes(c), ['EDEVICE_NOT_PHYSICAL'])
    t.false(c.problems[0].blocksFileMode)
    t.true(c.problems[0].blocksDeviceMode)
    const e = await rejectsWith(t, PageStore.open(f, { mode: 'on-device' }), 'EDEVICE_MODE_UNSUPPORTED')
    t.regex(e.message, /EDEVICE_NOT_PHYSICAL/)
    t.false(sh('lsattr', [f]).split(' ')[0].includes('i'), 'a refused device-mode open leaves the file unpinned')

    const s = await PageStore.open(f)
    try {
      t.not(s.mode, 'device')
      t.is(s.device, null)
      const page = allocAligned(PAGE, s.alignment)
      page.fill(0x5a)
      await s.write(page, 3 * PAGE)
      await s.sync()
      const back = allocAligned(PAGE, s.alignment)
      await s.read(back, 3 * PAGE)
      t.deepEqual(back, page)
    } finally {
      await s.close()
    }
    const expect = Buffer.from(data)
    expect.fill(0x5a, 3 * PAGE, 4 * PAGE)
    t.deepEqual(fs.readFileSync(f), expect)
  })
})

const ttmpfs = requires(fsCaps('tmpfs'))
ttmpfs('tmpfs: no extent map; file mode works buffered and says why', async (t) => {
  await withFs('tmpfs', 16, async (dir) => {
    const f = join(dir, 'whole')
    const data = randomBytes(SIZE)
    writeWhole(f, data)
    await rejectsWith(t, extents(f), 'EFIEMAP_UNSUPPORTED')
    const c = await check(f)
    t.is(c.fsType, 'tmpfs')
    t.true(codes(c).includes('EFIEMAP_UNSUPPORTED'), JSON.stringify(c.problems))
    t.true(c.fileModeOk)
    t.false(c.deviceModeOk)
    t.is(c.map ?? null, null)
    await rejectsWith(t, PageStore.open(f, { mode: 'on-device' }), 'EDEVICE_MODE_UNSUPPORTED')

    const s = await PageStore.open(f)
    try {
      t.is(s.mode, 'buffered')
      t.is(typeof s.reason, 'string')
      t.true(s.reason!.length > 0)
      t.is(s.device, null)
      // Writes and reads round-trip, aligned or not (buffered mode has no alignment rule).
      const pages = [0, 7, 255].map((i) => ({ off: i * PAGE, buf: randomBytes(PAGE) }))
      await Promise.all(pages.map((p) => s.write(p.buf, p.off)))
      t.true(await s.waitIdle())
      await s.sync()
      for (const p of pages) {
        const back = new Uint8Array(PAGE)
        await s.read(back, p.off)
        t.deepEqual(Buffer.from(back), p.buf)
      }
      const odd = randomBytes(100)
      await s.write(odd, 12345)
      const oddBack = new Uint8Array(100)
      await s.read(oddBack, 12345)
      t.deepEqual(Buffer.from(oddBack), odd)
      await s.close()
      const expect = Buffer.from(data)
      for (const p of pages) p.buf.copy(expect, p.off)
      odd.copy(expect, 12345)
      t.deepEqual(fs.readFileSync(f), expect)
    } finally {
      await s.close()
    }
  })
})

const tsanity = requires(fsCaps('ext4'))
tsanity('check() and extents() reject what is not a regular file', async (t) => {
  await withFs('ext4', 16, async (dir) => {
    await rejectsWith(t, check(dir), 'ENOT_REGULAR_FILE')
    await rejectsWith(t, extents(dir), 'ENOT_REGULAR_FILE')
    await rejectsWith(t, check(join(dir, 'missing')), 'ENOENT')
    await rejectsWith(t, PageStore.open(join(dir, 'missing')), 'ENOENT')
  })
})
