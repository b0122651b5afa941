/**
 * Real write errors from real devices: a page write that fails (a plain one, or one
 * issued O_DSYNC under write-through) must reject with the errno's code, become the
 * store's sticky error (the first one stays), and make close() reject with it, so the
 * error is never lost; under write-through no sync is skipped after it.
 *
 * (a) the loop device shrinks under a mounted ext4, so the file's blocks lie past the
 *     device's end: the kernel fails the write with EIO;
 * (b) the loop device's backing image lives on a tmpfs that is full, and the image's
 *     blocks under the file were punched out: writing them needs tmpfs space and fails
 *     with ENOSPC.
 */
import type { ExecutionContext } from 'ava'
import { spawnSync } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import * as fs from 'node:fs'
import { constants as os } from 'node:os'
import { join } from 'node:path'
import { MdBitmapError, PageStore, allocAligned, extents } from '../src'
import { fsCaps, requires } from './helpers/env'
import { PAGE, deviceSize, writeWhole } from './helpers/io'
import { sh, withFs } from './helpers/loopfs'

const MiB = 1 << 20

const isErrno = (code: unknown) => typeof code === 'string' && Object.prototype.hasOwnProperty.call(os.errno, code)

/** Writes that must fail, then the sticky-error and close() checks; returns the code. */
async function assertStickyFailure(t: ExecutionContext, s: PageStore, offsets: number[], allowed: string[]): Promise<string> {
  const page = allocAligned(PAGE, s.alignment).fill(0xd1)
  const first = await t.throwsAsync(s.write(page, offsets[0]), { instanceOf: MdBitmapError })
  const code = first!.code
  t.log(`the write failed with ${code}: ${first!.message}`)
  t.true(isErrno(code), `the write failed with an errno code (${code}: ${first!.message})`)
  t.true(allowed.includes(code), `${code} is one of ${allowed.join(', ')}`)
  t.is(first!.errno, (os.errno as Record<string, number>)[code], 'errno matches the code')
  t.regex(first!.message, new RegExp(`^write of ${PAGE} bytes at ${offsets[0]} to /\\S+/bitmap: `), 'the message says which write failed, of which file')

  const sticky = s.error()
  t.true(sticky instanceof MdBitmapError)
  t.is(sticky!.code, code)
  t.is(sticky!.message, first!.message)

  // Later failures do not replace the first error.
  for (const off of offsets.slice(1)) {
    await t.throwsAsync(s.write(page, off), { instanceOf: MdBitmapError })
  }
  t.is(s.error()!.message, first!.message, 'the first error stays')
  t.true(await s.waitIdle(5000))
  t.is(s.pending, 0, 'failed writes are no longer pending')

  const closing = await t.throwsAsync(s.close(), { instanceOf: MdBitmapError })
  t.is(closing!.code, code, 'close() rejects with the sticky error')
  t.is(closing!.message, first!.message)
  return code
}

const ta = requires([...fsCaps('ext4'), 'truncate'])

/**
 * A direct store on a file whose blocks lie past the first 4 MiB of an ext4's loop
 * device; `shrink()` cuts the device to 4 MiB, so every later write of the file fails EIO.
 */
async function withShrinkableStore(t: ExecutionContext, fn: (s: PageStore, shrink: () => void) => Promise<void>): Promise<void> {
  await withFs('ext4', 64, async (dir, dev, ctx) => {
    // A filler first, so the file's blocks lie well past the size we shrink to.
    writeWhole(join(dir, 'filler'), new Uint8Array(12 * MiB))
    const file = join(dir, 'bitmap')
    writeWhole(file, randomBytes(MiB))
    const SHRINK = 4 * MiB
    const map = await extents(file)
    t.true(map.extents.every((e) => e.physical >= SHRINK), `the file lies past ${SHRINK} (${JSON.stringify(map.extents)})`)
    const s = await PageStore.open(file)
    t.is(s.mode, 'direct')
    await fn(s, () => {
      sh('truncate', ['-s', String(SHRINK), ctx.image!])
      sh('losetup', ['-c', dev])
      t.is(deviceSize(dev), SHRINK)
    })
  }, { mkfsArgs: ['-b', '4096'], mountOptions: 'errors=continue' })
}

ta('a write past the end of a shrunk device fails with EIO, kept as the sticky error and reported by close()', async (t) => {
  await withShrinkableStore(t, async (s, shrink) => {
    const ok = allocAligned(PAGE, s.alignment).fill(1)
    await s.write(ok, 0)
    t.is(s.error(), null, 'no error before the device shrinks')
    shrink()
    const code = await assertStickyFailure(t, s, [PAGE, 2 * PAGE, 100 * PAGE], ['EIO'])
    t.is(code, 'EIO')
  })
})

ta('write-through: a write that fails on the O_DSYNC descriptor is as sticky, and no sync is skipped after it', async (t) => {
  await withShrinkableStore(t, async (s, shrink) => {
    const ok = allocAligned(PAGE, s.alignment).fill(1)
    // A write and a sync, twice: the second write went through, its sync was skipped.
    for (const off of [0, 3 * PAGE]) {
      await s.write(ok, off)
      await s.sync()
    }
    t.deepEqual(s.writeThrough, { writesThrough: 1, syncsSkipped: 1 })
    shrink()
    const failed = await t.throwsAsync(s.write(ok, PAGE), { instanceOf: MdBitmapError })
    t.is(failed!.code, 'EIO', failed!.message)
    t.is(s.writeThrough!.writesThrough, 2, 'the failed write was issued O_DSYNC')
    t.is(s.error()!.message, failed!.message, 'kept as the sticky error')
    // An fdatasync now, whatever the shrunk device answers: never a skip.
    await s.sync().catch(() => {})
    t.is(s.writeThrough!.syncsSkipped, 1, 'a sync was skipped after a failed write')
    const closing = await t.throwsAsync(s.close(), { instanceOf: MdBitmapError })
    t.is(closing!.code, 'EIO')
  })
})

const tb = requires([...fsCaps('ext4'), ...fsCaps('tmpfs'), 'fallocate', 'dd'])
tb('a write whose device cannot allocate (full tmpfs under the loop image) fails with ENOSPC, sticky, and close() reports it', async (t) => {
  await withFs('tmpfs', 48, async (tdir) => {
    await withFs('ext4', 32, async (dir, _dev, ctx) => {
      const file = join(dir, 'bitmap')
      writeWhole(file, randomBytes(MiB))
      const map = await extents(file)
      const s = await PageStore.open(file)
      t.is(s.mode, 'direct')
      await s.write(allocAligned(PAGE, s.alignment).fill(1), 0)

      // Take the file's blocks out of the image (they read back as zeros and need
      // tmpfs pages again when written), then fill the tmpfs.
      for (const e of map.extents) {
        sh('fallocate', ['--punch-hole', '--offset', String(e.physical), '--length', String(e.length), ctx.image!])
      }
      const fill = spawnSync('dd', ['if=/dev/zero', `of=${join(tdir, 'fill')}`, 'bs=64k', 'status=none'], { encoding: 'utf8' })
      t.regex(fill.stderr, /No space left on device/, 'the tmpfs is full')
      const st = fs.statfsSync(tdir)
      t.is(st.bavail, 0)

      await assertStickyFailure(t, s, [PAGE, 2 * PAGE, 200 * PAGE], ['ENOSPC', 'EIO'])
    }, { mkfsArgs: ['-b', '4096'], mountOptions: 'errors=continue', parentDir: tdir })
  })
})
