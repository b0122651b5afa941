/**
 * Every binding of the native addon, called once for real, with nothing but a temporary
 * file: the spec that `npm run test:platforms` runs on every Node version of the matrix
 * and on arm64 under qemu, so each shipped binary is loaded and each of its entry points
 * answers on each of them. If the addon gains a binding, the census test fails until it
 * is exercised here.
 */
import test from 'ava'
import { closeSync, ftruncateSync, mkdtempSync, openSync, readFileSync, rmSync, statSync, writeFileSync, writeSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { MdBitmapError } from '../src'
import { binding, platformTriple } from '../src/native/load'
import { hugePagesOn } from './helpers/huge-pages'

const EXERCISED = {
  functions: ['adviseHugePages', 'alignmentOffset', 'allocatedRanges', 'check', 'clearImmutable', 'extents', 'lockFile', 'openStore', 'punchHole', 'setErrorClass'],
  classes: {
    NativeFileLock: ['release'],
    NativeStore: ['alignment', 'alignmentSource', 'close', 'deferredCompletions', 'device', 'engine', 'engineReason', 'error', 'mode', 'pending', 'read', 'reaper', 'reaperReason', 'reason', 'size', 'spin', 'sync', 'waitIdle', 'write', 'writeThrough'],
  },
}

test('census: the addon exports exactly the bindings this spec exercises', (t) => {
  const b = binding() as unknown as Record<string, unknown>
  const classes = Object.keys(b).filter((k) => typeof b[k] === 'function' && /^[A-Z]/.test(k)).sort()
  const functions = Object.keys(b).filter((k) => !classes.includes(k)).sort()
  t.deepEqual(functions, EXERCISED.functions, 'functions of the addon (a new one must be exercised in native-binding.spec.ts)')
  t.deepEqual(classes, Object.keys(EXERCISED.classes).sort(), 'classes of the addon')
  for (const [name, members] of Object.entries(EXERCISED.classes)) {
    const proto = (b[name] as { prototype: object }).prototype
    t.deepEqual(Object.getOwnPropertyNames(proto).filter((n) => n !== 'constructor').sort(), members, `members of ${name}`)
  }
  t.log(`${platformTriple()} on Node ${process.version} (${process.arch})`)
})

// Serial: it swaps the class every error of this thread's addon is made with.
test.serial('setErrorClass: the addon throws and rejects with the registered class (MdBitmapError once loaded), code and errno set', async (t) => {
  const b = binding()
  const missing = join(tmpdir(), `md-bitmap-binding-missing-${process.pid}`)
  const loaded = await t.throwsAsync(b.check(missing), { instanceOf: MdBitmapError })
  t.is(loaded?.code, 'ENOENT')
  t.is((loaded as MdBitmapError).errno, 2)
  class Other extends Error {
    constructor(
      readonly code: string,
      message: string,
      readonly options?: { errno?: number },
    ) {
      super(message)
    }
  }
  b.setErrorClass(Other)
  try {
    const other = await t.throwsAsync(b.check(missing), { instanceOf: Other })
    t.is(other?.code, 'ENOENT')
    t.is((other as Other).options?.errno, 2)
    t.throws(() => b.alignmentOffset(new Uint8Array(8), 3), { instanceOf: Other, message: /power of two/ })
  } finally {
    b.setErrorClass(MdBitmapError as never)
  }
  t.true(await b.check(missing).catch((e: unknown) => e instanceof MdBitmapError))
})

test('every binding answers: alignmentOffset, adviseHugePages, check, extents, openStore and each NativeStore member, lockFile, NativeFileLock.release, clearImmutable', async (t) => {
  const b = binding()
  const dir = mkdtempSync(join(tmpdir(), 'md-bitmap-binding-'))
  try {
    // alignmentOffset: how far into a view its first 4096-aligned byte is.
    const backing = new Uint8Array(3 * 4096)
    const off = b.alignmentOffset(backing, 4096)
    t.true(off >= 0 && off < 4096)
    t.is(b.alignmentOffset(backing.subarray(off), 4096), 0)
    t.is(b.alignmentOffset(backing.subarray(off + 1), 4096), 4095)

    // adviseHugePages: the whole 2 MiB pages inside a view are advised and read as zero
    // after; a view holding none is left as it was.
    const region = new Uint8Array(6 << 20).fill(0x77)
    const advised = b.adviseHugePages(region)
    if (hugePagesOn()) {
      t.true(advised >= 2 << 20 && advised % (2 << 20) === 0, `advised ${advised} bytes`)
      const at = b.alignmentOffset(region, 2 << 20)
      t.true(region.subarray(at, at + advised).every((x) => x === 0), 'the advised pages read as zero')
      t.true(region.subarray(0, at).every((x) => x === 0x77), 'the bytes before them are kept')
    } else {
      t.is(advised, 0, 'THP is off: nothing advised')
    }
    const small = new Uint8Array(64 * 1024).fill(3)
    t.is(b.adviseHugePages(small), 0)
    t.true(small.every((x) => x === 3))

    const file = join(dir, 'store')
    writeFileSync(file, Buffer.alloc(4 * 4096, 0x5a))

    // check and extents: a fully written regular file on this machine's filesystem.
    const info = await b.check(file)
    t.is(info.fileSize, 4 * 4096)
    t.is(typeof info.fsType, 'string')
    t.true(info.fsType.length > 0)
    t.true(Array.isArray(info.problems))
    const map = await b.extents(file)
    t.is(map.fileSize, 4 * 4096)
    t.true(map.blockSize > 0)
    t.true(['fiemap', 'fibmap'].includes(map.source))
    t.true(map.extents.reduce((n, e) => n + e.length, 0) >= 4 * 4096, JSON.stringify(map.extents))
    await t.throwsAsync(b.check(join(dir, 'missing')), { message: /missing|No such file/i })

    // openStore and every member of the store.
    const s = await b.openStore(file, 'plain', false)
    t.true(['direct', 'buffered'].includes(s.mode))
    t.true(s.reason === null || typeof s.reason === 'string')
    t.is(s.size, 4 * 4096)
    t.true(s.alignment >= 512 && (s.alignment & (s.alignment - 1)) === 0)
    t.true(['statx', 'block-device', 'default'].includes(s.alignmentSource))
    t.is(s.device, null)
    t.true(['uring', 'aio', 'threads'].includes(s.engine), s.engine)
    t.true(s.engineReason === null || typeof s.engineReason === 'string')
    t.true(['loop', 'thread'].includes(s.reaper), s.reaper)
    t.true(s.reaperReason === null || typeof s.reaperReason === 'string')
    t.is(typeof s.deferredCompletions, 'boolean')
    t.is(s.pending(), 0)
    t.is(s.error(), null)
    const aligned = alignedPage(b.alignmentOffset)
    aligned.fill(0xc3)
    await s.write(aligned, 4096)
    t.true(await s.waitIdle())
    await s.sync()
    // Write-through: the sync after that single write turned it on (direct stores only).
    if (s.mode === 'direct') t.deepEqual(s.writeThrough, { writesThrough: 0, syncsSkipped: 0 })
    else t.is(s.writeThrough, null)
    await s.write(aligned, 4096)
    await s.sync()
    if (s.mode === 'direct') t.deepEqual(s.writeThrough, { writesThrough: 1, syncsSkipped: 1 })
    // The spin before the loop sleeps: on with the loop reaper (MD_BITMAP_IO_SPIN_US or
    // 200 µs), never run with one I/O at a time (it needs 8 in the kernel).
    const limitUs = s.reaper === 'loop' ? Number(process.env.MD_BITMAP_IO_SPIN_US || 200) : 0
    t.deepEqual(s.spin, { limitUs, hits: 0, misses: 0, skipped: 0, spunUs: 0 })
    const back = alignedPage(b.alignmentOffset)
    await s.read(back, 4096)
    t.deepEqual(Buffer.from(back), Buffer.from(aligned))
    await s.read(back, 0)
    t.is(back[0], 0x5a)
    await s.close()

    // lockFile, NativeFileLock.release and clearImmutable: one owner at a time.
    const lockPath = join(dir, 'lock')
    const held = b.lockFile(lockPath, true)
    if (!held) return t.fail('lockFile returned null for a lock nobody held')
    t.throws(() => b.lockFile(lockPath, true), { code: 'ELOCKED', message: new RegExp(`locked by process ${process.pid}`) } as object)
    t.throws(() => b.lockFile(join(dir, 'absent'), false), { code: 'ENOENT' } as object)
    held.release(true)
    held.release(false)
    const again = b.lockFile(lockPath, true)
    t.truthy(again, 'the lock is free again once released')
    again?.release(false)
    t.false(b.clearImmutable(file), 'a file that is not immutable is left as it is')
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
})

/** A 4096-byte view aligned to 4096, the way src/io/aligned.ts makes one. */
function alignedPage(alignmentOffset: (v: Uint8Array, a: number) => number): Uint8Array {
  const backing = new Uint8Array(2 * 4096)
  const off = alignmentOffset(backing, 4096)
  return backing.subarray(off, off + 4096)
}

test('allocatedRanges: the data ranges of a sparse file as SEEK_DATA/SEEK_HOLE see them, clipped, capped; a missing file is ENOENT', async (t) => {
  const b = binding()
  const dir = mkdtempSync(join(tmpdir(), 'md-bitmap-binding-'))
  try {
    const file = join(dir, 'sparse')
    const M = 2 ** 20
    const fd = openSync(file, 'w')
    ftruncateSync(fd, 16 * M)
    for (const at of [M, 5 * M, 9 * M]) writeSync(fd, Buffer.alloc(M, 0xab), 0, M, at)
    closeSync(fd)
    const all = await b.allocatedRanges(file, 0, 16 * M)
    if (all.ranges.length === 1 && all.ranges[0].length === 16 * M) {
      // A filesystem without SEEK_DATA says all of it is data; nothing more to check there.
      t.deepEqual(all, { ranges: [{ offset: 0, length: 16 * M }], end: 16 * M })
      return
    }
    t.deepEqual(all, { ranges: [{ offset: M, length: M }, { offset: 5 * M, length: M }, { offset: 9 * M, length: M }], end: 16 * M })
    t.deepEqual(await b.allocatedRanges(file, 1.5 * M, 4 * M), { ranges: [{ offset: 1.5 * M, length: 0.5 * M }, { offset: 5 * M, length: 0.5 * M }], end: 5.5 * M })
    t.deepEqual(await b.allocatedRanges(file, 0, 16 * M, 2), { ranges: [{ offset: M, length: M }, { offset: 5 * M, length: M }], end: 6 * M }, 'capped at two ranges')
    await t.throwsAsync(b.allocatedRanges(join(dir, 'missing'), 0, M), { code: 'ENOENT' })
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
})

test('punchHole: the range reads as zeroes, the size is kept; past the end is EOUT_OF_RANGE', async (t) => {
  const b = binding()
  const dir = mkdtempSync(join(tmpdir(), 'md-bitmap-binding-'))
  try {
    const file = join(dir, 'member')
    writeFileSync(file, Buffer.alloc(4 * 4096, 0x5a))
    try {
      await b.punchHole(file, 4096, 2 * 4096)
    } catch (e) {
      // A filesystem that cannot punch holes answers so (the member then writes zeroes).
      t.is((e as { code?: string }).code, 'EOPNOTSUPP')
      return
    }
    const bytes = readFileSync(file)
    t.is(statSync(file).size, 4 * 4096)
    t.true(bytes.subarray(0, 4096).every((x) => x === 0x5a))
    t.true(bytes.subarray(4096, 3 * 4096).every((x) => x === 0))
    t.true(bytes.subarray(3 * 4096).every((x) => x === 0x5a))
    await t.throwsAsync(b.punchHole(file, 3 * 4096, 2 * 4096), { code: 'EOUT_OF_RANGE' })
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
})

