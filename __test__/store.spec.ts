/**
 * PageStore behaviour that does not depend on which filesystem is under it: many writes
 * in flight and waitIdle, argument errors (EALIGN, EOUT_OF_RANGE, ECLOSED, EINVAL),
 * closing, aligned buffers, and the package as users load it (ESM, CommonJS, and the
 * error when the native addon cannot be loaded).
 */
import test from 'ava'
import { spawnSync } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import * as fs from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join, resolve } from 'node:path'
import { MdBitmapError, PageStore, allocAligned } from '../src'
import { binding } from '../src/native/load'
import { ensureBuilt } from './helpers/built'
import { fsCaps, requires } from './helpers/env'
import { PAGE, newMarker, patternPage, readDirect, writeWhole } from './helpers/io'
import { freeze, openFdsOn, thaw, withFs } from './helpers/loopfs'
import { rejectsWith } from './helpers/errors'

const ROOT = resolve(__dirname, '..')

/** An ext4 (4 KiB blocks) on a loop device with a zeroed file of `pages` pages in it. */
async function withStoreFile<T>(
  pages: number,
  fn: (file: string, dir: string, dev: string) => Promise<T>,
  opts: { sectorSize?: number } = {},
): Promise<T> {
  return withFs(
    'ext4',
    32,
    async (dir, dev) => {
      const file = join(dir, 'store')
      writeWhole(file, new Uint8Array(pages * PAGE))
      return fn(file, dir, dev)
    },
    { mkfsArgs: ['-b', '4096'], sectorSize: opts.sectorSize },
  )
}

const tfs = requires(fsCaps('ext4'))

tfs('1000 concurrent page writes: waitIdle resolves true with nothing pending, and every page is on disk', async (t) => {
  const N = 1000
  await withStoreFile(N, async (file) => {
    const s = await PageStore.open(file)
    try {
      t.is(s.mode, 'direct')
      t.is(s.pending, 0)
      const marker = newMarker()
      const pages = Array.from({ length: N }, (_, i) => patternPage(marker, i))
      let settled = 0
      // Issue all at once; none awaited individually.
      const writes = pages.map((p, i) => s.write(p, i * PAGE).then(() => void settled++))
      const issuedPending = s.pending
      t.true(issuedPending >= 0 && issuedPending <= N, `pending ${issuedPending} counts only issued writes`)
      let pendingAtIdle = -1
      const idle = await s.waitIdle().then((v) => {
        pendingAtIdle = s.pending
        return v
      })
      t.true(idle)
      t.is(pendingAtIdle, 0, 'nothing pending when waitIdle resolves')
      t.log(`${settled} of ${N} write promises had settled when waitIdle resolved`)
      const results = await Promise.allSettled(writes)
      t.deepEqual(
        results.filter((r) => r.status === 'rejected'),
        [],
      )
      t.is(settled, N)
      t.is(s.error(), null)
      // Every page, read back through the store and straight from the file.
      const back = allocAligned(PAGE, s.alignment)
      for (const i of [0, 1, 499, 998, 999]) {
        await s.read(back, i * PAGE)
        t.deepEqual(back, pages[i], `page ${i} through the store`)
      }
      await s.close()
      const whole = readDirect(file, 0, N * PAGE)
      const bad = pages.findIndex((p, i) => Buffer.compare(whole.subarray(i * PAGE, (i + 1) * PAGE), p) !== 0)
      t.is(bad, -1, `page ${bad} on disk differs from what was written`)
    } finally {
      await s.close()
    }
  })
})

tfs('a store synced after every single write writes through: its writes go O_DSYNC and its syncs need no fdatasync; a batch turns it off', async (t) => {
  await withStoreFile(64, async (file) => {
    const s = await PageStore.open(file)
    try {
      t.deepEqual(s.writeThrough, { writesThrough: 0, syncsSkipped: 0 })
      const marker = newMarker()
      const pages = Array.from({ length: 64 }, (_, i) => patternPage(marker, i))
      // Write, sync, write, sync: the first write is plain, every later one goes through.
      for (let i = 0; i < 20; i++) {
        await s.write(pages[i], i * PAGE)
        await s.sync()
      }
      t.deepEqual(s.writeThrough, { writesThrough: 19, syncsSkipped: 19 })
      // A batch: the second write before the sync turns write-through off; the sync is an fdatasync.
      await Promise.all([20, 21, 22, 23].map((i) => s.write(pages[i], i * PAGE)))
      await s.sync()
      t.deepEqual(s.writeThrough, { writesThrough: 20, syncsSkipped: 19 })
      // Batch after batch: it stays off.
      for (let b = 0; b < 4; b++) {
        await Promise.all([0, 1, 2, 3, 4, 5, 6, 7].map((k) => s.write(pages[24 + b * 8 + k], (24 + b * 8 + k) * PAGE)))
        await s.sync()
      }
      t.deepEqual(s.writeThrough, { writesThrough: 20, syncsSkipped: 19 })
      t.is(s.error(), null)
      await s.close()
      const whole = readDirect(file, 0, 56 * PAGE)
      const bad = pages.slice(0, 56).findIndex((p, i) => Buffer.compare(whole.subarray(i * PAGE, (i + 1) * PAGE), p) !== 0)
      t.is(bad, -1, `page ${bad} on disk differs from what was written`)
    } finally {
      await s.close()
    }
    // Every write of a dsync store is durable already: no write-through of its own.
    const d = await PageStore.open(file, { dsync: true })
    t.is(d.writeThrough, null)
    await d.close()
  })
})

tfs.serial('waitIdle(timeout) resolves false while writes are held up, true once they complete', async (t) => {
  await withStoreFile(256, async (file, dir) => {
    const s = await PageStore.open(file)
    const marker = newMarker()
    // More writes than the I/O pool has threads (64 by default): a timeout must still
    // fire though every pool thread is stuck.
    const N = 100
    const pages = Array.from({ length: N }, (_, i) => patternPage(marker, i))
    let writes: Promise<void>[] = []
    freeze(dir)
    try {
      writes = pages.map((p, i) => s.write(p, i * PAGE))
      t.is(s.pending, N, 'every write counts as pending while the filesystem is frozen')
      const t0 = Date.now()
      const idle = await Promise.race([
        s.waitIdle(150),
        new Promise<string>((r) => setTimeout(() => r('waitIdle(150) did not resolve within 3 s'), 3000)),
      ])
      const took = Date.now() - t0
      t.is(idle, false)
      t.true(took >= 140 && took < 2000, `waitIdle(150) took ${took} ms`)
      t.is(s.pending, N)
      t.is(s.error(), null)
    } finally {
      thaw(dir)
    }
    t.true(await s.waitIdle(10_000))
    t.is(s.pending, 0)
    await Promise.all(writes)
    await s.close()
    const whole = readDirect(file, 0, N * PAGE)
    pages.forEach((p, i) => t.deepEqual(whole.subarray(i * PAGE, (i + 1) * PAGE), p, `page ${i}`))
  })
})

tfs.serial('many waitIdle calls while writes are queued do not deadlock the I/O threads', async (t) => {
  await withStoreFile(256, async (file, dir) => {
    const s = await PageStore.open(file)
    const marker = newMarker()
    const writes: Promise<void>[] = []
    const waits: Promise<boolean>[] = []
    freeze(dir)
    try {
      // Fill the pool with held-up writes, then queue waiters, then one more write
      // behind the waiters.
      for (let i = 0; i < 64; i++) writes.push(s.write(patternPage(marker, i), i * PAGE))
      await new Promise((r) => setTimeout(r, 100))
      for (let i = 0; i < 64; i++) waits.push(s.waitIdle())
      writes.push(s.write(patternPage(marker, 100), 100 * PAGE))
      await new Promise((r) => setTimeout(r, 100))
    } finally {
      thaw(dir)
    }
    const outcome = await Promise.race([
      Promise.all([...writes, ...waits]).then(() => 'completed'),
      new Promise<string>((r) => setTimeout(() => r('deadlocked'), 5000)),
    ])
    t.is(outcome, 'completed')
    t.true((await Promise.all(waits)).every((v) => v === true))
    t.is(s.pending, 0)
    await s.close()
    t.deepEqual(readDirect(file, 100 * PAGE, PAGE), patternPage(marker, 100))
  })
})

tfs('misaligned offsets, lengths and buffers reject with EALIGN and write nothing', async (t) => {
  await withStoreFile(16, async (file) => {
    const s = await PageStore.open(file)
    try {
      const a = s.alignment
      t.true(a >= 512 && (a & (a - 1)) === 0, `alignment ${a} is a power of two >= 512`)
      const good = allocAligned(PAGE, a).fill(0x11)
      const misplaced = allocAligned(PAGE + a, a).subarray(1, 1 + PAGE).fill(0x22) // address off by one
      const short = allocAligned(a / 2, a).fill(0x33) // length not a multiple
      await rejectsWith(t, s.write(good, 1), 'EALIGN')
      await rejectsWith(t, s.write(good, a / 2), 'EALIGN')
      await rejectsWith(t, s.write(short, 0), 'EALIGN')
      const e = await rejectsWith(t, s.write(misplaced, 0), 'EALIGN')
      t.regex(e.message, /allocAligned/)
      await rejectsWith(t, s.read(allocAligned(PAGE, a), 3), 'EALIGN')
      await rejectsWith(t, s.read(misplaced, 0), 'EALIGN')
      // Misuse is reported at once and is not a write error of the store.
      t.is(s.error(), null)
      t.is(s.pending, 0)
      // Aligned I/O at the alignment's granularity works.
      await s.write(good.subarray(0, a), a)
      await s.close()
      const disk = readDirect(file, 0, 16 * PAGE)
      const expect = new Uint8Array(16 * PAGE)
      expect.fill(0x11, a, 2 * a)
      t.deepEqual(disk, expect, 'only the one aligned write reached the file')
    } finally {
      await s.close()
    }
  })
})

tfs('alignment comes from the device: 4096 on a 4 KiB-sector loop device', async (t) => {
  await withStoreFile(
    8,
    async (file) => {
      const s = await PageStore.open(file)
      try {
        t.is(s.alignment, 4096)
        await rejectsWith(t, s.write(allocAligned(512, 4096), 0), 'EALIGN')
        await rejectsWith(t, s.write(allocAligned(4096, 4096), 512), 'EALIGN')
        await s.write(allocAligned(4096, 4096).fill(9), 4096)
      } finally {
        await s.close()
      }
      t.deepEqual(readDirect(file, 4096, 4096), new Uint8Array(4096).fill(9))
    },
    { sectorSize: 4096 },
  )
})

tfs('I/O past the end of the file rejects with EOUT_OF_RANGE; bad numbers with EINVAL', async (t) => {
  await withStoreFile(4, async (file) => {
    const s = await PageStore.open(file)
    try {
      const page = allocAligned(PAGE, s.alignment).fill(0xee)
      const two = allocAligned(2 * PAGE, s.alignment).fill(0xee)
      t.is(s.size, 4 * PAGE)
      await rejectsWith(t, s.write(page, 4 * PAGE), 'EOUT_OF_RANGE')
      await rejectsWith(t, s.write(page, 100 * PAGE), 'EOUT_OF_RANGE')
      await rejectsWith(t, s.write(two, 3 * PAGE), 'EOUT_OF_RANGE')
      await rejectsWith(t, s.read(page, 4 * PAGE), 'EOUT_OF_RANGE')
      await rejectsWith(t, s.write(page, 2 ** 53 - 4096), 'EOUT_OF_RANGE')
      for (const bad of [-4096, 1.5, Number.NaN, Infinity, 2 ** 60]) {
        await rejectsWith(t, s.write(page, bad), 'EINVAL')
      }
      t.is(s.error(), null)
      await s.write(page, 3 * PAGE) // the last page is fine
      await s.close()
      t.is(fs.statSync(file).size, 4 * PAGE, 'the file never grows')
      const expect = new Uint8Array(4 * PAGE)
      expect.fill(0xee, 3 * PAGE)
      t.deepEqual(readDirect(file, 0, 4 * PAGE), expect)
    } finally {
      await s.close()
    }
  })
})

tfs('after close: ECLOSED, close() again resolves, and no descriptor is left open', async (t) => {
  await withStoreFile(4, async (file, dir, dev) => {
    for (const mode of ['in-place', 'on-device'] as const) {
      const s = await PageStore.open(file, { mode })
      const page = allocAligned(PAGE, s.alignment).fill(mode === 'in-place' ? 1 : 2)
      await s.write(page, 0)
      await s.close()
      await rejectsWith(t, s.write(page, 0), 'ECLOSED')
      await rejectsWith(t, s.read(page, 0), 'ECLOSED')
      await rejectsWith(t, s.sync(), 'ECLOSED')
      await t.notThrowsAsync(s.close(), 'close is idempotent')
      t.is(s.error(), null)
      t.deepEqual(openFdsOn(dir, dev), [], `${mode} mode: close() released the file and the device`)
    }
    t.deepEqual(readDirect(file, 0, PAGE), new Uint8Array(PAGE).fill(2))
  })
})

tfs('allocAligned gives aligned, zeroed views that O_DIRECT accepts; misaligned views are refused by the kernel', async (t) => {
  await withStoreFile(16, async (file) => {
    const fd = fs.openSync(file, fs.constants.O_RDWR | fs.constants.O_DIRECT)
    try {
      // Control: the kernel really checks buffer addresses here.
      const base = allocAligned(2 * PAGE, PAGE)
      t.throws(() => fs.readSync(fd, base.subarray(8, 8 + PAGE), 0, PAGE, 0), { code: 'EINVAL' })
      fs.writeSync(fd, base.fill(0x77), 0, 2 * PAGE, 0)
      for (let i = 0; i < 50; i++) {
        const align = [512, 4096, 65536][i % 3]
        const v = allocAligned(PAGE * (1 + (i % 4)), align)
        t.is(v.length, PAGE * (1 + (i % 4)))
        t.true(v.every((b) => b === 0))
        t.is(binding().alignmentOffset(v, align), 0, `view ${i} is ${align}-aligned`)
        t.is(fs.readSync(fd, v, 0, PAGE, 0), PAGE, 'O_DIRECT read into an allocAligned view succeeds')
        t.is(v[0], 0x77)
      }
    } finally {
      fs.closeSync(fd)
    }
  })
})

tfs('waitIdle and close start no thread: idle at once, 200 concurrent waits settled by the last completion, a timeout, then close with writes in flight', async (t) => {
  await withStoreFile(512, async (file) => {
    const s = await PageStore.open(file)
    const threads = () => fs.readdirSync('/proc/self/task').length
    t.true(await s.waitIdle(0), 'an idle store is idle at once, even with no time to wait')
    const page = allocAligned(PAGE, s.alignment).fill(0x3c)
    const writes = Array.from({ length: 512 }, (_, i) => s.write(page, i * PAGE))
    t.true(s.pending > 0)
    // A 0 ms timeout races the completions (under the thread reaper all 512 may come
    // first): false, or true only once nothing is pending.
    const quick = await s.waitIdle(0)
    t.true(!quick || s.pending === 0, `waitIdle(0) resolved ${quick} with ${s.pending} writes pending`)
    const before = threads()
    // A thread per wait would show here: each lives until the writes are done.
    const waits = Array.from({ length: 200 }, (_, i) => s.waitIdle(i % 2 ? undefined : 60_000))
    const during = threads()
    t.true(during - before < 10, `${during - before} threads started by 200 waits`)
    const idleAt: number[] = []
    for (const w of waits) void w.then(() => idleAt.push(s.pending))
    t.deepEqual(await Promise.all(waits), waits.map(() => true))
    t.deepEqual([...new Set(idleAt)], [0], 'nothing pending when any wait resolved')
    await Promise.all(writes)
    // close() with writes in flight: resolves after they complete, the file released.
    const more = Array.from({ length: 64 }, (_, i) => s.write(page, i * PAGE))
    const closing = s.close()
    const closingThreads = threads()
    t.true(closingThreads - before < 10, `${closingThreads - before} threads while closing`)
    await closing
    t.is(s.pending, 0)
    t.deepEqual((await Promise.allSettled(more)).filter((r) => r.status === 'rejected'), [], 'writes issued before close complete')
    await rejectsWith(t, s.write(page, 0), 'ECLOSED')
  })
})

test('allocAligned: sizes and alignments, and EINVAL for bad arguments', (t) => {
  for (const size of [0, 1, 100, 4096, 65539]) {
    for (const align of [1, 2, 512, 4096, 1 << 20]) {
      const v = allocAligned(size, align)
      t.true(v instanceof Uint8Array)
      t.is(v.length, size)
      t.is(binding().alignmentOffset(v, align), 0, `allocAligned(${size}, ${align})`)
    }
  }
  t.is(allocAligned(10).length, 10)
  t.is(binding().alignmentOffset(allocAligned(10), 4096), 0, 'default alignment is 4096')
  for (const [size, align] of [
    [-1, 4096],
    [1.5, 4096],
    [Number.NaN, 4096],
    [10, 0],
    [10, 3],
    [10, -4096],
    [10, 1.5],
    [10, 6144],
  ]) {
    const e = t.throws(() => allocAligned(size, align), { instanceOf: MdBitmapError }, `allocAligned(${size}, ${align})`)
    t.is(e?.code, 'EINVAL')
  }
})

test('MdBitmapError carries a code, a name and an optional errno', (t) => {
  const e = new MdBitmapError('EIO', 'disk on fire', { errno: 5 })
  t.true(e instanceof Error)
  t.is(e.name, 'MdBitmapError')
  t.is(e.code, 'EIO')
  t.is(e.errno, 5)
  t.is(e.message, 'disk on fire')
})

// ---------------------------------------------------------------------------------
// The package as users load it: dist/ (CommonJS and its ESM face), in fresh processes.

function node(args: string[], opts: { env?: Record<string, string>; cwd?: string } = {}) {
  const r = spawnSync(process.execPath, args, {
    cwd: opts.cwd ?? ROOT,
    env: { ...process.env, NODE_OPTIONS: '', ...opts.env },
    encoding: 'utf8',
    timeout: 30_000,
  })
  return { status: r.status, stdout: r.stdout, stderr: r.stderr }
}

const PROBE = `
  const out = {}
  out.names = ['PageStore', 'allocAligned', 'check', 'extents', 'MdBitmapError'].map((n) => n + ':' + typeof m[n])
  const v = m.allocAligned(4096, 4096)
  out.len = v.length
  out.isU8 = v instanceof Uint8Array
  const p = require('node:path').join(require('node:os').tmpdir(), 'md-bitmap-probe-' + process.pid)
  require('node:fs').writeFileSync(p, Buffer.alloc(8192, 3))
  m.PageStore.open(p).then(async (s) => {
    out.mode = s.mode
    const b = m.allocAligned(4096, s.alignment)
    await s.read(b, 4096)
    out.byte = b[0]
    await s.close()
    require('node:fs').unlinkSync(p)
    console.log(JSON.stringify(out))
  }, (e) => { console.log(JSON.stringify({ error: e.code + ' ' + e.message })) })
`

test.serial('CommonJS: require() of the package (by path and by name) works', (t) => {
  ensureBuilt()
  for (const spec of [join(ROOT, 'dist'), 'md-bitmap']) {
    const r = node(['-e', `const m = require(${JSON.stringify(spec)}); ${PROBE}`])
    t.is(r.status, 0, r.stderr)
    const out = JSON.parse(r.stdout)
    t.deepEqual(out.names, ['PageStore:function', 'allocAligned:function', 'check:function', 'extents:function', 'MdBitmapError:function'], spec)
    t.is(out.len, 4096)
    t.true(out.isU8)
    t.true(['direct', 'buffered'].includes(out.mode), JSON.stringify(out))
    t.is(out.byte, 3)
  }
})

test.serial('ESM: import of the package (by path and by name) works', (t) => {
  ensureBuilt()
  for (const spec of [join(ROOT, 'dist', 'index.mjs'), 'md-bitmap']) {
    const src = `import * as m from ${JSON.stringify(spec)}; import def from ${JSON.stringify(spec)};
      import { createRequire } from 'node:module'; const require = createRequire(import.meta.url);
      if (def.PageStore !== m.PageStore) throw new Error('default export differs');
      ${PROBE}`
    const r = node(['--input-type=module', '-e', src])
    t.is(r.status, 0, r.stderr)
    const out = JSON.parse(r.stdout)
    t.deepEqual(out.names, ['PageStore:function', 'allocAligned:function', 'check:function', 'extents:function', 'MdBitmapError:function'], spec)
    t.is(out.byte, 3)
  }
})

test.serial('a native addon that cannot be loaded gives ENATIVE_LOAD naming every attempt', (t) => {
  ensureBuilt()
  const probe = `
    const m = require(${JSON.stringify(join(ROOT, 'dist'))})
    const out = {}
    try { m.allocAligned(16) } catch (e) { out.sync = { inst: e instanceof m.MdBitmapError, code: e.code, message: e.message } }
    m.check('/').then(() => { out.async = 'resolved' }, (e) => { out.async = { inst: e instanceof m.MdBitmapError, code: e.code, message: e.message } })
      .then(() => console.log(JSON.stringify(out)))
  `
  const missing = node(['-e', probe], { env: { MD_BITMAP_NATIVE_PATH: '/nonexistent' } })
  t.is(missing.status, 0, missing.stderr)
  const out = JSON.parse(missing.stdout)
  for (const k of ['sync', 'async'] as const) {
    t.true(out[k].inst, `${k}: an MdBitmapError`)
    t.is(out[k].code, 'ENATIVE_LOAD')
    t.regex(out[k].message, /MD_BITMAP_NATIVE_PATH \(\/nonexistent\)/, `${k}: names the attempt`)
    t.regex(out[k].message, /Tried:/)
    t.regex(out[k].message, /linux-(x64|arm64)-(gnu|musl)/, `${k}: names the platform`)
    // With the override set, nothing else is tried.
    t.notRegex(out[k].message, /local build|platform package/)
  }

  // A file that is not an addon: the loader's own complaint is passed on.
  const bogus = join(fs.mkdtempSync(join(tmpdir(), 'md-bitmap-bogus-')), 'x.node')
  fs.writeFileSync(bogus, 'not an ELF file')
  try {
    const r = node(['-e', probe], { env: { MD_BITMAP_NATIVE_PATH: bogus } })
    const o = JSON.parse(r.stdout)
    t.is(o.async.code, 'ENATIVE_LOAD')
    t.true(o.async.message.includes(bogus))
    t.regex(o.async.message, /invalid ELF header|file too short/i)
  } finally {
    fs.rmSync(dirname(bogus), { recursive: true, force: true })
  }

  // A loadable module that is not this version's addon (no setErrorClass): refused, saying why.
  const older = join(fs.mkdtempSync(join(tmpdir(), 'md-bitmap-older-')), 'older.js')
  fs.writeFileSync(older, 'module.exports = { alignmentOffset: () => 0, check: async () => ({}) }')
  try {
    const o = JSON.parse(node(['-e', probe], { env: { MD_BITMAP_NATIVE_PATH: older } }).stdout)
    for (const k of ['sync', 'async'] as const) {
      t.true(o[k].inst, `${k}: an MdBitmapError`)
      t.is(o[k].code, 'ENATIVE_LOAD')
      t.regex(o[k].message, /older than this md-bitmap.*setErrorClass.*npm run build:native/)
    }
  } finally {
    fs.rmSync(dirname(older), { recursive: true, force: true })
  }

  // The override pointing at the real addon loads it.
  const real = join(ROOT, 'native', fs.readdirSync(join(ROOT, 'native')).find((f) => f.endsWith('.node'))!)
  const ok = node(['-e', probe], { env: { MD_BITMAP_NATIVE_PATH: real } })
  const o = JSON.parse(ok.stdout)
  t.is(o.sync, undefined, 'allocAligned works')
  t.true(o.async === 'resolved' || o.async.code !== 'ENATIVE_LOAD', JSON.stringify(o))
})

test('MdBitmapError from the native layer keeps its code (ENOENT on a missing file)', async (t) => {
  const e = await rejectsWith(t, PageStore.open(join(ROOT, 'no-such-file-' + randomBytes(4).toString('hex'))), 'ENOENT')
  t.regex(e.message, /no-such-file/)
})
