/**
 * A resync with several chunks in flight (`ResyncOptions.inFlight`): chunks complete out
 * of order, and the checkpoint only moves past a prefix of completed chunks — with a
 * bitmap, a chunk still in flight keeps its bit on disk through daemon passes while the
 * chunks after it are cleared; without one, an aborted run's `resyncFrom` stops at the
 * first chunk not completed, and the next run resumes there. An abort with several
 * chunks in flight: no chunk starts after it, a chunk whose writes were out completes,
 * one whose read was out writes nothing and stays marked, and the rejection comes only
 * once nothing is in flight. And without a bitmap, a member re-added while another
 * member's recovery runs (which sets the checkpoint back to 0) gets its full copy.
 *
 * The members are real files; a {@link HeldChunks} wrapper (a DelegatingMember) holds
 * the reads or writes of chosen chunks until the test releases them, which orders the
 * completions however loaded the machine is.
 */
import test from 'ava'
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { DelegatingMember, FileMember, MdBitmapError, Mirror, type ResyncProgress, type ResyncReport } from '../src'
import { daemonPass } from '../src/bitmap/testing'
import { readDisk } from './helpers/mdadm'
import { IDLE, KiB, MiB, makeRig, onDisk, pattern, rigParent, sameBytes } from './helpers/mirror'
import { removeDir } from './helpers/tmp'

const parent = rigParent('md-mirror-resync-in-flight-')
test.after.always(() => removeDir(parent))

const CS = 64 * KiB
const NCHUNKS = MiB / CS
const chunks = (from: number, to: number) => Array.from({ length: to - from }, (_, i) => from + i)

type Kind = 'read' | 'write'

/** A gate some calls wait at; `arrived` resolves when the first one reaches it. */
class Gate {
  readonly opened: Promise<void>
  readonly arrived: Promise<void>
  open!: () => void
  arrive!: () => void
  constructor() {
    this.opened = new Promise((r) => (this.open = r))
    this.arrived = new Promise((r) => (this.arrive = r))
  }
}

/** A member whose reads or writes of chosen chunks wait until the test releases them. */
class HeldChunks extends DelegatingMember {
  private readonly gates = new Map<string, Gate>()
  /** Chunks of the reads issued, in issue order. */
  readonly reads: number[] = []
  /** Chunks of the writes completed, in completion order. */
  readonly writesDone: number[] = []
  /** Calls between issue and completion now. */
  inFlight = 0

  hold(kind: Kind, chunk: number): Gate {
    const g = new Gate()
    this.gates.set(`${kind} ${chunk}`, g)
    return g
  }

  /** Opens every gate (a failed test's teardown: close waits for the resync, which waits for them). */
  openAll(): void {
    for (const g of this.gates.values()) g.open()
  }

  override async read(target: Uint8Array, offset: number): Promise<void> {
    this.reads.push(Math.floor(offset / CS))
    await this.through('read', offset, () => super.read(target, offset))
  }

  override async write(data: Uint8Array, offset: number): Promise<void> {
    await this.through('write', offset, () => super.write(data, offset))
    this.writesDone.push(Math.floor(offset / CS))
  }

  private async through(kind: Kind, offset: number, io: () => Promise<void>): Promise<void> {
    this.inFlight++
    try {
      const g = this.gates.get(`${kind} ${Math.floor(offset / CS)}`)
      if (g) {
        g.arrive()
        await g.opened
      }
      await io()
    } finally {
      this.inFlight--
    }
  }
}

interface Rig {
  mirror: Mirror
  source: HeldChunks
  target: HeldChunks
  paths: string[]
  metaPath: string
  bitmapPath: string
  data: Uint8Array
  /** Opens every gate, then closes the mirror (for t.teardown). */
  teardown: () => Promise<void>
}

/** Two members that already differ (member 0 holds `data`, member 1 zeros), not assumed clean: every chunk needs copying. */
async function rig(name: string, withBitmap: boolean): Promise<Rig> {
  const dir = join(parent, name)
  mkdirSync(dir)
  const data = pattern(MiB, name.length)
  const paths = [join(dir, 'a.img'), join(dir, 'b.img')]
  writeFileSync(paths[0], data)
  writeFileSync(paths[1], Buffer.alloc(MiB))
  const held: HeldChunks[] = []
  const bitmapPath = join(dir, 'bitmap')
  const metaPath = join(dir, 'mirror.json')
  const mirror = await Mirror.create({
    bitmap: withBitmap ? bitmapPath : null,
    metadata: metaPath,
    members: paths.map((path) => ({ path })),
    size: MiB,
    chunkSize: CS,
    daemonSleep: IDLE,
    openMember: async (spec) => (held[spec.index] = new HeldChunks(await FileMember.open(spec.path))),
  })
  const teardown = () => {
    for (const h of held) h.openAll()
    return mirror.close().catch(() => {})
  }
  return { mirror, source: held[0], target: held[1], paths, metaPath, bitmapPath, data, teardown }
}

/** A progress listener and a promise that resolves once `chunksDone` reaches `n`. */
function progressTo(n: number): { seen: ResyncProgress[]; reached: Promise<void>; onProgress: (p: ResyncProgress) => void } {
  const seen: ResyncProgress[] = []
  let resolve!: () => void
  const reached = new Promise<void>((r) => (resolve = r))
  return { seen, reached, onProgress: (p) => (seen.push(p), p.chunksDone >= n && resolve()) }
}

test('chunks complete out of order; with a bitmap, a chunk in flight keeps its bit on disk through daemon passes while the chunks after it are cleared', async (t) => {
  const r = await rig('bitmap-order', true)
  const m = r.mirror
  t.teardown(r.teardown)
  t.deepEqual(m.bitmap!.neededChunks(), chunks(0, NCHUNKS))
  const gate = r.source.hold('read', 1)
  const p = progressTo(NCHUNKS - 1)
  const resync = m.resync({ inFlight: 4, progressIntervalMs: 0, onProgress: p.onProgress })
  await gate.arrived
  // Every other chunk completes while chunk 1's read is held.
  await p.reached
  t.is(p.seen.at(-1)!.chunksDone, NCHUNKS - 1)
  t.false(r.target.writesDone.includes(1), 'chunk 1 is not on the target yet')
  t.deepEqual([...r.target.writesDone].sort((a, b) => a - b), [0, ...chunks(2, NCHUNKS)], 'every other chunk completed before it: out of order')
  t.true(m.bitmap!.chunkNeedsResync(1 * CS), 'chunk 1 is still in resync')
  for (const c of [0, 2, 15]) t.false(m.bitmap!.chunkNeedsResync(c * CS), `chunk ${c} is done`)
  for (let i = 0; i < 3; i++) await daemonPass(m.bitmap!)
  t.deepEqual(readDisk(r.bitmapPath).dirtyList(NCHUNKS), [1], 'on disk only the bit of the chunk in flight is left set: the checkpoint did not pass it')
  sameBytes(t, onDisk(r.paths[1], CS, CS), Buffer.alloc(CS), 'chunk 1 still differs on the target, as its bit says')

  gate.open()
  const report = await resync
  t.deepEqual(report.chunks, chunks(0, NCHUNKS), 'the report lists every chunk, in ascending order')
  t.is(report.chunksCopied, NCHUNKS)
  t.is(r.target.writesDone.at(-1), 1, 'chunk 1 completed last')
  t.is(p.seen.at(-1)!.chunksDone, NCHUNKS)
  for (let i = 0; i < 3; i++) await daemonPass(m.bitmap!)
  t.deepEqual(readDisk(r.bitmapPath).dirtyList(NCHUNKS), [])
  await m.close()
  sameBytes(t, onDisk(r.paths[1], 0, MiB), Buffer.from(r.data), 'the target has every chunk')
})

test('without a bitmap, an aborted resync checkpoints resyncFrom at the first chunk not completed, not past it; the next run copies from there', async (t) => {
  const r = await rig('nobitmap-checkpoint', false)
  const m = r.mirror
  t.teardown(r.teardown)
  t.true(m.needsResync)
  const gate = r.source.hold('read', 2)
  const ac = new AbortController()
  const p = progressTo(NCHUNKS - 1)
  const resync = m.resync({ signal: ac.signal, inFlight: 4, progressIntervalMs: 0, onProgress: p.onProgress })
  const rejected = t.throwsAsync(resync, { instanceOf: MdBitmapError })
  await gate.arrived
  await p.reached
  // Chunks 3..15 completed past chunk 2, whose read is held: abort, then let the read finish.
  ac.abort()
  gate.open()
  t.is((await rejected)?.code, 'EABORTED')
  t.is(r.target.inFlight + r.source.inFlight, 0, 'the run rejected only once nothing was in flight')
  t.false(r.target.writesDone.includes(2), 'chunk 2 read after the abort: nothing written')
  t.is(JSON.parse(readFileSync(r.metaPath, 'utf8')).resyncFrom, 2 * CS, 'the checkpoint on disk is the first chunk not completed')
  sameBytes(t, onDisk(r.paths[1], 0, 2 * CS), Buffer.from(r.data.subarray(0, 2 * CS)), 'the chunks below it are on the target')
  sameBytes(t, onDisk(r.paths[1], 3 * CS, MiB - 3 * CS), Buffer.from(r.data.subarray(3 * CS)), 'so are the ones completed past it')
  sameBytes(t, onDisk(r.paths[1], 2 * CS, CS), Buffer.alloc(CS), 'chunk 2 is not')

  const writesBefore = r.target.writesDone.length
  const report = await m.resync()
  t.deepEqual(report.chunks, chunks(2, NCHUNKS), 'the next run resumes at the checkpoint (the chunks past it are copied again)')
  t.is(r.target.writesDone.length - writesBefore, NCHUNKS - 2)
  t.false(m.needsResync)
  await m.close()
  sameBytes(t, onDisk(r.paths[1], 0, MiB), Buffer.from(r.data))
})

test('an abort with several chunks in flight: none starts after it, a chunk whose writes were out completes, one whose read was out writes nothing and stays marked; a resync resumes', async (t) => {
  const r = await rig('bitmap-abort', true)
  const m = r.mirror
  t.teardown(r.teardown)
  // Chunks 0..3 go through; then 4 and 5 are held at their target writes, 6 and 7 at their source reads.
  const gates = [r.target.hold('write', 4), r.target.hold('write', 5), r.source.hold('read', 6), r.source.hold('read', 7)]
  const ac = new AbortController()
  const p = progressTo(NCHUNKS)
  const rejected = t.throwsAsync(m.resync({ signal: ac.signal, inFlight: 4, progressIntervalMs: 0, onProgress: p.onProgress }), { instanceOf: MdBitmapError })
  await Promise.all(gates.map((g) => g.arrived))
  t.is(r.source.inFlight + r.target.inFlight, 4, 'four chunks in flight at once')
  ac.abort()
  for (const g of gates) g.open()
  t.is((await rejected)?.code, 'EABORTED')
  t.is(r.target.inFlight + r.source.inFlight, 0, 'the run rejected only once nothing was in flight')
  t.deepEqual([...r.source.reads].sort((a, b) => a - b), chunks(0, 8), 'no chunk was started after the abort')
  t.deepEqual([...r.target.writesDone].sort((a, b) => a - b), chunks(0, 6), 'chunks 4 and 5 completed; 6 and 7 wrote nothing')
  t.is(p.seen.at(-1)!.chunksDone, 6)
  t.deepEqual(m.bitmap!.neededChunks(), chunks(6, NCHUNKS), 'what was not copied stays marked')
  for (let i = 0; i < 3; i++) await daemonPass(m.bitmap!)
  t.deepEqual(readDisk(r.bitmapPath).dirtyList(NCHUNKS), chunks(6, NCHUNKS), 'and on disk')
  sameBytes(t, onDisk(r.paths[1], 0, 6 * CS), Buffer.from(r.data.subarray(0, 6 * CS)), 'the completed chunks are on the target')
  sameBytes(t, onDisk(r.paths[1], 6 * CS, MiB - 6 * CS), Buffer.alloc(MiB - 6 * CS), 'the rest is not')

  const writesBefore = r.target.writesDone.length
  const report = await m.resync()
  t.deepEqual(report.chunks, chunks(6, NCHUNKS))
  t.is(r.target.writesDone.length - writesBefore, NCHUNKS - 6)
  await m.close()
  sameBytes(t, onDisk(r.paths[1], 0, MiB), Buffer.from(r.data))
})

test('inFlight must be a positive integer', async (t) => {
  const r = await rig('bad-in-flight', true)
  t.teardown(r.teardown)
  for (const bad of [0, -1, 1.5, Number.NaN]) {
    const e = await t.throwsAsync(r.mirror.resync({ inFlight: bad }), { instanceOf: MdBitmapError })
    t.is(e?.code, 'EINVAL', `inFlight ${bad}`)
  }
  t.deepEqual((await r.mirror.resync({ inFlight: 64 })).chunks, chunks(0, NCHUNKS), 'more in flight than chunks: every chunk once')
})

test('without a bitmap, a member re-added during another member\'s recovery gets a full copy: the running recovery neither advances nor clears the checkpoint set back to 0', async (t) => {
  const r = await makeRig(parent, [{}, {}, {}], { bitmap: null })
  const m = r.mirror
  t.teardown(() => m.close().catch(() => {}))
  await m.removeMember(2)
  await m.removeMember(1)
  for (let c = 0; c < NCHUNKS; c++) await m.write(pattern(CS, c + 1), c * CS)
  let second: Promise<ResyncReport> | undefined
  const first = m.reAdd(1, { progressIntervalMs: 0, onProgress: (p) => void (p.chunksDone === 2 && !second && (second = m.reAdd(2))) })
  t.deepEqual((await first).recovered, [1])
  t.truthy(second, 'member 2 was re-added during member 1\'s recovery')
  const report = await second!
  t.is(report.recovery, 'full')
  t.deepEqual(report.recovered, [2])
  t.is(report.chunksCopied, NCHUNKS, 'member 2 got every chunk')
  await m.close()
  for (const i of [1, 2]) sameBytes(t, onDisk(r.paths[i], 0, MiB), onDisk(r.paths[0], 0, MiB), `member ${i} holds the data`)
})
