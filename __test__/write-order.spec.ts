/**
 * The write order (mirror/write-order.ts) finds the writes in flight that overlap a
 * range through an index by 64 KiB granule, with the wide writes (over 16 granules)
 * kept apart. Every answer must be the one a scan of every write in flight gives
 * (fast-check, random begins and ends, ranges small, wide, empty and on granule
 * edges); and a write waits exactly when it overlaps a write in flight.
 */
import test from 'ava'
import fc from 'fast-check'
import { WriteOrder, type InFlight } from '../src/mirror/write-order'

const G = 64 * 1024

/** An offset near a granule edge or anywhere, and a length: empty, small, up to a few granules, or wide. */
const range = fc.tuple(
  fc.oneof(
    fc.tuple(fc.integer({ min: 0, max: 40 }), fc.integer({ min: -3, max: 3 })).map(([g, d]) => Math.max(0, g * G + d * 512)),
    fc.integer({ min: 0, max: 40 * G }),
  ),
  fc.oneof(
    fc.constant(0),
    fc.integer({ min: 1, max: 8192 }),
    fc.integer({ min: 1, max: 3 * G }),
    fc.integer({ min: 16 * G - 2, max: 24 * G }),
  ),
)

type Op = { kind: 'begin'; offset: number; length: number } | { kind: 'end'; pick: number } | { kind: 'ask'; offset: number; length: number }

const op: fc.Arbitrary<Op> = fc.oneof(
  range.map(([offset, length]) => ({ kind: 'begin' as const, offset, length })),
  fc.nat().map((pick) => ({ kind: 'end' as const, pick })),
  range.map(([offset, length]) => ({ kind: 'ask' as const, offset, length })),
)

function overlaps(w: { start: number; end: number }, offset: number, length: number): boolean {
  return w.start < offset + length && offset < w.end
}

test('the overlapping writes found through the granule index are exactly those a full scan finds (fast-check)', (t) => {
  let asked = 0
  let found = 0
  let waited = 0
  fc.assert(
    fc.property(fc.array(op, { minLength: 1, maxLength: 120, size: 'max' }), (ops) => {
      const order = new WriteOrder()
      const live: InFlight[] = []
      const check = (offset: number, length: number) => {
        const want = new Set(live.filter((w) => overlaps(w, offset, length)).map((w) => w.done))
        const got = order.overlapping(offset, length)
        asked++
        found += got.length
        // Each once, and no other.
        if (got.length !== want.size || new Set(got).size !== got.length || !got.every((p) => want.has(p as Promise<void>))) {
          throw new Error(`overlapping(${offset}, ${length}): ${got.length} found, ${want.size} in flight overlap`)
        }
      }
      for (const o of ops) {
        if (o.kind === 'begin') {
          const mustWait = live.some((w) => overlaps(w, o.offset, o.length))
          let issuedNow = false
          const entry = order.begin(o.offset, o.length, () => {
            issuedNow = true
            return new Promise<void>(() => {})
          })
          if (issuedNow === mustWait) throw new Error(`begin(${o.offset}, ${o.length}) issued ${issuedNow ? 'now' : 'later'}; overlaps in flight: ${mustWait}`)
          if (mustWait) waited++
          live.push(entry)
          check(o.offset, o.length)
        } else if (o.kind === 'end') {
          if (live.length === 0) continue
          const [entry] = live.splice(o.pick % live.length, 1)
          order.end(entry)
          check(entry.start, entry.end - entry.start)
        } else check(o.offset, o.length)
        if (order.size !== live.length) throw new Error(`size ${order.size}, ${live.length} in flight`)
      }
    }),
    { numRuns: 300 },
  )
  // The runs reached the cases that matter: answers with writes in them, and writes that waited.
  t.true(found > asked / 4, `${found} writes found over ${asked} questions`)
  t.true(waited > 20, `${waited} writes waited`)
  t.log(`${asked} questions, ${found} writes found, ${waited} writes waited`)
})

test('a write issued over overlapping ones in flight starts only after they settled, whatever their outcome', async (t) => {
  const order = new WriteOrder()
  const log: string[] = []
  let finishFirst!: () => void
  // Across the edge of granules 0 and 1.
  const first = order.run(G - 4096, 2 * 4096, () => new Promise<void>((_, reject) => (finishFirst = () => reject(new Error('EIO')))))
  first.catch(() => {})
  // Overlaps the first only in granule 1; one far from both; then a wide write over all of them.
  const second = order.run(G, 4096, async () => void log.push('second'))
  const beside = order.run(3 * G, 4096, () => new Promise<void>((resolve) => setTimeout(() => (log.push('beside'), resolve()), 20)))
  const wide = order.run(0, 32 * G, async () => void log.push('wide'))
  await beside
  t.deepEqual(log, ['beside'], 'the far write went at once; the second and the wide one wait for the first')
  finishFirst()
  await Promise.all([second, wide])
  t.deepEqual(log, ['beside', 'second', 'wide'])
  await order.idle()
  t.is(order.size, 0)
})
