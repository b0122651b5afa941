/**
 * Model-based tests of the per-chunk counters (src/counters.ts) against a small,
 * independent model written from DESIGN.md ("In-memory state and the algorithm").
 */
import test from 'ava'
import fc from 'fast-check'
import { COUNTER_MAX, Counters, NEEDED, RESYNC } from '../src/bitmap/counters'

const CHUNKS = 4

/** One chunk of the model: a count and two flags, kept apart (the real thing packs them). */
interface ChunkModel {
  count: number
  needed: boolean
  resync: boolean
  /** startWrites not yet ended: endWrite commands are only issued for these. */
  writers: number
}

class Model {
  readonly chunks: ChunkModel[] = Array.from({ length: CHUNKS }, () => ({ count: 0, needed: false, resync: false, writers: 0 }))

  value(c: number): number {
    const m = this.chunks[c]
    return m.count | (m.resync ? RESYNC : 0) | (m.needed ? NEEDED : 0)
  }

  startWrite(c: number): 'counted' | 'set-bit' | 'full' {
    const m = this.chunks[c]
    if (m.count === COUNTER_MAX) return 'full'
    let r: 'counted' | 'set-bit' = 'counted'
    if (m.count === 0) {
      r = 'set-bit'
      m.count = 2
    } else if (m.count === 1) {
      m.count = 2
    }
    m.count += 1
    m.writers++
    return r
  }

  endWrite(c: number, success: boolean, degraded: boolean): boolean {
    const m = this.chunks[c]
    const wasFull = m.count === COUNTER_MAX
    m.count -= 1
    m.writers--
    if (!success || degraded) m.needed = true
    return wasFull
  }

  /** Whether the daemon has anything to do with the chunk: idle (1 or 2), no flag. */
  idle(c: number): boolean {
    const m = this.chunks[c]
    return !m.needed && !m.resync && (m.count === 1 || m.count === 2)
  }

  daemonStep(c: number, mayClear: boolean): 'none' | 'decayed' | 'cleared' {
    const m = this.chunks[c]
    if (m.needed || m.resync) return 'none'
    if (m.count === 2) {
      m.count = 1
      return 'decayed'
    }
    if (m.count === 1 && mayClear) {
      m.count = 0
      return 'cleared'
    }
    return 'none'
  }

  startSync(c: number, degraded: boolean): boolean {
    const m = this.chunks[c]
    if (m.resync) return true
    if (!m.needed) return false
    if (!degraded) {
      m.needed = false
      m.resync = true
    }
    return true
  }

  endSync(c: number, aborted: boolean): void {
    const m = this.chunks[c]
    if (!m.resync) return
    m.resync = false
    if (aborted) m.needed = true
  }

  loadDirty(c: number): void {
    const m = this.chunks[c]
    m.count = 2
    m.needed = true
    m.resync = false
  }
}

type Cmd =
  | { op: 'startWrite'; c: number }
  | { op: 'endWrite'; c: number; success: boolean; degraded: boolean }
  | { op: 'daemonPass'; mayClear: boolean }
  | { op: 'daemonStep'; c: number; mayClear: boolean }
  | { op: 'startSync'; c: number; degraded: boolean }
  | { op: 'endSync'; c: number; aborted: boolean }
  | { op: 'loadDirty'; c: number }

const chunk = fc.integer({ min: 0, max: CHUNKS - 1 })
const cmd: fc.Arbitrary<Cmd> = fc.oneof(
  { weight: 4, arbitrary: fc.record({ op: fc.constant('startWrite' as const), c: chunk }) },
  {
    weight: 4,
    arbitrary: fc.record({
      op: fc.constant('endWrite' as const),
      c: chunk,
      success: fc.constantFrom(true, true, true, false),
      degraded: fc.boolean(),
    }),
  },
  { weight: 3, arbitrary: fc.record({ op: fc.constant('daemonPass' as const), mayClear: fc.boolean() }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('daemonStep' as const), c: chunk, mayClear: fc.boolean() }) },
  { weight: 2, arbitrary: fc.record({ op: fc.constant('startSync' as const), c: chunk, degraded: fc.boolean() }) },
  { weight: 2, arbitrary: fc.record({ op: fc.constant('endSync' as const), c: chunk, aborted: fc.boolean() }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('loadDirty' as const), c: chunk }) },
)

function hex(v: number): string {
  return '0x' + v.toString(16)
}

/** Runs `cmds` on both; returns a description of the first divergence, or null. */
function run(cmds: Cmd[]): string | null {
  const real = new Counters(CHUNKS)
  const model = new Model()
  for (const [i, k] of cmds.entries()) {
    const at = `step ${i} ${JSON.stringify(k)}`
    switch (k.op) {
      case 'startWrite': {
        const a = real.startWrite(k.c)
        const b = model.startWrite(k.c)
        if (a !== b) return `${at}: startWrite returned ${a}, model ${b}`
        break
      }
      case 'endWrite': {
        // Only a write that was started can end (what Bitmap guarantees its callers).
        if (model.chunks[k.c].writers === 0) continue
        const a = real.endWrite(k.c, k.success, k.degraded)
        const b = model.endWrite(k.c, k.success, k.degraded)
        if (a !== b) return `${at}: endWrite returned ${a}, model ${b}`
        break
      }
      case 'daemonPass': {
        // The daemon steps the candidates only: every idle chunk must be one, or it
        // would never be cleared.
        const cands = new Set(real.candidateChunks())
        for (let c = 0; c < CHUNKS; c++) {
          if (model.idle(c) && !cands.has(c)) return `${at}: chunk ${c} is idle (${hex(model.value(c))}) but not a candidate`
        }
        for (const c of real.candidateChunks()) {
          const a = real.daemonStep(c, k.mayClear)
          const b = model.daemonStep(c, k.mayClear)
          if (a !== b) return `${at}: daemonStep(${c}) returned ${a}, model ${b}`
        }
        break
      }
      case 'daemonStep': {
        const a = real.daemonStep(k.c, k.mayClear)
        const b = model.daemonStep(k.c, k.mayClear)
        if (a !== b) return `${at}: daemonStep returned ${a}, model ${b}`
        break
      }
      case 'startSync': {
        const a = real.startSync(k.c, k.degraded)
        const b = model.startSync(k.c, k.degraded)
        if (a !== b) return `${at}: startSync returned ${a}, model ${b}`
        break
      }
      case 'endSync':
        real.endSync(k.c, k.aborted)
        model.endSync(k.c, k.aborted)
        break
      case 'loadDirty':
        // Load happens on a fresh open: no write is in flight then.
        if (model.chunks[k.c].writers !== 0) continue
        real.loadDirty(k.c)
        model.loadDirty(k.c)
        break
    }
    for (let c = 0; c < CHUNKS; c++) {
      if (real.get(c) !== model.value(c)) return `${at}: chunk ${c} is ${hex(real.get(c))}, model says ${hex(model.value(c))}`
      if (real.count(c) !== model.chunks[c].count) return `${at}: count(${c}) is ${real.count(c)}, model ${model.chunks[c].count}`
    }
  }
  return null
}

test('Counters agree with the model over random command sequences', (t) => {
  let steps = 0
  fc.assert(
    fc.property(fc.array(cmd, { minLength: 1, maxLength: 80, size: 'max' }), (cmds) => {
      steps += cmds.length
      const why = run(cmds)
      if (why) throw new Error(why)
    }),
    { numRuns: 1000 },
  )
  t.log(`${steps} commands checked`)
  t.pass()
})

test('one write: 0 → set-bit → 3 → 2 → 1 → (not while clearing is off) → 0', (t) => {
  const real = new Counters(1)
  t.is(real.startWrite(0), 'set-bit')
  t.is(real.get(0), 3)
  real.endWrite(0, true, false)
  t.is(real.get(0), 2)
  t.deepEqual(real.candidateChunks(), [0])
  t.is(real.daemonStep(0, true), 'decayed')
  t.is(real.get(0), 1)
  t.is(real.daemonStep(0, false), 'none', 'a chunk at 1 is not cleared when clearing is not allowed')
  t.is(real.get(0), 1)
  t.is(real.daemonStep(0, true), 'cleared')
  t.is(real.get(0), 0)
  t.deepEqual(real.candidateChunks(), [])
})

test('idle chunks walk 2 → 1 → 0 through two daemon steps, a NEEDED one never decays', (t) => {
  const c = new Counters(2)
  t.is(c.startWrite(0), 'set-bit')
  t.is(c.startWrite(0), 'counted')
  t.is(c.get(0), 4)
  c.endWrite(0, true, false)
  t.is(c.get(0), 3)
  t.deepEqual(c.candidateChunks(), [])
  c.endWrite(0, false, false)
  t.is(c.get(0), 2 | NEEDED)
  for (let i = 0; i < 5; i++) t.is(c.daemonStep(0, true), 'none')
  t.is(c.get(0), 2 | NEEDED)
  // A degraded end marks NEEDED too.
  t.is(c.startWrite(1), 'set-bit')
  c.endWrite(1, true, true)
  t.is(c.get(1), 2 | NEEDED)
  // Sync: NEEDED → RESYNC → (completed) candidate.
  t.true(c.startSync(0, false))
  t.is(c.get(0), 2 | RESYNC)
  c.endSync(0, false)
  t.is(c.get(0), 2)
  t.deepEqual(c.candidateChunks(), [0])
  // Degraded startSync answers true but keeps NEEDED.
  t.true(c.startSync(1, true))
  t.is(c.get(1), 2 | NEEDED)
  // Aborted → NEEDED again.
  t.true(c.startSync(1, false))
  c.endSync(1, true)
  t.is(c.get(1), 2 | NEEDED)
})

test('COUNTER_MAX: startWrite returns full at 0x3fff and never wraps', (t) => {
  t.is(COUNTER_MAX, 0x3fff)
  for (const flags of [0, NEEDED]) {
    const c = new Counters(1)
    if (flags) c.loadDirty(0)
    let n = 0
    while (c.startWrite(0) !== 'full') {
      n++
      if (n > COUNTER_MAX + 10) break
    }
    // A chunk in use counts from 2: 0x3fff - 2 writers fit.
    t.is(n, COUNTER_MAX - 2)
    t.is(c.get(0), COUNTER_MAX | flags)
    t.is(c.count(0), COUNTER_MAX)
    for (let i = 0; i < 100; i++) t.is(c.startWrite(0), 'full')
    t.is(c.get(0), COUNTER_MAX | flags, 'full leaves the counter unchanged: no wrap into the flag bits')
    t.true(c.endWrite(0, true, false), 'the endWrite from COUNTER_MAX says waiters may retry')
    t.is(c.get(0), (COUNTER_MAX - 1) | flags)
    t.false(c.endWrite(0, true, false), 'an endWrite below COUNTER_MAX wakes nobody')
    t.is(c.startWrite(0), 'counted')
    t.is(c.startWrite(0), 'counted')
    t.is(c.startWrite(0), 'full')
    t.is(c.get(0), COUNTER_MAX | flags)
  }
})

test('endWrite without a write in flight throws EINVAL and changes nothing', (t) => {
  const c = new Counters(1)
  t.is(t.throws<Error & { code: string }>(() => c.endWrite(0, true, false))?.code as string, 'EINVAL')
  t.is(c.get(0), 0)
  // Idle at 2 (the write ended): a second endWrite is a misuse too.
  c.startWrite(0)
  c.endWrite(0, true, false)
  t.is(t.throws<Error & { code: string }>(() => c.endWrite(0, false, false))?.code as string, 'EINVAL')
  t.is(c.get(0), 2, 'no NEEDED, no decrement')
  c.loadDirty(0)
  t.is(t.throws<Error & { code: string }>(() => c.endWrite(0, true, false))?.code as string, 'EINVAL')
  t.is(c.get(0), 2 | NEEDED)
})
