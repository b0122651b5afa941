/**
 * Page store I/O benchmark (`npm run bench:io`).
 *
 * 4 KiB page writes, in three patterns (`--syncs`):
 * - `fdatasync`: made durable batch by batch: a "batch" is N writes issued at once
 *   (N = 1 or 32, the depth), all awaited, then one fdatasync;
 * - `none`: no fdatasync; N writes kept in flight at all times (each completion issues
 *   the next write), as fio's `--iodepth=N` does;
 * - `dsync`: as `none`, on a descriptor opened O_DSYNC, so each write is durable when it
 *   completes (the store's `dsync` option, which the bitmap's page store uses; fio's
 *   `--sync=dsync`). Durable write by write, as `fdatasync` at depth 1, in one operation.
 * Measured, on the same preallocated, fully written file and in the same run:
 *
 * - `native uring`, `native aio`, `native threads`: md-bitmap's PageStore (O_DIRECT
 *                      where the filesystem allows it), each in a Node process of its
 *                      own with MD_BITMAP_IO_ENGINE forcing that I/O engine
 * - `fio`:             fio running the same pattern (see {@link fioArgs} for the job)
 * - `fs.promises`:     Node's FileHandle.write + datasync, buffered (page cache)
 * - `node O_DIRECT`:   the same, the file opened with fs.constants.O_DIRECT and the
 *                      buffers from allocAligned()
 *
 * Options:
 *   --quick            about 15 s in all (default: about 100 s)
 *   --dir DIR          where the test file goes (default: a temp dir under /var/tmp)
 *   --duration S       seconds per configuration, split over the rounds
 *   --rounds R         the configurations are run R times, in rotated order, and summed,
 *                      so that a burst of load from something else hits all alike
 *   --size MIB         test file size (default 64)
 *   --pattern P        rand (default) or seq
 *   --depths A,B       default 1,32
 *   --syncs A,B        fdatasync,none,dsync (default fdatasync,none)
 *   --engines A,B      uring,aio,threads (default all three); `ENGINE@SUBMIT` runs that
 *                      engine with MD_BITMAP_IO_SUBMIT=SUBMIT (tick, write or a batch
 *                      size), e.g. --engines uring@tick,uring@8,uring@write; a suffix
 *                      `:no-write-through` runs it with MD_BITMAP_WRITE_THROUGH=0 (every
 *                      sync an fdatasync; see crates/md-bitmap-io/src/write_through.rs),
 *                      `:no-spin` with MD_BITMAP_IO_SPIN_US=0 (the loop sleeps at once;
 *                      see crates/md-bitmap-io/src/spin.rs)
 *   --no-node          skip the fs.promises and node O_DIRECT rows
 *   --no-fio           skip fio
 *   --no-apart         skip the depth-1 write + fdatasync cycle taken apart (sync-cycle.ts:
 *                      fio libaio and io_uring, the engine alone with its fdatasync through
 *                      io_uring or by system call; run after the main rounds, in rotation,
 *                      when the fdatasync pattern runs at depth 1 and fio is there)
 *   --out FILE         default bench/out/io.json
 *
 * Reported per configuration: writes/s, fdatasync latencies, and CPU per write counted
 * two ways: the program's own (fio's `usr_cpu + sys_cpu`, the Node process's
 * `cpuUsage()`) and machine-wide (every CPU's busy time from `/proc/stat` over the run ÷
 * its writes: work done for the writes outside the program, in interrupt context or on
 * kernel threads, counts too; the engines differ in where that work runs). Each native
 * engine against fio: over all rounds, and per round (median and range of the rounds'
 * ratios, each round's pair run next to each other, so a host whose pace drifts between
 * rounds moves both sides of a pair alike).
 *
 * The Node rows run on libuv's thread pool (UV_THREADPOOL_SIZE, default 4), so at depth
 * 32 at most that many of their writes are really in flight; the value is recorded.
 *
 * A native child still running 60 s past its run (I/O that never completed, a close
 * that never ended) writes its state to stderr and exits: its phase, writes in flight,
 * every thread's kernel wait, and the fdinfo of its eventfds and io_uring ring. One
 * that cannot (its JavaScript thread busy in native code runs no timer) is described
 * from outside by the parent 30 s later (__test__/helpers/proc-report.ts) and killed.
 * Either way the benchmark fails with the report rather than waiting.
 */
import { execFileSync } from 'node:child_process'
import { randomFillSync } from 'node:crypto'
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import { describeProcess, runWithDeadline } from '../__test__/helpers/proc-report'
import { PageStore, allocAligned, check } from '../src/index'
import { Prng, execFileP, fmt, loadChange, machine, machineBusySeconds, parseOptions, percentile, readLoad, spread, table } from './common'
import { buildExample } from './cargo-example'
import { CYCLE_PARTS, runCyclePart, type CyclePart, type CycleSample } from './sync-cycle'

const PAGE = 4096

// ---------------------------------------------------------------------------------------
// Options

interface Options {
  quick: boolean
  dir: string | null
  durationS: number
  rounds: number
  sizeMiB: number
  pattern: 'rand' | 'seq'
  depths: number[]
  syncs: SyncMode[]
  engines: Engine[]
  node: boolean
  fio: boolean
  /** Take the depth-1 fdatasync cycle apart (sync-cycle.ts), when that pattern runs. */
  apart: boolean
  out: string
}

/** `fdatasync`: batches of N writes, each followed by one fdatasync; `none`: N writes always in flight; `dsync`: the same, O_DSYNC. */
type SyncMode = 'fdatasync' | 'none' | 'dsync'
/** An engine, optionally with the submission policy it runs under and without write-through or the spin: `uring`, `uring@tick`, `uring:no-write-through`, `uring:no-spin`. */
type Engine = string

function parseArgs(argv: string[]): Options {
  const a = parseOptions(
    argv,
    { quick: 'flag', dir: 'value', duration: 'value', rounds: 'value', size: 'value', pattern: 'value', depths: 'value', syncs: 'value', engines: 'value', 'no-node': 'flag', 'no-fio': 'flag', 'no-apart': 'flag', out: 'value' },
    'usage: npm run bench:io -- [--quick] [--dir DIR] [--duration S] [--rounds R] [--size MIB] [--pattern rand|seq] [--depths 1,32] [--syncs fdatasync,none,dsync] [--engines uring,aio,threads] [--no-node] [--no-fio] [--no-apart] [--out FILE]',
  )
  const quick = a.flag('quick')
  const pattern = a.value('pattern') ?? 'rand'
  if (pattern !== 'rand' && pattern !== 'seq') throw new Error(`--pattern must be rand or seq, got ${pattern}`)
  const o: Options = {
    quick,
    dir: a.value('dir') === undefined ? null : path.resolve(a.value('dir')!),
    durationS: a.number('duration', quick ? 1.25 : 10),
    rounds: a.number('rounds', quick ? 1 : 2),
    sizeMiB: a.number('size', 64),
    pattern,
    depths: (a.value('depths') ?? '1,32').split(',').map(Number),
    syncs: (a.value('syncs') ?? 'fdatasync,none').split(',') as SyncMode[],
    engines: (a.value('engines') ?? 'uring,aio,threads').split(',') as Engine[],
    node: !a.flag('no-node'),
    fio: !a.flag('no-fio'),
    apart: !a.flag('no-apart'),
    out: path.resolve(a.value('out') ?? path.join(__dirname, 'out', 'io.json')),
  }
  if (!(o.durationS > 0) || !Number.isInteger(o.rounds) || o.rounds < 1) throw new Error('bad --duration or --rounds')
  if (!Number.isInteger(o.sizeMiB) || o.sizeMiB < 1) throw new Error('bad --size')
  if (!o.depths.every((d) => Number.isInteger(d) && d >= 1 && d <= 1024)) throw new Error('bad --depths')
  if (!o.syncs.every((m) => m === 'fdatasync' || m === 'none' || m === 'dsync')) throw new Error('bad --syncs: fdatasync, none or dsync')
  if (!o.engines.every((e) => /^(uring|aio|threads)(@(tick|write|[1-9][0-9]*))?(:no-write-through|:no-spin)?$/.test(e))) {
    throw new Error('bad --engines: uring|aio|threads, each optionally @tick|@write|@N, then optionally :no-write-through or :no-spin')
  }
  return o
}

// ---------------------------------------------------------------------------------------
// Measurements

type Impl = 'fio' | `native ${Engine}` | 'fs.promises' | 'node O_DIRECT'
const NODE_IMPLS: Impl[] = ['fs.promises', 'node O_DIRECT']
const nativeEngine = (impl: Impl): Engine | null => (impl.startsWith('native ') ? (impl.slice(7) as Engine) : null)

/** One run of one configuration. */
interface Sample {
  writes: number
  batches: number
  /** Wall time over which writes and batches were counted. */
  seconds: number
  /** CPU time of the process doing the I/O (fio's own, or this Node process). */
  cpuSeconds: number
  /** CPU time of the whole machine over the run ({@link machineBusySeconds}). */
  machineCpuSeconds: number
  /** fdatasync latencies, µs (ours: every one; fio: mean and percentiles of its own). */
  syncUs: number[] | { n: number; mean: number; p50: number; p99: number }
  /** Batch latencies (writes issued to fdatasync returned), µs; not available from fio. */
  batchUs?: number[]
  /** fio's per-write completion latency, µs. */
  fioWriteClat?: { mean: number; p50: number; p99: number }
  note?: string
}

interface Result {
  impl: Impl
  sync: SyncMode
  depth: number
  pattern: 'rand' | 'seq'
  detail: string
  skipped?: string
  samples: Sample[]
  iops: number
  batchesPerSec: number
  meanBatchUs: number
  /** meanBatchUs − syncMeanUs: the N writes, from issue to the last completion seen. */
  writePhaseUs: number
  syncMeanUs: number
  syncP50Us: number
  syncP99Us: number
  batchP99Us: number | null
  cpuUsPerWrite: number
  /** The whole machine's CPU per write ({@link Sample.machineCpuSeconds}). */
  machineCpuUsPerWrite: number
  roundIops: number[]
}

function summarize(impl: Impl, sync: SyncMode, depth: number, pattern: 'rand' | 'seq', detail: string, samples: Sample[]): Result {
  const writes = samples.reduce((s, x) => s + x.writes, 0)
  const batches = samples.reduce((s, x) => s + x.batches, 0)
  const seconds = samples.reduce((s, x) => s + x.seconds, 0)
  const cpu = samples.reduce((s, x) => s + x.cpuSeconds, 0)
  const machineCpu = samples.reduce((s, x) => s + x.machineCpuSeconds, 0)
  let syncMean: number, syncP50: number, syncP99: number
  let batchP99: number | null = null
  if (samples.every((s) => Array.isArray(s.syncUs))) {
    const all = samples.flatMap((s) => s.syncUs as number[])
    syncMean = all.length ? all.reduce((s, x) => s + x, 0) / all.length : NaN
    syncP50 = percentile(all, 50)
    syncP99 = percentile(all, 99)
    const b = samples.flatMap((s) => s.batchUs ?? [])
    batchP99 = b.length ? percentile(b, 99) : null
  } else {
    // fio reports percentiles per run; across rounds they are averaged weighted by count
    // (an approximation of the pooled percentile, close when the rounds agree).
    const fs = samples.map((s) => s.syncUs as { n: number; mean: number; p50: number; p99: number })
    const n = fs.reduce((s, x) => s + x.n, 0)
    syncMean = fs.reduce((s, x) => s + x.mean * x.n, 0) / n
    syncP50 = fs.reduce((s, x) => s + x.p50 * x.n, 0) / n
    syncP99 = fs.reduce((s, x) => s + x.p99 * x.n, 0) / n
  }
  return {
    impl,
    sync,
    depth,
    pattern,
    detail,
    samples,
    iops: writes / seconds,
    batchesPerSec: batches / seconds,
    meanBatchUs: (seconds * 1e6) / batches,
    writePhaseUs: (seconds * 1e6) / batches - syncMean,
    syncMeanUs: syncMean,
    syncP50Us: syncP50,
    syncP99Us: syncP99,
    batchP99Us: batchP99,
    cpuUsPerWrite: (cpu * 1e6) / writes,
    machineCpuUsPerWrite: (machineCpu * 1e6) / writes,
    roundIops: samples.map((s) => s.writes / s.seconds),
  }
}

// ---------------------------------------------------------------------------------------
// Offsets: the same generator for every Node-side implementation

class Offsets {
  private readonly prng: Prng
  private cursor = 0
  constructor(private readonly pages: number, private readonly pattern: 'rand' | 'seq', seed: number) {
    this.prng = new Prng(seed)
  }
  /** `n` page offsets for one batch: distinct within the batch. */
  batch(n: number): number[] {
    const out: number[] = []
    if (this.pattern === 'seq') {
      for (let i = 0; i < n; i++) {
        out.push(this.cursor * PAGE)
        this.cursor = (this.cursor + 1) % this.pages
      }
      return out
    }
    while (out.length < n) {
      const off = (this.prng.next() % this.pages) * PAGE
      if (n <= this.pages && out.includes(off)) continue
      out.push(off)
    }
    return out
  }
}

// ---------------------------------------------------------------------------------------
// The Node-side loop, shared by native and fs.promises

interface Target {
  write(buf: Uint8Array, offset: number): Promise<unknown>
  sync(): Promise<unknown>
}

async function runLoop(t: Target, bufs: Uint8Array[], depth: number, offsets: Offsets, seconds: number): Promise<Sample> {
  let stamp = 0
  const stampBufs = (): void => {
    // Every write carries new bytes, as real page updates would.
    stamp++
    for (const b of bufs) {
      b[0] = stamp & 0xff
      b[1] = (stamp >>> 8) & 0xff
      b[2] = (stamp >>> 16) & 0xff
    }
  }
  // Warm-up, not counted: starts threads, faults in buffers.
  for (let i = 0; i < 3; i++) {
    stampBufs()
    const offs = offsets.batch(depth)
    await Promise.all(offs.map((o, j) => t.write(bufs[j], o)))
    await t.sync()
  }
  const syncUs: number[] = []
  const batchUs: number[] = []
  let writes = 0
  const cpu0 = process.cpuUsage()
  const machine0 = machineBusySeconds()
  const t0 = performance.now()
  const end = t0 + seconds * 1000
  let now = t0
  while (now < end) {
    stampBufs()
    const offs = offsets.batch(depth)
    const b0 = performance.now()
    await Promise.all(offs.map((o, j) => t.write(bufs[j], o)))
    const b1 = performance.now()
    await t.sync()
    now = performance.now()
    writes += depth
    syncUs.push((now - b1) * 1000)
    batchUs.push((now - b0) * 1000)
  }
  const cpu = process.cpuUsage(cpu0)
  return {
    writes,
    batches: batchUs.length,
    seconds: (now - t0) / 1000,
    cpuSeconds: (cpu.user + cpu.system) / 1e6,
    machineCpuSeconds: machineBusySeconds() - machine0,
    syncUs,
    batchUs,
  }
}

function randomBufs(depth: number, aligned: boolean): Uint8Array[] {
  return Array.from({ length: depth }, () => {
    const b = aligned ? allocAligned(PAGE, PAGE) : new Uint8Array(PAGE)
    randomFillSync(b)
    return b
  })
}

/** `depth` writes always in flight, no fdatasync: each completion issues the next write. */
async function runSteady(t: Target, bufs: Uint8Array[], depth: number, offsets: Offsets, seconds: number): Promise<Sample> {
  for (let i = 0; i < 3; i++) await Promise.all(offsets.batch(depth).map((o, j) => t.write(bufs[j], o)))
  let writes = 0
  const cpu0 = process.cpuUsage()
  const machine0 = machineBusySeconds()
  const t0 = performance.now()
  const end = t0 + seconds * 1000
  const lane = async (j: number): Promise<void> => {
    while (performance.now() < end) {
      await t.write(bufs[j], offsets.batch(1)[0])
      writes++
    }
  }
  await Promise.all(Array.from({ length: depth }, (_, j) => lane(j)))
  const now = performance.now()
  const cpu = process.cpuUsage(cpu0)
  const machineCpuSeconds = machineBusySeconds() - machine0
  return { writes, batches: writes, seconds: (now - t0) / 1000, cpuSeconds: (cpu.user + cpu.system) / 1e6, machineCpuSeconds, syncUs: [] }
}

const runPattern = (sync: SyncMode): typeof runLoop => (sync === 'fdatasync' ? runLoop : runSteady)

/** What the parent asks a `--child` process to run: one native configuration. */
interface ChildJob {
  file: string
  sync: SyncMode
  depth: number
  pages: number
  pattern: 'rand' | 'seq'
  seed: number
  seconds: number
  /** Where the child writes its `{ sample, detail }`. */
  result: string
}

/**
 * One native configuration in a Node process of its own: the I/O engine is chosen per
 * JavaScript thread at the first open, so each engine needs a process.
 */
async function runNative(engine: Engine, job: ChildJob): Promise<{ sample: Sample; detail: string }> {
  const [policy, variant] = engine.split(':')
  const [kind, submit] = policy.split('@')
  const env = {
    ...process.env,
    MD_BITMAP_IO_ENGINE: kind,
    ...(submit ? { MD_BITMAP_IO_SUBMIT: submit } : {}),
    ...(variant === 'no-write-through' ? { MD_BITMAP_WRITE_THROUGH: '0' } : {}),
    ...(variant === 'no-spin' ? { MD_BITMAP_IO_SPIN_US: '0' } : {}),
  }
  // The child's own watchdog reports first. One that cannot even run it (its thread
  // busy in native code: no timer runs) is described from outside, then killed.
  const o = await runWithDeadline(['--import', 'tsx', __filename, '--child', JSON.stringify(job)], env, (job.seconds + CHILD_GRACE_S + 30) * 1000)
  if (o.code !== 0) {
    const why = o.stuck ? ` (no answer, not even from its watchdog; killed)\n${o.stuck}` : ` (exit ${o.code ?? o.signal})`
    throw new Error(`native ${engine} child failed${why}\n${o.stderr}`)
  }
  const result = JSON.parse(fs.readFileSync(job.result, 'utf8'))
  fs.rmSync(job.result)
  return result
}

/**
 * Seconds past its run after which a child reports itself stuck (I/O that never
 * completed, or a close that never ended) and exits, rather than leaving the
 * benchmark waiting with nothing said.
 */
const CHILD_GRACE_S = 60

/** A stuck child's state, written synchronously: its phase, writes in flight, each thread, and the engine's descriptors. */
function reportStuck(phase: string, store: PageStore | undefined, seconds: number): void {
  const head = `child stuck ${phase}, ${CHILD_GRACE_S} s past its ${seconds} s run; writes in flight: ${store?.pending ?? 'no store yet'}`
  fs.writeSync(2, `${head}\n${describeProcess('self')}\n`)
}

async function childMain(job: ChildJob): Promise<void> {
  // What the watchdog reports: the phase, and the store once it is open.
  const state: { phase: string; store?: PageStore } = { phase: 'opening the store' }
  const watchdog = setTimeout(() => {
    reportStuck(state.phase, state.store, job.seconds)
    process.exit(70)
  }, (job.seconds + CHILD_GRACE_S) * 1000)
  watchdog.unref()
  const opened = (state.store = await PageStore.open(job.file, { dsync: job.sync === 'dsync' }))
  state.phase = 'writing'
  const threads = process.env.MD_BITMAP_IO_THREADS ?? '4 (default)'
  const submit = process.env.MD_BITMAP_IO_SUBMIT ?? '4 (default)'
  const detail = `PageStore mode=${opened.mode}${opened.reason ? ` (${opened.reason})` : ''}${job.sync === 'dsync' ? ', dsync' : ''}, engine=${opened.engine}, alignment=${opened.alignment} (${opened.alignmentSource}), MD_BITMAP_IO_THREADS=${threads}, MD_BITMAP_IO_SUBMIT=${submit}`
  try {
    const bufs = randomBufs(job.depth, true)
    const offsets = new Offsets(job.pages, job.pattern, job.seed)
    const sample = await runPattern(job.sync)({ write: (b, o) => opened.write(b, o), sync: () => opened.sync() }, bufs, job.depth, offsets, job.seconds)
    const wt = opened.writeThrough
    const through = wt ? `write-through: ${wt.writesThrough} writes O_DSYNC, ${wt.syncsSkipped} syncs without fdatasync` : 'no write-through'
    const sp = opened.spin
    const spin = sp.limitUs === 0 ? 'no spin' : `spin ≤ ${sp.limitUs} µs: ${sp.hits} hits, ${sp.misses} misses, ${sp.skipped} skipped, ${Math.round(sp.spunUs / 1000)} ms`
    fs.writeFileSync(job.result, JSON.stringify({ sample, detail: `${detail}, ${through}, ${spin}` }))
  } finally {
    state.phase = 'closing the store'
    await opened.close()
    clearTimeout(watchdog)
  }
}

async function runNode(file: string, sync: SyncMode, depth: number, offsets: Offsets, seconds: number, direct: boolean): Promise<{ sample: Sample; detail: string }> {
  const flags = fs.constants.O_RDWR | (direct ? fs.constants.O_DIRECT : 0) | (sync === 'dsync' ? fs.constants.O_DSYNC : 0)
  const fh = await fs.promises.open(file, flags)
  try {
    const bufs = randomBufs(depth, direct)
    const sample = await runPattern(sync)(
      { write: (b, o) => fh.write(b, 0, b.length, o), sync: () => fh.datasync() },
      bufs,
      depth,
      offsets,
      seconds,
    )
    const pool = process.env.UV_THREADPOOL_SIZE ?? '4 (default)'
    return {
      sample,
      detail: `FileHandle.write + datasync, ${direct ? 'O_DIRECT, allocAligned buffers' : 'buffered'}${sync === 'dsync' ? ', O_DSYNC' : ''}, UV_THREADPOOL_SIZE=${pool}`,
    }
  } finally {
    await fh.close()
  }
}

/**
 * Issue 11's goals for the page store, this run, for the first engine asked for: each
 * ratio over all rounds and per round (median, range).
 */
function printGoals(ratios: Record<string, Record<string, number | number[] | null>>, opt: { engines: string[]; syncs: SyncMode[]; depths: number[] }): void {
  const key = `native ${opt.engines[0]}/fio`
  const rows: string[][] = [['measure', 'all rounds', 'per round', 'goal']]
  const row = (what: string, sync: SyncMode, depth: number, cpu: boolean, goal: string): void => {
    const d = ratios[`${sync}@${depth}`]
    const all = d?.[cpu ? `${key} cpu` : key]
    const rounds = d?.[cpu ? `${key} cpu rounds` : `${key} rounds`]
    if (typeof all === 'number' && Array.isArray(rounds)) rows.push([what, all.toFixed(2), spread(rounds), goal])
  }
  for (const sync of ['fdatasync', 'none'] as SyncMode[]) {
    if (!opt.syncs.includes(sync)) continue
    const how = sync === 'none' ? 'no fdatasync' : 'fdatasync after each batch'
    for (const depth of [32, 1]) if (opt.depths.includes(depth)) row(`page store ÷ fio, depth ${depth}, ${how}`, sync, depth, false, depth === 32 ? '≥ 0.95' : '≥ 0.8')
    if (opt.depths.includes(32)) row(`CPU per write ÷ fio's, depth 32, ${how}`, sync, 32, true, '≤ 2')
  }
  if (rows.length === 1) return
  console.log()
  console.log(`issue 11 goals, this run (${key}):`)
  console.log(table(rows, 1, true))
}

// ---------------------------------------------------------------------------------------
// Round trips without I/O: what a promise-per-operation costs before the disk is touched

interface RoundTrip {
  what: string
  depth: number
  /** Wall time per round trip when `depth` are issued together and all awaited. */
  usPerOp: number
  cpuUsPerOp: number
}

async function measureRoundTrip(what: string, op: () => Promise<unknown>, depth: number, seconds: number): Promise<RoundTrip> {
  for (let i = 0; i < 20; i++) await Promise.all(Array.from({ length: depth }, op))
  let ops = 0
  const cpu0 = process.cpuUsage()
  const t0 = performance.now()
  const end = t0 + seconds * 1000
  let now = t0
  while (now < end) {
    const ps: Promise<unknown>[] = []
    for (let i = 0; i < depth; i++) ps.push(op())
    await Promise.all(ps)
    ops += depth
    now = performance.now()
  }
  const cpu = process.cpuUsage(cpu0)
  return { what, depth, usPerOp: ((now - t0) * 1000) / ops, cpuUsPerOp: (cpu.user + cpu.system) / ops }
}

/**
 * The native store's `waitIdle(0)` on an idle store is one trip to the core's I/O
 * threads and back (a promise settled through a threadsafe function), with no I/O; a
 * FileHandle's `stat()` is the same for libuv's pool (one fstat). They show how much of
 * a write's time is the hand-off rather than the disk.
 */
async function roundTrips(file: string, depths: number[], seconds: number): Promise<RoundTrip[]> {
  const out: RoundTrip[] = []
  const store = await PageStore.open(file)
  try {
    for (const d of depths) out.push(await measureRoundTrip('native waitIdle(0)', () => store.waitIdle(0), d, seconds))
  } finally {
    await store.close()
  }
  const fh = await fs.promises.open(file, 'r')
  try {
    for (const d of depths) out.push(await measureRoundTrip('FileHandle.stat()', () => fh.stat(), d, seconds))
  } finally {
    await fh.close()
  }
  return out
}

// ---------------------------------------------------------------------------------------
// fio

/** fio's job name (its exec_prerun/postrun output files are named after it). */
const FIO_JOB = 'pagestore'

/**
 * The fio job equivalent to one batch loop.
 *
 * `--ioengine=psync` cannot keep more than one write in flight, so depth 32 needs an
 * async engine. libaio is the closest equivalent of "N writes at once, wait for all,
 * then one fdatasync": with `--iodepth_batch_submit=N` the N writes go in one
 * io_submit, `--iodepth_batch_complete_min=N` reaps all N before going on, and
 * `--fdatasync=N` makes every N-th I/O a fdatasync, which fio's libaio engine refuses to
 * queue while any write is still in flight (Linux AIO has no fsync for most
 * filesystems) and then runs synchronously: exactly drain, then fdatasync, then the next
 * batch. io_uring would instead queue IORING_OP_FSYNC alongside the writes, unordered
 * with them (fio sets no drain flag), which is a different pattern. libaio needs
 * `--direct=1` to be asynchronous at all, so fio is compared with O_DIRECT rows.
 *
 * `--fallocate=none` and the exact `--size` make fio use the existing, fully written
 * file as it is. `--norandommap` makes the random offsets uniform with repetition, like
 * the Node side's generator.
 */
function fioArgs(file: string, sizeBytes: number, sync: SyncMode, depth: number, pattern: 'rand' | 'seq', ms: number, ioengine: FioEngine): string[] {
  return [
    `--name=${FIO_JOB}`,
    `--filename=${file}`,
    `--size=${sizeBytes}`,
    '--fallocate=none',
    `--rw=${pattern === 'rand' ? 'randwrite' : 'write'}`,
    ...(pattern === 'rand' ? ['--norandommap', '--randrepeat=0'] : []),
    `--bs=${PAGE}`,
    '--direct=1',
    `--ioengine=${ioengine}`,
    `--iodepth=${depth}`,
    // Without fdatasync: N writes kept in flight, each completion replaced at once.
    ...(sync === 'fdatasync' ? [`--iodepth_batch_submit=${depth}`, `--iodepth_batch_complete_min=${depth}`, `--fdatasync=${depth}`] : []),
    ...(sync === 'dsync' ? ['--sync=dsync'] : []),
    '--time_based',
    `--runtime=${Math.max(1, Math.round(ms))}ms`,
    '--output-format=json',
  ]
}

interface FioPct {
  mean: number
  percentile?: Record<string, number>
  N?: number
}

/** fio's I/O engine: libaio for the main table; io_uring too in the depth-1 cycle taken apart. */
type FioEngine = 'libaio' | 'io_uring'

async function runFio(file: string, sizeBytes: number, sync: SyncMode, depth: number, pattern: 'rand' | 'seq', seconds: number, ioengine: FioEngine = 'libaio'): Promise<{ sample: Sample; detail: string }> {
  // The machine's busy time is read by fio itself just before the job's I/O starts and
  // just after it ends: fio saves each command's output as `<job>.prerun.txt` and
  // `<job>.postrun.txt` in its working directory.
  const dir = path.dirname(file)
  const args = [...fioArgs(file, sizeBytes, sync, depth, pattern, seconds * 1000, ioengine), '--exec_prerun=cat /proc/stat', '--exec_postrun=cat /proc/stat']
  const { stdout } = await execFileP('fio', args, { maxBuffer: 64 << 20, cwd: dir })
  const stat = (when: string): number => {
    const f = path.join(dir, `${FIO_JOB}.${when}run.txt`)
    const busy = machineBusySeconds(fs.readFileSync(f, 'utf8'))
    fs.rmSync(f)
    return busy
  }
  const machineCpuSeconds = stat('post') - stat('pre')
  const json = JSON.parse(stdout.slice(stdout.indexOf('{')))
  const job = json.jobs[0]
  if (job.error) throw new Error(`fio job error ${job.error}`)
  const w = job.write
  const s = (sync === 'fdatasync' ? job.sync.lat_ns : { mean: NaN, N: 0 }) as FioPct
  const cl = w.clat_ns as FioPct
  const p = (x: FioPct, q: string): number => (x.percentile?.[q] ?? NaN) / 1000
  const runtimeS = w.runtime / 1000 // ms, the job's measured run
  const batches = sync === 'fdatasync' ? (s.N ?? Math.floor(w.total_ios / depth)) : w.total_ios
  return {
    sample: {
      writes: w.total_ios,
      batches,
      seconds: runtimeS,
      cpuSeconds: ((job.usr_cpu + job.sys_cpu) / 100) * runtimeS,
      machineCpuSeconds,
      syncUs: { n: batches, mean: s.mean / 1000, p50: p(s, '50.000000'), p99: p(s, '99.000000') },
      fioWriteClat: { mean: cl.mean / 1000, p50: p(cl, '50.000000'), p99: p(cl, '99.000000') },
    },
    detail: `fio ${args.filter((a) => !/^--(filename|runtime|output|exec_)/.test(a)).join(' ')}`,
  }
}

// ---------------------------------------------------------------------------------------
// Setup and machine

function sh(cmd: string, args: string[]): string | null {
  try {
    return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim()
  } catch {
    return null
  }
}

function machineInfo(dir: string): Record<string, unknown> {
  const mnt = sh('findmnt', ['-no', 'FSTYPE,SOURCE,OPTIONS', '-T', dir])?.split(/\s+/) ?? []
  const source = mnt[1] ?? null
  let blockDevice: Record<string, string | null> | null = null
  if (source?.startsWith('/dev/')) {
    const name = path.basename(fs.realpathSync(source))
    // A partition's queue settings live on its parent disk.
    const sys = fs.existsSync(`/sys/block/${name}`)
      ? `/sys/block/${name}`
      : sh('sh', ['-c', `dirname "$(readlink -f /sys/class/block/${name})"`])
    const read = (f: string): string | null => {
      try {
        return fs.readFileSync(`${sys}/${f}`, 'utf8').trim()
      } catch {
        return null
      }
    }
    blockDevice = {
      name,
      model: read('device/model'),
      rotational: read('queue/rotational'),
      scheduler: read('queue/scheduler'),
      writeCache: read('queue/write_cache'),
      logicalBlockSize: read('queue/logical_block_size'),
      physicalBlockSize: read('queue/physical_block_size'),
    }
  }
  const osRelease = (() => {
    try {
      return /PRETTY_NAME="?([^"\n]*)/.exec(fs.readFileSync('/etc/os-release', 'utf8'))?.[1] ?? null
    } catch {
      return null
    }
  })()
  return {
    ...machine(),
    memGiB: +(os.totalmem() / 2 ** 30).toFixed(1),
    os: osRelease,
    fio: sh('fio', ['--version']),
    uvThreadpoolSize: process.env.UV_THREADPOOL_SIZE ?? null,
    mdBitmapIoThreads: process.env.MD_BITMAP_IO_THREADS ?? null,
    dir,
    fsType: mnt[0] ?? sh('stat', ['-f', '-c', '%T', dir]),
    fsSource: source,
    fsOptions: mnt[2] ?? null,
    blockDevice,
  }
}

async function prepareFile(file: string, size: number): Promise<void> {
  const fd = fs.openSync(file, 'w')
  try {
    const chunk = Buffer.alloc(1 << 20)
    for (let off = 0; off < size; off += chunk.length) {
      randomFillSync(chunk)
      fs.writeSync(fd, chunk, 0, Math.min(chunk.length, size - off), off)
    }
    fs.fsyncSync(fd)
  } finally {
    fs.closeSync(fd)
  }
  const c = await check(file)
  if (!c.fileModeOk) throw new Error(`test file not fit for page writes: ${JSON.stringify(c.problems)}`)
}

async function probeODirect(file: string): Promise<string | null> {
  try {
    const fh = await fs.promises.open(file, fs.constants.O_RDWR | fs.constants.O_DIRECT)
    try {
      const b = allocAligned(PAGE, PAGE)
      await fh.read(b, 0, PAGE, 0)
      await fh.write(b, 0, PAGE, 0)
    } finally {
      await fh.close()
    }
    return null
  } catch (e) {
    return `O_DIRECT through fs.promises failed: ${(e as Error).message}`
  }
}

// ---------------------------------------------------------------------------------------
// Output


// ---------------------------------------------------------------------------------------

async function main(): Promise<void> {
  const opt = parseArgs(process.argv.slice(2))
  const ownDir = opt.dir === null
  const dir = ownDir ? fs.mkdtempSync('/var/tmp/md-bitmap-bench-') : opt.dir!
  fs.mkdirSync(dir, { recursive: true })
  const file = path.join(dir, 'pages.bin')
  const size = opt.sizeMiB << 20
  const pages = size / PAGE
  const startedAt = new Date()
  const load0 = readLoad()
  const host = machineInfo(dir)

  const fioOk = opt.fio && sh('fio', ['--version']) !== null
  const impls: Impl[] = [
    ...(fioOk ? (['fio'] as Impl[]) : []),
    ...opt.engines.map((e): Impl => `native ${e}`),
    ...(opt.node ? NODE_IMPLS : []),
  ]
  const perRound = opt.durationS / opt.rounds
  const configs = impls.length * opt.depths.length * opt.syncs.length
  const estimate = Math.round(configs * opt.durationS + configs * opt.rounds * 1.2)
  console.log(
    `bench:io: ${opt.sizeMiB} MiB file in ${dir} (${host.fsType} on ${host.fsSource}), ${opt.pattern} 4 KiB writes, depths ${opt.depths.join(', ')}, ` +
      `fdatasync: ${opt.syncs.join(', ')}, ${opt.durationS} s per configuration in ${opt.rounds} round(s), about ${estimate} s; load average ${load0.loadavg.map((x) => x.toFixed(2)).join(' ')}`,
  )

  try {
    await prepareFile(file, size)
    const odirectProblem = await probeODirect(file)
    if (odirectProblem) console.log(`node O_DIRECT: skipped: ${odirectProblem}`)

    const samples = new Map<string, { detail: string; samples: Sample[]; skipped?: string }>()
    const key = (impl: Impl, sync: SyncMode, depth: number): string => `${impl}@${sync}@${depth}`
    let seed = 0x9e3779b9
    for (let round = 0; round < opt.rounds; round++) {
      for (const sync of opt.syncs) for (const depth of opt.depths) {
        // Rotate the order each round, so none always runs first or after the same one.
        const order = impls.map((_, i) => impls[(i + round) % impls.length])
        for (const impl of order) {
          const k = key(impl, sync, depth)
          const entry = samples.get(k) ?? { detail: '', samples: [] }
          samples.set(k, entry)
          if (impl === 'node O_DIRECT' && odirectProblem) {
            entry.skipped = odirectProblem
            continue
          }
          seed = (seed * 1103515245 + 12345) >>> 0
          const offsets = new Offsets(pages, opt.pattern, seed)
          const engine = nativeEngine(impl)
          let r: { sample: Sample; detail: string }
          if (impl === 'fio') r = await runFio(file, size, sync, depth, opt.pattern, perRound)
          else if (engine) r = await runNative(engine, { file, sync, depth, pages, pattern: opt.pattern, seed, seconds: perRound, result: path.join(dir, 'child.json') })
          else r = await runNode(file, sync, depth, offsets, perRound, impl === 'node O_DIRECT')
          entry.detail = r.detail
          entry.samples.push(r.sample)
          process.stdout.write(
            `  round ${round + 1}/${opt.rounds} ${sync.padEnd(9)} depth ${String(depth).padStart(2)} ${impl.padEnd(14)} ${fmt(r.sample.writes / r.sample.seconds).padStart(7)} writes/s ` +
              `${fmt((r.sample.cpuSeconds * 1e6) / r.sample.writes, 1).padStart(6)} CPU µs/write (${fmt((r.sample.machineCpuSeconds * 1e6) / r.sample.writes, 1)} machine-wide), load ${os.loadavg()[0].toFixed(2)}\n`,
          )
        }
      }
    }

    const cycle = fioOk && opt.apart && opt.syncs.includes('fdatasync') && opt.depths.includes(1) ? await takeCycleApart(file, size, opt.rounds, perRound) : null
    const trips = await roundTrips(file, opt.depths, opt.quick ? 0.25 : 0.5)

    const results: Result[] = []
    for (const sync of opt.syncs) for (const depth of opt.depths) {
      for (const impl of impls) {
        const e = samples.get(key(impl, sync, depth))!
        if (e.skipped || e.samples.length === 0) {
          results.push({ ...summarize(impl, sync, depth, opt.pattern, e.detail, []), skipped: e.skipped ?? 'not run' })
        } else {
          results.push(summarize(impl, sync, depth, opt.pattern, e.detail, e.samples))
        }
      }
    }

    const rows: string[][] = [
      ['fdatasync', 'depth', 'implementation', 'writes/s', 'batches/s', 'batch µs', 'writes µs', 'sync µs mean', 'sync p50', 'sync p99', 'CPU µs/write', 'machine-wide', 'rounds (writes/s)'],
    ]
    for (const r of results) {
      if (r.skipped) {
        rows.push([r.sync, String(r.depth), r.impl, 'skipped', '', '', '', '', '', '', '', '', ''])
        continue
      }
      rows.push([
        r.sync,
        String(r.depth),
        r.impl,
        fmt(r.iops),
        fmt(r.batchesPerSec),
        fmt(r.meanBatchUs),
        fmt(r.writePhaseUs),
        fmt(r.syncMeanUs),
        fmt(r.syncP50Us),
        fmt(r.syncP99Us),
        fmt(r.cpuUsPerWrite, 1),
        fmt(r.machineCpuUsPerWrite, 1),
        r.roundIops.map((x) => fmt(x)).join(' / '),
      ])
    }
    // Per fdatasync pattern and depth: each native engine against fio (writes/s, and CPU
    // per write, ours ÷ fio's so that lower is better) and against Node's own: over all
    // rounds, and round by round (the two ran next to each other in each round, so a
    // host that changes pace between rounds moves both; median and range of the rounds).
    const ratios: Record<string, Record<string, number | number[] | null>> = {}
    const ratioRows: string[][] = [['fdatasync', 'depth', 'ratio', 'writes/s', 'per round', 'CPU/write', 'per round', 'machine-wide', 'per round']]
    const cpuPerWrite = (x: Sample): number => x.cpuSeconds / x.writes
    const machinePerWrite = (x: Sample): number => x.machineCpuSeconds / x.writes
    for (const sync of opt.syncs) for (const depth of opt.depths) {
      const get = (impl: Impl): Result | undefined => results.find((r) => r.impl === impl && r.sync === sync && r.depth === depth && !r.skipped)
      const d: Record<string, number | number[] | null> = {}
      for (const engine of opt.engines) {
        const n = get(`native ${engine}`)
        for (const other of ['fio', ...NODE_IMPLS] as Impl[]) {
          const o = get(other)
          if (!n || !o) {
            d[`native ${engine}/${other}`] = null
            continue
          }
          const byRound = (f: (x: Sample) => number): number[] => n.samples.map((x, i) => f(x) / f(o.samples[i]))
          const rounds = n.roundIops.map((x, i) => x / o.roundIops[i])
          const cpuRounds = byRound(cpuPerWrite)
          const machineRounds = byRound(machinePerWrite)
          d[`native ${engine}/${other}`] = n.iops / o.iops
          d[`native ${engine}/${other} cpu`] = n.cpuUsPerWrite / o.cpuUsPerWrite
          d[`native ${engine}/${other} machine cpu`] = n.machineCpuUsPerWrite / o.machineCpuUsPerWrite
          d[`native ${engine}/${other} rounds`] = rounds
          d[`native ${engine}/${other} cpu rounds`] = cpuRounds
          d[`native ${engine}/${other} machine cpu rounds`] = machineRounds
          ratioRows.push([
            sync,
            String(depth),
            `native ${engine} / ${other}`,
            (n.iops / o.iops).toFixed(2),
            spread(rounds),
            (n.cpuUsPerWrite / o.cpuUsPerWrite).toFixed(2),
            spread(cpuRounds),
            (n.machineCpuUsPerWrite / o.machineCpuUsPerWrite).toFixed(2),
            spread(machineRounds),
          ])
        }
      }
      ratios[`${sync}@${depth}`] = d
    }

    console.log()
    console.log(table(rows, 2, true))
    console.log()
    console.log(table(ratioRows, 2, true))
    printGoals(ratios, opt)
    if (cycle) printCycle(cycle, results)
    console.log()
    console.log(
      table([
        ['depth', 'round trip, no I/O', 'µs/op', 'CPU µs/op'],
        ...trips.map((t) => [String(t.depth), t.what, fmt(t.usPerOp, 1), fmt(t.cpuUsPerOp, 1)]),
      ], 2, true),
    )
    console.log()
    console.log('fdatasync=none: N writes always in flight, no fdatasync (batches = writes); fdatasync=fdatasync:')
    console.log('batch µs = wall time / batches (N writes issued together, all awaited, then one fdatasync);')
    console.log('writes µs = batch µs - sync µs mean: the N writes, from issue to the last completion seen.')
    console.log('sync = the fdatasync after each batch. fdatasync=dsync: as none, each write O_DSYNC (durable when it completes).')
    console.log('CPU µs/write: the whole process (Node rows) or fio\'s own; machine-wide: every CPU\'s busy time over the run')
    console.log('(user, system, interrupts; /proc/stat), wherever the work for the writes ran. Ratios: ours ÷ fio\'s,')
    console.log('over all rounds, then per round: median (min–max) of each round\'s ratio (the two ran side by side).')
    const details = new Map<string, string>()
    // Native rows per depth: each says what write-through did at that depth.
    for (const r of results) {
      if (r.detail) details.set(nativeEngine(r.impl) ? `${r.impl} (${r.sync}, depth ${r.depth})` : `${r.impl} (${r.sync})`, r.detail.replace(/--(iodepth\w*|fdatasync)=\d+/g, '--$1=N'))
    }
    for (const [impl, d] of details) console.log(`  ${impl}: ${d}`)

    const load1 = readLoad()
    const out = {
      benchmark: 'bench:io',
      command: `npm run bench:io${process.argv.length > 2 ? ' -- ' + process.argv.slice(2).join(' ') : ''}`,
      startedAt: startedAt.toISOString(),
      finishedAt: new Date().toISOString(),
      machine: { ...host, loadavgBefore: load0.loadavg, loadavgAfter: load1.loadavg, pressureBefore: load0.pressure, pressureAfter: load1.pressure },
      params: {
        fileBytes: size,
        pageBytes: PAGE,
        pattern: opt.pattern,
        depths: opt.depths,
        syncs: opt.syncs,
        engines: opt.engines,
        secondsPerConfig: opt.durationS,
        rounds: opt.rounds,
        batch: 'fdatasync: N writes issued concurrently, all awaited, then one fdatasync; none: N writes always in flight',
      },
      results: results.map((r) => ({
        ...r,
        samples: r.samples.map((s) => ({
          writes: s.writes,
          batches: s.batches,
          seconds: s.seconds,
          cpuSeconds: s.cpuSeconds,
          machineCpuSeconds: s.machineCpuSeconds,
          ...(s.fioWriteClat ? { fioWriteClatUs: s.fioWriteClat } : {}),
          ...(Array.isArray(s.syncUs) ? {} : { fioSyncUs: s.syncUs }),
        })),
      })),
      ratios,
      ...(cycle ? { syncCycle: cycle } : {}),
      roundTrips: trips,
    }
    fs.mkdirSync(path.dirname(opt.out), { recursive: true })
    fs.writeFileSync(opt.out, JSON.stringify(out, null, 2) + '\n')
    console.log(`\nwrote ${path.relative(process.cwd(), opt.out) || opt.out}; ${loadChange(load0, load1)}`)
  } finally {
    if (ownDir) fs.rmSync(dir, { recursive: true, force: true })
    else fs.rmSync(file, { force: true })
  }
}

/** The depth-1 cycle's parts (sync-cycle.ts), `rounds` times in rotation, `seconds` each. */
async function takeCycleApart(file: string, size: number, rounds: number, seconds: number): Promise<{ skipped: string } | Record<CyclePart, CycleSample[]>> {
  const built = await buildExample('syncstep')
  if ('skipped' in built) {
    console.log(`the depth-1 fdatasync cycle taken apart: skipped: ${built.skipped}`)
    return { skipped: built.skipped }
  }
  const out = Object.fromEntries(CYCLE_PARTS.map((p) => [p, [] as CycleSample[]])) as Record<CyclePart, CycleSample[]>
  for (let round = 0; round < rounds; round++) {
    for (let i = 0; i < CYCLE_PARTS.length; i++) {
      const part = CYCLE_PARTS[(i + round) % CYCLE_PARTS.length]
      const s = await runCyclePart(part, seconds, async (ioengine) => (await runFio(file, size, 'fdatasync', 1, 'rand', seconds, ioengine)).sample, built.binary, file, size)
      out[part].push(s)
      process.stdout.write(`  round ${round + 1}/${rounds} cycle ${part.padEnd(29)} ${fmt((s.seconds * 1e6) / s.cycles, 1).padStart(7)} µs/cycle ${fmt((s.cpuSeconds * 1e6) / s.cycles, 1).padStart(6)} CPU µs/cycle, load ${os.loadavg()[0].toFixed(2)}\n`)
    }
  }
  return out
}

/** The cycle's parts beside the native rows of the main table at fdatasync, depth 1 (one write per batch: a batch is a cycle). */
function printCycle(cycle: { skipped: string } | Record<CyclePart, CycleSample[]>, results: Result[]): void {
  if ('skipped' in cycle) return
  const sum = (xs: CycleSample[]) => ({ cycles: xs.reduce((s, x) => s + x.cycles, 0), seconds: xs.reduce((s, x) => s + x.seconds, 0), cpu: xs.reduce((s, x) => s + x.cpuSeconds, 0) })
  const fio = sum(cycle['fio libaio'])
  const rows: string[][] = [['the depth-1 write + fdatasync cycle', 'µs per cycle', 'per round', 'CPU µs per cycle', '÷ fio libaio (cycles/s)']]
  for (const part of CYCLE_PARTS) {
    const t = sum(cycle[part])
    rows.push([part, fmt((t.seconds * 1e6) / t.cycles, 1), cycle[part].map((x) => fmt((x.seconds * 1e6) / x.cycles, 1)).join(' / '), fmt((t.cpu * 1e6) / t.cycles, 1), (t.cycles / t.seconds / (fio.cycles / fio.seconds)).toFixed(2)])
  }
  for (const r of results.filter((r) => r.sync === 'fdatasync' && r.depth === 1 && r.impl.startsWith('native') && !r.skipped)) {
    rows.push([`${r.impl} (main table, from Node)`, fmt(1e6 / r.iops, 1), r.roundIops.map((x) => fmt(1e6 / x, 1)).join(' / '), fmt(r.cpuUsPerWrite, 1), (r.iops / (fio.cycles / fio.seconds)).toFixed(2)])
  }
  console.log()
  console.log(table(rows, 2, true))
}

const childAt = process.argv.indexOf('--child')
;(childAt >= 0 ? childMain(JSON.parse(process.argv[childAt + 1]) as ChildJob) : main()).catch((e) => {
  console.error(e)
  process.exit(1)
})
