/**
 * isAligned (io/aligned.ts) answers from a per-buffer cache of where the buffer's
 * memory starts: every answer must be the addon's, asked directly (fast-check), for
 * views at any offset of buffers of any kind and size, each buffer asked about many
 * times (so most answers come from the cache), and for alignments past the cache's.
 */
import test from 'ava'
import fc from 'fast-check'
import { isAligned } from '../src/io/aligned'
import { binding } from '../src/native/load'

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
