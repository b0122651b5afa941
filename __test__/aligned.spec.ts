/**
 * Aligned buffers (io/aligned.ts). isAligned answers from a per-buffer cache of where
 * the buffer's memory starts: every answer must be the addon's, asked directly
 * (fast-check), for views at any offset of buffers of any kind and size, each buffer
 * asked about many times (so most answers come from the cache), and for alignments
 * past the cache's. allocHugePageBuffers (public): aligned, zeroed, disjoint buffers on
 * memory the kernel backs with huge pages once touched.
 */
import test from 'ava'
import fc from 'fast-check'
import { allocHugePageBuffers as fromIndex, MdBitmapError } from '../src/index'
import { HUGE_PAGE, allocHugePageBuffers, isAligned } from '../src/io/aligned'
import { binding } from '../src/native/load'
import { hugeKbGained, hugePagesByMapping, hugePagesOn } from './helpers/huge-pages'

const MiB = 1 << 20

const kinds = {
  /** A small typed array: V8 may keep its bytes in its heap until they are looked at. */
  small: (n: number) => new Uint8Array(n),
  slow: (n: number) => new Uint8Array(Buffer.allocUnsafeSlow(n).buffer),
  /** A slice of Node's shared pool. */
  pooled: (n: number) => Buffer.allocUnsafe(n),
  shared: (n: number) => new Uint8Array(new SharedArrayBuffer(n)),
}

test('isAligned agrees with the addon for every view, buffer kind and alignment (fast-check)', (t) => {
  let asked = 0
  let aligned = 0
  fc.assert(
    fc.property(
      fc.constantFrom(...(Object.keys(kinds) as (keyof typeof kinds)[])),
      fc.integer({ min: 1, max: 70_000 }),
      fc.array(fc.tuple(fc.nat(), fc.nat(), fc.integer({ min: 0, max: 22 }), fc.boolean()), { minLength: 1, maxLength: 40 }),
      (kind, size, views) => {
        const whole = kinds[kind](size)
        for (const [at, len, log2, snap] of views) {
          const align = 2 ** log2
          // snap: a view that starts on the alignment (or past the end: then the last byte), else anywhere.
          const start = Math.min(whole.length, snap ? binding().alignmentOffset(whole, align) + (at % 4) * align : at % (whole.length + 1))
          const view = whole.subarray(start, start + (len % (whole.length - start + 1)))
          const want = binding().alignmentOffset(view, align) === 0
          if (isAligned(view, align) !== want) return false
          asked++
          if (want && align >= 512) aligned++
        }
        return true
      },
    ),
    { numRuns: 300 },
  )
  t.log(`${asked} views asked about, ${aligned} of them aligned to 512 bytes or more`)
  t.true(aligned > 0, 'some views were aligned: both answers were exercised')
})

test('isAligned refuses an alignment that is not a power of two, as the addon does', (t) => {
  const view = new Uint8Array(8192)
  const e = t.throws(() => isAligned(view, 3000))
  t.regex(String((e as Error).message), /power of two/)
})

test('allocHugePageBuffers: count buffers of size bytes, each aligned, zero-filled and disjoint, packed into whole 2 MiB-aligned pages (fast-check)', (t) => {
  t.is(fromIndex, allocHugePageBuffers, 'exported from the package')
  fc.assert(
    fc.property(fc.integer({ min: 1, max: 3 * MiB }), fc.integer({ min: 1, max: 4 }), fc.integer({ min: 9, max: 21 }), (size, count, log2) => {
      const align = 2 ** log2
      const bufs = allocHugePageBuffers(size, count, align)
      const stride = Math.ceil(size / align) * align
      const region = bufs[0].buffer
      const start = bufs[0].byteOffset
      const pages = Math.ceil((stride * count) / HUGE_PAGE)
      if (bufs.length !== count || !isAligned(bufs[0], HUGE_PAGE)) return false
      for (const [i, b] of bufs.entries()) {
        // One region, one after another at the stride, inside the whole pages.
        if (b.length !== size || b.buffer !== region || b.byteOffset !== start + i * stride) return false
        if (binding().alignmentOffset(b, align) !== 0) return false
        if (b.byteOffset + size > start + pages * HUGE_PAGE) return false
        if (b[0] !== 0 || b[size - 1] !== 0 || b[size >> 1] !== 0) return false
      }
      return true
    }),
    { numRuns: 60 },
  )
  // Disjoint and wholly zeroed, checked byte by byte on one set.
  const bufs = allocHugePageBuffers(MiB + 512, 3)
  t.true(bufs.every((b) => b.every((x) => x === 0)), 'zero-filled')
  bufs.forEach((b, i) => b.fill(i + 1))
  t.true(bufs.every((b, i) => b.every((x) => x === i + 1)), 'no two buffers overlap')
  t.is(bufs[1].byteOffset - bufs[0].byteOffset, MiB + 4096, 'the default alignment is 4096')
})

test('allocHugePageBuffers: the memory is backed by huge pages once touched', (t) => {
  t.true(hugePagesOn(), 'transparent huge pages are on here (madvise or always): the test needs them')
  const bufs = allocHugePageBuffers(MiB, 4)
  const before = hugePagesByMapping()
  for (const b of bufs) b.fill(7)
  const gained = hugeKbGained(before)
  t.true(gained >= 4096, `4 MiB written, huge pages +${gained} kB`)
})

test('allocHugePageBuffers refuses a bad count or alignment with EINVAL', (t) => {
  for (const [size, count, align, what] of [
    [MiB, 0, 4096, /count must be a positive integer/],
    [MiB, 1.5, 4096, /count must be a positive integer/],
    [MiB, 1, 3000, /power of two/],
    [MiB, 1, 4 * MiB, /at most 2097152/],
    [-1, 1, 4096, /size must be/],
  ] as const) {
    const e = t.throws(() => allocHugePageBuffers(size, count, align), { instanceOf: MdBitmapError })
    t.is(e?.code, 'EINVAL')
    t.regex(String(e?.message), what)
  }
})
