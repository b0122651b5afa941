/**
 * Mirror benchmark (`npm run bench:mirror`). In one run, on the same member files
 * (sparse files on a disk filesystem, by default under /var/tmp; the region the write
 * tests use is written in full first, so no test pays for block allocation):
 *
 * 1. Writes through a mirror of two members, three workloads:
 *    - 4 KiB writes at random 4 KiB-aligned offsets, 1 in flight
 *    - the same, 32 in flight
 *    - 1 MiB sequential writes, 1 in flight
 *    in four configurations:
 *    - (a)        no bitmap (`bitmap: null`): the baseline
 *    - (b)        a bitmap of 64 MiB chunks
 *    - (c) sync   (b) plus a third, write-mostly member slowed by 10 ms per write
 *                 (SlowMember), writeBehind 0: every write waits for the slow member
 *    - (c) behind the same with writeBehind 256: the ack waits for the fast members only
 *    Each configuration is a fresh mirror over the same files (`assumeClean`), each
 *    workload runs for a fixed time, and the configurations run in rotated order
 *    round after round, so outside load does not always fall on the same one. Printed:
 *    MB/s, IOPS, ack latency p50/p99, CPU per write (the whole process's CPU time, the
 *    native I/O threads included, over the writes), bitmap page writes per 1000
 *    writes, member flushes (fdatasync: the bitmap daemon makes the members durable
 *    before it clears bits; the mirror without a bitmap never flushes by itself) with
 *    their total time; the ratio (b)/(a); and (c) behind against (c) sync. Write
 *    throughput counts acknowledged writes: behind writes still draining to the slow
 *    member when a workload ends are waited for (the "drain" column) before the next
 *    workload starts, outside the timing.
 *    Writes are not followed by flush(): a write resolves once the members' O_DIRECT
 *    writes completed (and, with a bitmap, once its bits were durable).
 *    The two-file fio ceiling runs in the same rotation, as a fifth entry: fio (libaio,
 *    O_DIRECT) writing 4 KiB at random offsets of the write region of the same two
 *    member files, at twice the mirror's depth (2 and 64), its IOPS ÷ 2 being the most
 *    mirror writes per second the two files allow. Printed against it, per workload
 *    and per round: mirror ÷ ceiling for (b) (the goal, issue 11: ≥ 0.8 at 1 in flight,
 *    ≥ 0.85 at 32) and (a); CPU per write against fio's (this process's user + system
 *    time ÷ mirror writes; fio's usr + sys ÷ its I/Os); and with bitmap ÷ without, (b)
 *    ÷ (a) (goal ≥ 0.97). The 1-minute load average is recorded with every sample.
 *    The 1-in-flight workload is also taken apart (lockstep.ts), two more entries of
 *    the rotation writing the same 4 KiB to both member files and waiting for both:
 *    the native engine alone, with no Node (a Rust example, built with cargo; the row
 *    is skipped, and said so, if that fails), and two page stores from Node with no
 *    mirror above them. Printed beside the ceiling and mirrors (a) and (b): writes to
 *    both per second, ÷ the ceiling, and CPU per write to both.
 * 2. Resync of a mirror of `--size` (default 4 GiB, both members written in full) with
 *    a bitmap of `--resync-chunk` chunks (default 4 MiB: 1024 chunks): member 1 is
 *    removed, 1 % of the chunks are dirtied by writes, and reAdd copies only those
 *    ('bitmap' recovery). Against it, on the same mirror and files, a full recovery:
 *    member 1 is removed for good and added again (addMember), which copies every
 *    chunk. The dirtied chunks are compared byte for byte between the members after
 *    each recovery. Against the full recovery, `dd iflag=direct oflag=direct bs=1M` of
 *    the same bytes (member 0 onto member 1), and the full recovery one chunk at a time
 *    (`inFlight: 1`; the default keeps 4 chunks in flight): these three rotate round
 *    after round between a partial recovery at the start and one at the end. Printed:
 *    full resync ÷ dd (dd's time ÷ the resync's: the goal is ≥ 1.0) per round.
 *
 * Options (environment variables in brackets):
 *   --quick          [MD_BITMAP_BENCH_QUICK=1]  a smoke run of about 10 s: 256 MiB
 *                    mirror, 64 MiB write region, 256 KiB resync chunks, short timings
 *   --dir DIR        [MD_BITMAP_BENCH_DIR]      where the files go (a temp dir is made in it;
 *                    default /var/tmp); removed at the end, also on failure or Ctrl-C
 *   --size MIB       [MD_BITMAP_BENCH_SIZE_MIB] mirror and member size (default 4096)
 *   --region MIB     write-test region at the start of the members (default 1024)
 *   --resync-chunk KIB  bitmap chunk of the resync test (default 4096)
 *   --duration S     [MD_BITMAP_BENCH_SECONDS]  seconds per workload per round (default 3)
 *   --rounds R       default 3
 *   --slow-ms MS     delay of the write-mostly member (default 10)
 *   --no-fio         skip the fio ceiling and the dd reference (also skipped, and said
 *                    so, when fio or dd is not installed)
 *   --only PART      `writes` (part 1 only) or `resync` (part 2 only, which skips the
 *                    write-test prefill of the slow member and leaves the chart alone)
 *   --out FILE       default bench/out/mirror.json
 *   --chart FILE     the SVG chart drawn from this run's figures (default
 *                    docs/bench-mirror.svg; bench/out/mirror.svg for --quick)
 */
import { randomFillSync } from 'node:crypto'
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import { barChart } from './chart'
import { buildExample } from './cargo-example'
import { engineLockstep, storesLockstep, type LockstepSample } from './lockstep'
import { KiB, MiB, Prng, execFileP, fmt, loadChange, machine, parseOptions, percentile, readLoad, sleep, spread, table, workDir } from './common'
import { DelegatingMember, FileMember, Mirror, SlowMember, allocAligned, check, type Member, type MirrorStats, type OpenMember, type ResyncReport } from '../src/index'

// ---------------------------------------------------------------------------------------
// Options

interface Options {
  quick: boolean
  dir: string
  size: number
  region: number
  resyncChunk: number
  durationS: number
  rounds: number
  slowMs: number
  fio: boolean
  out: string
  chart: string
  /** Only the write tests, or only the resync tests (default both). */
  only: 'writes' | 'resync' | undefined
}

const USAGE =
  'usage: npm run bench:mirror -- [--quick] [--dir DIR] [--size MIB] [--region MIB] [--resync-chunk KIB] [--duration S] [--rounds R] [--slow-ms MS] [--no-fio] [--only writes|resync] [--out FILE] [--chart FILE]'

function parseArgs(argv: string[]): Options {
  const env = process.env
  const a = parseOptions(
    argv,
    { quick: 'flag', dir: 'value', size: 'value', region: 'value', 'resync-chunk': 'value', duration: 'value', rounds: 'value', 'slow-ms': 'value', 'no-fio': 'flag', out: 'value', chart: 'value', only: 'value' },
    USAGE,
  )
  const quick = a.flag('quick') || (env.MD_BITMAP_BENCH_QUICK !== undefined && env.MD_BITMAP_BENCH_QUICK !== '' && env.MD_BITMAP_BENCH_QUICK !== '0')
  const resolved = (v: string | undefined) => (v === undefined ? undefined : path.resolve(v))
  const o: Options = {
    quick,
    dir: resolved(a.value('dir')) ?? (env.MD_BITMAP_BENCH_DIR || '/var/tmp'),
    size: a.number('size', env.MD_BITMAP_BENCH_SIZE_MIB ? Number(env.MD_BITMAP_BENCH_SIZE_MIB) : quick ? 256 : 4096) * MiB,
    region: a.number('region', quick ? 64 : 1024) * MiB,
    resyncChunk: a.number('resync-chunk', quick ? 256 : 4096) * KiB,
    durationS: a.number('duration', env.MD_BITMAP_BENCH_SECONDS ? Number(env.MD_BITMAP_BENCH_SECONDS) : quick ? 0.4 : 3),
    rounds: a.number('rounds', quick ? 1 : 3),
    slowMs: a.number('slow-ms', 10),
    fio: !a.flag('no-fio'),
    out: resolved(a.value('out')) ?? path.join(__dirname, 'out', 'mirror.json'),
    only: a.value('only') as Options['only'],
    chart: resolved(a.value('chart')) ?? (quick ? path.join(__dirname, 'out', 'mirror.svg') : path.join(__dirname, '..', 'docs', 'bench-mirror.svg')),
  }
  if (!Number.isSafeInteger(o.size) || o.size <= 0 || o.size % MiB !== 0) throw new Error('bad --size')
  if (!Number.isSafeInteger(o.region) || o.region < MiB || o.region > o.size || o.region % MiB !== 0) throw new Error('bad --region (1 MiB .. --size)')
  if (!Number.isSafeInteger(o.resyncChunk) || o.resyncChunk < 4 * KiB || (o.resyncChunk & (o.resyncChunk - 1)) !== 0) throw new Error('bad --resync-chunk (a power of two, at least 4 KiB)')
  if (!(o.durationS > 0) || !Number.isInteger(o.rounds) || o.rounds < 1) throw new Error('bad --duration or --rounds')
  if (!(o.slowMs >= 0)) throw new Error('bad --slow-ms')
  if (o.only !== undefined && o.only !== 'writes' && o.only !== 'resync') throw new Error('bad --only (writes or resync)')
  return o
}

const now = (): number => Number(process.hrtime.bigint()) / 1e3 // µs
const load1 = (): number => os.loadavg()[0]

// ---------------------------------------------------------------------------------------
// Write tests

type ConfigKey = 'a' | 'b' | 'c-sync' | 'c-behind'
interface Config {
  key: ConfigKey
  label: string
  bitmap: boolean
  slow: boolean
  writeBehind: number
}
const WRITE_CHUNK = 64 * MiB
const BEHIND_LIMIT = 256
const CONFIGS: Config[] = [
  { key: 'a', label: '(a) no bitmap', bitmap: false, slow: false, writeBehind: 0 },
  { key: 'b', label: '(b) bitmap 64 MiB chunks', bitmap: true, slow: false, writeBehind: 0 },
  { key: 'c-sync', label: '(c) + slow write-mostly, sync', bitmap: true, slow: true, writeBehind: 0 },
  { key: 'c-behind', label: `(c) + slow write-mostly, behind ${BEHIND_LIMIT}`, bitmap: true, slow: true, writeBehind: BEHIND_LIMIT },
]

type WorkloadKey = 'rand4k-qd1' | 'rand4k-qd32' | 'seq1m-qd1'
interface Workload {
  key: WorkloadKey
  label: string
  size: number
  depth: number
  seq: boolean
}
const WORKLOADS: Workload[] = [
  { key: 'rand4k-qd1', label: '4 KiB random, 1 in flight', size: 4 * KiB, depth: 1, seq: false },
  { key: 'rand4k-qd32', label: '4 KiB random, 32 in flight', size: 4 * KiB, depth: 32, seq: false },
  { key: 'seq1m-qd1', label: '1 MiB sequential, 1 in flight', size: MiB, depth: 1, seq: true },
]

interface Sample {
  writes: number
  bytes: number
  seconds: number
  cpuSeconds: number
  latUs: number[]
  drainMs: number
  bitmapPages: number
  /** Member flushes during the workload (the bitmap daemon's, before it clears bits), and their total ms. */
  flushes: number
  flushMs: number
  behindWrites: number
  fallbacks: number
  /** Most behind writes in flight seen at an ack. */
  behindHighWater: number
  /** The 1-minute load average when the workload ended. */
  load1: number
}

async function runWorkload(mirror: Mirror, w: Workload, o: Options, seed: number): Promise<Sample> {
  const prng = new Prng(seed)
  const pages = o.region / w.size
  let cursor = 0
  const lat: number[] = []
  let bytes = 0
  const st0: MirrorStats = mirror.stats()
  const pages0 = mirror.bitmap?.stats().pagesWritten ?? 0
  const flushes0 = { ...flushes }
  const cpu0 = process.cpuUsage()
  const t0 = now()
  const deadline = t0 + o.durationS * 1e6
  let lastAck = t0
  // Behind writes in flight, sampled at every ack (the mirror's own high water spans its life).
  const sampleBehind = (mirror.bitmap?.maxWriteBehind ?? 0) > 0
  let behindMax = 0
  await Promise.all(
    Array.from({ length: w.depth }, async () => {
      const buf = allocAligned(w.size, mirror.alignment)
      randomFillSync(buf)
      while (now() < deadline) {
        const off = w.seq ? (cursor++ % pages) * w.size : prng.below(pages) * w.size
        buf[0] = cursor & 0xff // every write carries a little new data
        const t = now()
        await mirror.write(buf, off)
        lastAck = now()
        lat.push(lastAck - t)
        bytes += w.size
        if (sampleBehind) behindMax = Math.max(behindMax, mirror.stats().behindInFlight)
      }
    }),
  )
  const cpu = process.cpuUsage(cpu0)
  // Behind writes still going to the slow member: wait for them, outside the timing.
  const d0 = now()
  while (mirror.stats().behindInFlight > 0) await sleep(1)
  const drainMs = (now() - d0) / 1e3
  const st1 = mirror.stats()
  return {
    writes: lat.length,
    bytes,
    seconds: (lastAck - t0) / 1e6,
    cpuSeconds: (cpu.user + cpu.system) / 1e6,
    latUs: lat,
    drainMs,
    bitmapPages: (mirror.bitmap?.stats().pagesWritten ?? 0) - pages0,
    flushes: flushes.count - flushes0.count,
    flushMs: (flushes.us - flushes0.us) / 1e3,
    behindWrites: st1.behindWrites - st0.behindWrites,
    fallbacks: st1.behindFallbacks.limit - st0.behindFallbacks.limit + st1.behindFallbacks.memory - st0.behindFallbacks.memory,
    behindHighWater: behindMax,
    load1: load1(),
  }
}

/** Member flushes (fdatasync) the mirror asked for, over all members, and their time. */
const flushes = { count: 0, us: 0 }

/** Counts and times flush() in {@link flushes}; everything else goes straight through. */
class CountedMember extends DelegatingMember {
  override async flush(): Promise<void> {
    const t = now()
    try {
      await this.inner.flush()
    } finally {
      flushes.count++
      flushes.us += now() - t
    }
  }
}

function openerFor(slowMs: number): OpenMember {
  return async (spec) => {
    const f: Member = new CountedMember(await FileMember.open(spec.path))
    return spec.writeMostly ? new SlowMember(f, slowMs) : f
  }
}

async function openConfig(c: Config, dir: string, files: { m0: string; m1: string; slow: string }, o: Options): Promise<Mirror> {
  const members = [{ path: files.m0 }, { path: files.m1 }]
  if (c.slow) members.push({ path: files.slow, writeMostly: true } as { path: string; writeMostly?: boolean })
  return Mirror.create({
    bitmap: c.bitmap ? path.join(dir, `${c.key}.bitmap`) : null,
    metadata: path.join(dir, `${c.key}.mirror.json`),
    members,
    size: o.size,
    chunkSize: WRITE_CHUNK,
    writeBehind: c.writeBehind,
    assumeClean: true, // the same data was written to every member in prefill()
    overwrite: true,
    openMember: openerFor(o.slowMs),
  })
}

interface WriteResult {
  config: ConfigKey
  workload: WorkloadKey
  writes: number
  mbPerSec: number
  iops: number
  p50Us: number
  p99Us: number
  meanUs: number
  cpuUsPerWrite: number
  bitmapPagesPer1000: number
  memberFlushes: number
  memberFlushMs: number
  behindWrites: number
  fallbacks: number
  behindHighWater: number
  drainMs: number
  roundsMbPerSec: number[]
  roundsIops: number[]
  /** The 1-minute load average at the end of each round's sample. */
  roundsLoad: number[]
}

function summarize(config: ConfigKey, workload: WorkloadKey, samples: Sample[]): WriteResult {
  const writes = samples.reduce((s, x) => s + x.writes, 0)
  const bytes = samples.reduce((s, x) => s + x.bytes, 0)
  const seconds = samples.reduce((s, x) => s + x.seconds, 0)
  const cpu = samples.reduce((s, x) => s + x.cpuSeconds, 0)
  const lat = samples.flatMap((s) => s.latUs)
  return {
    config,
    workload,
    writes,
    mbPerSec: bytes / seconds / 1e6,
    iops: writes / seconds,
    p50Us: percentile(lat, 50),
    p99Us: percentile(lat, 99),
    meanUs: lat.reduce((s, x) => s + x, 0) / lat.length,
    cpuUsPerWrite: (cpu * 1e6) / writes,
    bitmapPagesPer1000: (samples.reduce((s, x) => s + x.bitmapPages, 0) * 1000) / writes,
    memberFlushes: samples.reduce((s, x) => s + x.flushes, 0),
    memberFlushMs: samples.reduce((s, x) => s + x.flushMs, 0),
    behindWrites: samples.reduce((s, x) => s + x.behindWrites, 0),
    fallbacks: samples.reduce((s, x) => s + x.fallbacks, 0),
    behindHighWater: Math.max(...samples.map((s) => s.behindHighWater)),
    drainMs: Math.max(...samples.map((s) => s.drainMs)),
    roundsMbPerSec: samples.map((s) => s.bytes / s.seconds / 1e6),
    roundsIops: samples.map((s) => s.writes / s.seconds),
    roundsLoad: samples.map((s) => s.load1),
  }
}

// ---------------------------------------------------------------------------------------
// References: the two-file fio ceiling, dd

/** The workloads the fio ceiling is measured for (4 KiB random: what fio does alike). */
const CEILING_WORKLOADS: WorkloadKey[] = ['rand4k-qd1', 'rand4k-qd32']

interface FioSample {
  /** fio's I/Os per second over both files. */
  iops: number
  ios: number
  seconds: number
  /** fio's user + system CPU time. */
  cpuSeconds: number
  load1: number
}

/**
 * fio (libaio, O_DIRECT) writing 4 KiB blocks at random offsets of the first `region`
 * bytes of both `files`, `depth` in flight over the two, for `seconds`.
 */
async function fio(files: string[], region: number, depth: number, seconds: number): Promise<FioSample> {
  const args = [
    '--name=ceiling', `--filename=${files.join(':')}`, '--ioengine=libaio', '--direct=1', '--rw=randwrite', '--bs=4k',
    `--iodepth=${depth}`, `--filesize=${region}`, '--fallocate=none', '--norandommap', '--randrepeat=0',
    '--time_based', `--runtime=${Math.max(1, Math.round(seconds * 1000))}ms`, '--output-format=json',
  ]
  const { stdout } = await execFileP('fio', args, { maxBuffer: 64 << 20 })
  const job = JSON.parse(stdout.slice(stdout.indexOf('{'))).jobs[0]
  if (job.error) throw new Error(`fio job error ${job.error}: fio ${args.join(' ')}`)
  const runtimeS = job.job_runtime / 1000
  return { iops: job.write.total_ios / runtimeS, ios: job.write.total_ios, seconds: runtimeS, cpuSeconds: ((job.usr_cpu + job.sys_cpu) / 100) * runtimeS, load1: load1() }
}

interface FioResult {
  workload: WorkloadKey
  /** fio's depth: twice the mirror's. */
  depth: number
  /** fio's IOPS ÷ 2: mirror writes per second the two files allow. */
  ceilingIops: number
  cpuUsPerIo: number
  roundsCeilingIops: number[]
  roundsLoad: number[]
}

function summarizeFio(workload: WorkloadKey, depth: number, samples: FioSample[]): FioResult {
  const ios = samples.reduce((s, x) => s + x.ios, 0)
  const seconds = samples.reduce((s, x) => s + x.seconds, 0)
  return {
    workload,
    depth,
    ceilingIops: ios / seconds / 2,
    cpuUsPerIo: (samples.reduce((s, x) => s + x.cpuSeconds, 0) * 1e6) / ios,
    roundsCeilingIops: samples.map((x) => x.iops / 2),
    roundsLoad: samples.map((x) => x.load1),
  }
}

/** `dd iflag=direct oflag=direct bs=1M` of the first `bytes` of `from` onto `to`: its wall time. */
async function dd(from: string, to: string, bytes: number): Promise<number> {
  const t0 = now()
  await execFileP('dd', [`if=${from}`, `of=${to}`, 'iflag=direct', 'oflag=direct', 'bs=1M', `count=${bytes / MiB}`, 'conv=notrunc', 'status=none'])
  return (now() - t0) / 1e3
}

/** Whether `cmd --version` runs. */
async function installed(cmd: string): Promise<boolean> {
  return execFileP(cmd, ['--version']).then(
    () => true,
    () => false,
  )
}

// ---------------------------------------------------------------------------------------
// Files

/** Writes `[0, length)` of every file with the same data (so the members are identical), then fdatasync. */
async function prefill(paths: string[], length: number, size: number): Promise<void> {
  const members: FileMember[] = []
  try {
    for (const p of paths) {
      await FileMember.ensure(p, size)
      members.push(await FileMember.open(p))
    }
    const piece = 4 * MiB
    const align = Math.max(...members.map((m) => m.alignment))
    const depth = 4
    let next = 0
    await Promise.all(
      Array.from({ length: depth }, async () => {
        const buf = allocAligned(piece, align)
        randomFillSync(buf)
        for (let off = next; off < length; off = next) {
          next += piece
          const n = Math.min(piece, length - off)
          new DataView(buf.buffer, buf.byteOffset).setFloat64(0, off) // every piece differs
          await Promise.all(members.map((m) => m.write(buf.subarray(0, n), off)))
        }
      }),
    )
    await Promise.all(members.map((m) => m.flush()))
  } finally {
    for (const m of members) await m.close()
  }
}

/** Whether `[offset, offset + length)` holds the same bytes in both files. */
async function sameBytes(a: string, b: string, offset: number, length: number): Promise<boolean> {
  const [fa, fb] = [await fs.promises.open(a, 'r'), await fs.promises.open(b, 'r')]
  try {
    const ba = Buffer.alloc(Math.min(length, 4 * MiB))
    const bb = Buffer.alloc(ba.length)
    for (let o = offset; o < offset + length; o += ba.length) {
      const n = Math.min(ba.length, offset + length - o)
      await fa.read(ba, 0, n, o)
      await fb.read(bb, 0, n, o)
      if (!ba.subarray(0, n).equals(bb.subarray(0, n))) return false
    }
    return true
  } finally {
    await fa.close()
    await fb.close()
  }
}

// ---------------------------------------------------------------------------------------
// Resync test

type ResyncKind = 'bitmap' | 'full' | 'full-1' | 'dd'

interface ResyncRun {
  /** A partial ('bitmap') or full recovery (4 chunks in flight; 'full-1': one), or dd of the same bytes. */
  kind: ResyncKind
  /** Round of the rotation (the partial recoveries before and after: -1 and rounds). */
  round: number
  wallMs: number
  /** The resync's own duration (the recovery less removing and re-adding); dd: its wall time. */
  copyMs: number
  report?: Omit<ResyncReport, 'chunks'>
  dirtyChunks?: number
  verified?: boolean
  load1: number
}

async function waitClean(mirror: Mirror): Promise<void> {
  const bm = mirror.bitmap!
  for (let i = 0; i < 10; i++) {
    await bm.settle()
    if (bm.stats().dirty === 0 && bm.neededChunks().length === 0) return
  }
  throw new Error(`bitmap still has ${bm.stats().dirty} dirty chunks (${bm.neededChunks().length} needed) after flushing`)
}

/** While a member is out: dirties `count` distinct random chunks (a 64 KiB write in each) through the mirror. */
async function dirty(mirror: Mirror, count: number, prng: Prng): Promise<number[]> {
  const cs = mirror.chunkSize
  const chunks = new Set<number>()
  const total = mirror.size / cs
  while (chunks.size < count) chunks.add(prng.below(total))
  const len = Math.min(64 * KiB, cs)
  const buf = allocAligned(len, mirror.alignment)
  for (const c of chunks) {
    randomFillSync(buf)
    await mirror.write(buf, c * cs + prng.below(cs / len) * len)
  }
  return [...chunks].sort((x, y) => x - y)
}

async function resyncTest(dir: string, m0: string, m1: string, o: Options, withDd: boolean): Promise<{ runs: ResyncRun[]; chunks: number; dirtyCount: number }> {
  const mirror = await Mirror.create({
    bitmap: path.join(dir, 'resync.bitmap'),
    members: [{ path: m0 }, { path: m1 }],
    size: o.size,
    chunkSize: o.resyncChunk,
    assumeClean: true,
    overwrite: true,
  })
  const chunks = mirror.size / mirror.chunkSize
  const dirtyCount = Math.max(1, Math.round(chunks / 100))
  const prng = new Prng(0x5eed)
  const runs: ResyncRun[] = []
  try {
    const rotation: ResyncKind[] = withDd ? ['full', 'dd', 'full-1'] : ['full', 'full-1']
    const plan: { kind: ResyncKind; round: number }[] = [{ kind: 'bitmap', round: -1 }]
    for (let round = 0; round < o.rounds; round++) for (let i = 0; i < rotation.length; i++) plan.push({ kind: rotation[(i + round) % rotation.length], round })
    plan.push({ kind: 'bitmap', round: o.rounds })
    for (const { kind, round } of plan) {
      await waitClean(mirror)
      if (kind === 'dd') {
        // The same bytes as a full recovery, with the mirror idle (member 1 holds member 0's data already).
        const ms = await dd(m0, m1, mirror.size)
        runs.push({ kind, round, wallMs: ms, copyMs: ms, load1: load1() })
        console.log(`  dd     ${fmt(ms)} ms, ${fmt(mirror.size / MiB)} MiB, ${fmt(mirror.size / (ms / 1e3) / 1e6)} MB/s; load ${load1().toFixed(1)}`)
        continue
      }
      const full = kind !== 'bitmap'
      // Member 1 leaves (for good, for the full case: it comes back as a new member)...
      await mirror.removeMember(1, full ? { forget: true } : {})
      // ...misses 1 % of the chunks...
      const dirtied = await dirty(mirror, dirtyCount, prng)
      // ...and comes back.
      const t0 = now()
      const options = { inFlight: kind === 'full-1' ? 1 : undefined }
      const report = full ? await mirror.addMember({ path: m1 }, options) : await mirror.reAdd(1, options)
      const wallMs = (now() - t0) / 1e3
      if (report.recovery !== (full ? 'full' : 'bitmap')) throw new Error(`expected a '${kind}' recovery, the mirror did '${report.recovery}'`)
      if (mirror.degraded) throw new Error(`mirror still degraded after the ${kind} recovery: ${JSON.stringify(mirror.members)}`)
      let verified = true
      for (const c of dirtied) verified = (await sameBytes(m0, m1, c * mirror.chunkSize, mirror.chunkSize)) && verified
      if (!verified) throw new Error(`members differ in a dirtied chunk after the ${kind} recovery`)
      const { chunks: _omit, ...rest } = report
      runs.push({ kind, round, wallMs, copyMs: report.durationMs, report: rest, dirtyChunks: dirtied.length, verified, load1: load1() })
      console.log(
        `  ${kind.padEnd(6)} recovery: ${fmt(wallMs)} ms (resync ${fmt(report.durationMs)} ms), ${report.chunksCopied} chunks = ${fmt(report.bytesCopied / MiB, 1)} MiB copied, ` +
          `${fmt(report.bytesCopied / (report.durationMs / 1e3) / 1e6)} MB/s; dirtied chunks identical: ${verified ? 'yes' : 'NO'}; load ${load1().toFixed(1)}`,
      )
    }
  } finally {
    await mirror.close()
  }
  return { runs, chunks, dirtyCount }
}

// ---------------------------------------------------------------------------------------

interface Files {
  m0: string
  m1: string
  slow: string
}

/** Part 1: the write workloads in every configuration, and the fio ceiling, in rotated rounds. */
async function writeTests(o: Options, dir: string, files: Files, withFio: boolean) {
  console.log('\n1. writes (MB/s per round)')
  const samples = new Map<string, Sample[]>()
  const fioSamples = new Map<WorkloadKey, FioSample[]>()
  const key = (c: ConfigKey, w: WorkloadKey) => `${c}/${w}`
  // The 1-in-flight workload taken apart (lockstep.ts): the engine alone, and two page stores from Node.
  const engine = await buildExample('lockstep')
  if ('skipped' in engine) console.log(`  the engine-alone row is skipped: ${engine.skipped}`)
  const parts: LockstepPart[] = 'binary' in engine ? ['engine', 'stores'] : ['stores']
  const lockstep = new Map<LockstepPart, (LockstepSample & { load1: number })[]>(parts.map((p) => [p, []]))
  // The fio ceiling and the parts are more entries of the rotation.
  const entries: (Config | 'fio' | LockstepPart)[] = [...CONFIGS, ...(withFio ? ['fio' as const] : []), ...parts]
  const qd1 = WORKLOADS.find((x) => x.key === 'rand4k-qd1')!
  for (let round = 0; round < o.rounds; round++) {
    for (let i = 0; i < entries.length; i++) {
      const c = entries[(i + round) % entries.length]
      if (c === 'engine' || c === 'stores') {
        const pair: [string, string] = [files.m0, files.m1]
        const s = c === 'engine' && 'binary' in engine ? await engineLockstep(engine.binary, pair, o.region, o.durationS) : await storesLockstep(pair, o.region, o.durationS, 7 + round)
        lockstep.get(c)!.push({ ...s, load1: load1() })
        console.log(`  round ${round + 1}/${o.rounds} ${PART_LABELS[c].padEnd(38)} ${qd1.label.padEnd(30)} ${fmt(s.writes / s.seconds).padStart(7)} writes/s to both; load ${load1().toFixed(1)}`)
        continue
      }
      if (c === 'fio') {
        for (const wk of CEILING_WORKLOADS) {
          const w = WORKLOADS.find((x) => x.key === wk)!
          const s = await fio([files.m0, files.m1], o.region, 2 * w.depth, o.durationS)
          fioSamples.set(wk, [...(fioSamples.get(wk) ?? []), s])
          console.log(
            `  round ${round + 1}/${o.rounds} ${`fio, two files, depth ${2 * w.depth}`.padEnd(38)} ${w.label.padEnd(30)} ${fmt(s.iops / 2).padStart(7)} IOPS ÷ 2 (ceiling); load ${s.load1.toFixed(1)}`,
          )
        }
        continue
      }
      const mirror = await openConfig(c, dir, files, o)
      try {
        for (const [wi, w] of WORKLOADS.entries()) {
          const s = await runWorkload(mirror, w, o, 1 + round * 100 + wi)
          const k = key(c.key, w.key)
          samples.set(k, [...(samples.get(k) ?? []), s])
          console.log(
            `  round ${round + 1}/${o.rounds} ${c.label.padEnd(38)} ${w.label.padEnd(30)} ${fmt(s.bytes / s.seconds / 1e6, 1).padStart(7)} MB/s, ${fmt(s.writes / s.seconds)} IOPS; load ${s.load1.toFixed(1)}${s.drainMs > 0.5 ? `  (drain ${fmt(s.drainMs)} ms)` : ''}`,
          )
        }
      } finally {
        await mirror.close()
      }
    }
  }
  const results: WriteResult[] = []
  for (const w of WORKLOADS) for (const c of CONFIGS) results.push(summarize(c.key, w.key, samples.get(key(c.key, w.key))!))
  const get = (c: ConfigKey, w: WorkloadKey) => results.find((r) => r.config === c && r.workload === w)!

  const rows = [['workload', 'configuration', 'MB/s', 'IOPS', 'ack p50 µs', 'ack p99 µs', 'CPU µs/write', 'bitmap pages/1000', 'member flushes (ms)', 'behind', 'drain ms', 'per round MB/s']]
  for (const w of WORKLOADS) {
    for (const c of CONFIGS) {
      const r = get(c.key, w.key)
      rows.push([
        w.label,
        c.label,
        fmt(r.mbPerSec, 1),
        fmt(r.iops),
        fmt(r.p50Us),
        fmt(r.p99Us),
        fmt(r.cpuUsPerWrite),
        c.bitmap ? fmt(r.bitmapPagesPer1000, 1) : '–',
        `${r.memberFlushes} (${fmt(r.memberFlushMs)})`,
        c.writeBehind ? `${r.behindWrites}/${r.writes}, ≤${r.behindHighWater} in flight${r.fallbacks ? `, ${r.fallbacks} sync` : ''}` : '–',
        c.writeBehind ? fmt(r.drainMs) : '–',
        r.roundsMbPerSec.map((x) => fmt(x, 1)).join(' / '),
      ])
    }
  }
  console.log()
  console.log(table(rows, 2))

  const ratioRows = [['workload', 'ratio', 'value']]
  const ratios: Record<string, Record<string, number>> = {}
  for (const w of WORKLOADS) {
    const a = get('a', w.key)
    const b = get('b', w.key)
    const cs = get('c-sync', w.key)
    const cb = get('c-behind', w.key)
    const d = {
      'b/a MB/s': b.mbPerSec / a.mbPerSec,
      'b/a ack p50': b.p50Us / a.p50Us,
      'c-behind/c-sync MB/s': cb.mbPerSec / cs.mbPerSec,
      'c-behind/c-sync ack p50': cb.p50Us / cs.p50Us,
      'c-behind/c-sync ack p99': cb.p99Us / cs.p99Us,
      'c-behind/b MB/s': cb.mbPerSec / b.mbPerSec,
    }
    ratios[w.key] = d
    ratioRows.push([w.label, '(b) bitmap / (a) no bitmap, MB/s', d['b/a MB/s'].toFixed(2)])
    ratioRows.push([w.label, '(b) / (a), ack p50 µs', `${fmt(b.p50Us)} vs ${fmt(a.p50Us)} (${d['b/a ack p50'].toFixed(2)})`])
    ratioRows.push([w.label, '(c) behind / (c) sync, MB/s', d['c-behind/c-sync MB/s'].toFixed(2)])
    ratioRows.push([w.label, '(c) ack p50 µs, behind vs sync', `${fmt(cb.p50Us)} vs ${fmt(cs.p50Us)} (${d['c-behind/c-sync ack p50'].toFixed(3)})`])
    ratioRows.push([w.label, '(c) ack p99 µs, behind vs sync', `${fmt(cb.p99Us)} vs ${fmt(cs.p99Us)} (${d['c-behind/c-sync ack p99'].toFixed(3)})`])
    ratioRows.push([w.label, '(c) behind / (b), MB/s', d['c-behind/b MB/s'].toFixed(2)])
  }
  console.log()
  console.log(table(ratioRows, 2))

  // The issue-11 measures: mirror ÷ two-file fio ceiling, CPU per write against fio's, with bitmap ÷ without.
  const ceiling = withFio ? CEILING_WORKLOADS.map((wk) => summarizeFio(wk, 2 * WORKLOADS.find((x) => x.key === wk)!.depth, fioSamples.get(wk)!)) : []
  const ceilingRows = [['workload', 'ceiling IOPS', '(b) IOPS', '(b) ÷ ceiling', 'per round', '(a) ÷ ceiling', 'CPU µs/write (b)', 'fio CPU µs/io', '(b) ÷ fio CPU', '(b) ÷ (a)', 'per round', 'load (1 min)']]
  const perRound = (xs: number[], ys: number[]) => xs.map((x, i) => x / ys[i])
  for (const f of ceiling) {
    const w = WORKLOADS.find((x) => x.key === f.workload)!
    const a = get('a', f.workload)
    const b = get('b', f.workload)
    ceilingRows.push([
      w.label,
      fmt(f.ceilingIops),
      fmt(b.iops),
      (b.iops / f.ceilingIops).toFixed(2),
      spread(perRound(b.roundsIops, f.roundsCeilingIops)),
      (a.iops / f.ceilingIops).toFixed(2),
      fmt(b.cpuUsPerWrite, 1),
      fmt(f.cpuUsPerIo, 1),
      (b.cpuUsPerWrite / f.cpuUsPerIo).toFixed(1),
      (b.iops / a.iops).toFixed(2),
      spread(perRound(b.roundsIops, a.roundsIops)),
      [...b.roundsLoad, ...f.roundsLoad].map((x) => x.toFixed(1)).join(' '),
    ])
  }
  if (ceiling.length) {
    console.log(`\nagainst the two-file fio ceiling (fio libaio on both member files at twice the depth, IOPS ÷ 2); per round: median (min–max) of the rounds' ratios`)
    console.log(table(ceilingRows, 1))
  }
  const takenApart = takeApart(ceiling.find((f) => f.workload === qd1.key), lockstep, get('a', qd1.key), get('b', qd1.key))
  const goals: [string, string, string][] = []
  for (const f of ceiling) {
    const depth = f.depth / 2
    goals.push([`mirror (b) ÷ two-file fio ceiling, ${depth} in flight`, (get('b', f.workload).iops / f.ceilingIops).toFixed(2), depth === 1 ? '≥ 0.8' : '≥ 0.85'])
    goals.push([`CPU per write ÷ fio's, ${depth} in flight`, (get('b', f.workload).cpuUsPerWrite / f.cpuUsPerIo).toFixed(1), '–'])
  }
  for (const wk of CEILING_WORKLOADS) goals.push([`with bitmap ÷ without, ${WORKLOADS.find((x) => x.key === wk)!.label}`, (get('b', wk).iops / get('a', wk).iops).toFixed(2), '≥ 0.97'])
  return { results, ratios, ceiling, get, goals, takenApart }
}

type LockstepPart = 'engine' | 'stores'
const PART_LABELS: Record<LockstepPart, string> = { engine: 'engine alone (Rust, no Node)', stores: 'two page stores (Node)' }

/**
 * Prints the 1-in-flight workload taken apart: per row, writes to both files per second,
 * ÷ the ceiling (over all rounds, and the rounds' ratios: median, min–max) and CPU per
 * write to both; returns the same for the JSON output.
 */
function takeApart(f: FioResult | undefined, lockstep: Map<LockstepPart, (LockstepSample & { load1: number })[]>, a: WriteResult, b: WriteResult) {
  const rows: { what: string; iops: number; rounds: number[]; cpuUs: number; load: number[] }[] = []
  for (const [part, samples] of lockstep) {
    const writes = samples.reduce((s, x) => s + x.writes, 0)
    rows.push({
      what: PART_LABELS[part],
      iops: writes / samples.reduce((s, x) => s + x.seconds, 0),
      rounds: samples.map((x) => x.writes / x.seconds),
      cpuUs: (samples.reduce((s, x) => s + x.cpuSeconds, 0) * 1e6) / writes,
      load: samples.map((x) => x.load1),
    })
  }
  for (const [what, r] of [['mirror (a), no bitmap', a], ['mirror (b), bitmap', b]] as const) rows.push({ what, iops: r.iops, rounds: r.roundsIops, cpuUs: r.cpuUsPerWrite, load: r.roundsLoad })
  const table1 = [['4 KiB random, 1 in flight', 'writes/s to both', '÷ ceiling', 'per round', 'CPU µs per write to both', 'load (1 min)']]
  if (f) table1.push(['fio ceiling (depth 2, IOPS ÷ 2)', fmt(f.ceilingIops), '1.00', '', `${fmt(2 * f.cpuUsPerIo, 1)} (fio, two I/Os)`, f.roundsLoad.map((x) => x.toFixed(1)).join(' ')])
  for (const r of rows) {
    table1.push([r.what, fmt(r.iops), f ? (r.iops / f.ceilingIops).toFixed(2) : '–', f ? spread(r.rounds.map((x, i) => x / f.roundsCeilingIops[i])) : '', fmt(r.cpuUs, 1), r.load.map((x) => x.toFixed(1)).join(' ')])
  }
  console.log('\nthe mirror at 1 in flight taken apart: the same writes with less of the stack above the disk')
  console.log(table(table1, 1))
  return rows.map((r) => ({ what: r.what, iops: r.iops, overCeiling: f ? r.iops / f.ceilingIops : null, roundsOverCeiling: f ? r.rounds.map((x, i) => x / f.roundsCeilingIops[i]) : null, cpuUsPerWrite: r.cpuUs }))
}

/** Part 2: bitmap recoveries, full recoveries (4 chunks in flight and 1) and dd, in rotated rounds. */
async function resyncTests(o: Options, dir: string, files: Files, withDd: boolean) {
  console.log(`\n2. resync of a ${o.size / MiB} MiB mirror, ${o.resyncChunk / KiB} KiB chunks: 1 % dirtied while member 1 was out, against a full recovery`)
  const resync = await resyncTest(dir, files.m0, files.m1, o, withDd)
  const partial = resync.runs.filter((r) => r.kind === 'bitmap')
  const fulls = resync.runs.filter((r) => r.kind === 'full')
  const full = fulls[0]
  const partialMs = partial.reduce((s, r) => s + r.wallMs, 0) / partial.length
  console.log(
    `  ${resync.dirtyCount} of ${resync.chunks} chunks dirtied; bitmap recovery ${fmt(partialMs)} ms (mean of ${partial.length}) vs full ${fmt(full.wallMs)} ms: ` +
      `${(full.wallMs / partialMs).toFixed(1)}x faster, ${fmt(partial[0].report!.bytesCopied / MiB, 1)} MiB vs ${fmt(full.report!.bytesCopied / MiB, 1)} MiB copied ` +
      `(${(full.report!.bytesCopied / partial[0].report!.bytesCopied).toFixed(1)}x fewer bytes)`,
  )
  // Per round: dd's time ÷ the full resync's (≥ 1: the resync is as fast as dd), and 4 chunks in flight against 1.
  const ofRound = (kind: ResyncKind) => Array.from({ length: o.rounds }, (_, r) => resync.runs.find((x) => x.kind === kind && x.round === r)!)
  const fullOverDd = withDd ? ofRound('dd').map((d, r) => d.copyMs / ofRound('full')[r].copyMs) : []
  const inFlightGain = ofRound('full-1').map((one, r) => one.copyMs / ofRound('full')[r].copyMs)
  const mbps = (r: ResyncRun) => fmt(resync.chunks * o.resyncChunk / (r.copyMs / 1e3) / 1e6)
  console.log(
    `  full resync, 4 chunks in flight: ${ofRound('full').map(mbps).join(' / ')} MB/s; 1 in flight: ${ofRound('full-1').map(mbps).join(' / ')} MB/s` +
      (withDd ? `; dd: ${ofRound('dd').map(mbps).join(' / ')} MB/s` : '') +
      `; loads ${resync.runs.map((r) => r.load1.toFixed(1)).join(' ')}`,
  )
  if (withDd) console.log(`  full resync ÷ dd (dd's time ÷ the resync's), per round: ${fullOverDd.map((x) => x.toFixed(2)).join(' / ')}; median ${spread(fullOverDd)}`)
  console.log(`  4 in flight ÷ 1 in flight (time of 1 ÷ time of 4), per round: ${inFlightGain.map((x) => x.toFixed(2)).join(' / ')}`)
  return { ...resync, full, partialMs, fullOverDd, inFlightGain }
}

async function main(): Promise<void> {
  const o = parseArgs(process.argv.slice(2))
  const dir = workDir(o.dir, 'md-bitmap-bench-mirror-')
  const started = new Date()
  const tStart = now()
  const load0 = readLoad()
  const files: Files = { m0: path.join(dir, 'm0.img'), m1: path.join(dir, 'm1.img'), slow: path.join(dir, 'slow.img') }
  await FileMember.ensure(files.m0, o.size)
  const info = await check(files.m0)
  console.log(
    `md-bitmap bench:mirror  ${os.availableParallelism()} cpus, ${os.release()}, ${info.fsType} in ${o.dir}, node ${process.version}${o.quick ? ', quick' : ''}\n` +
      `members ${o.size / MiB} MiB each (sparse); write region ${o.region / MiB} MiB; ${o.durationS} s per workload per round, ${o.rounds} round(s); slow member +${o.slowMs} ms per write`,
  )
  const withFio = o.fio && (await installed('fio'))
  const withDd = o.fio && (await installed('dd'))
  if (o.fio && !(withFio && withDd)) console.log(`not installed, skipped: ${[withFio ? '' : 'fio (the ceiling)', withDd ? '' : 'dd (the resync reference)'].filter(Boolean).join(', ')}`)
  let t = now()
  await prefill([files.m0, files.m1], o.size, o.size)
  if (o.only !== 'resync') await prefill([files.slow], o.region, o.size)
  console.log(`prefill: ${((2 * o.size + (o.only === 'resync' ? 0 : o.region)) / MiB).toFixed(0)} MiB written in ${((now() - t) / 1e6).toFixed(1)} s`)

  // -- 1. writes ------------------------------------------------------------------
  const writes = o.only === 'resync' ? undefined : await writeTests(o, dir, files, withFio)

  // -- 2. resync ------------------------------------------------------------------
  t = now()
  const resync = o.only === 'writes' ? undefined : await resyncTests(o, dir, files, withDd)
  const resyncSeconds = (now() - t) / 1e6

  // -- the goals of issue 11, as this run measured them ------------------------------
  const goals: [string, string, string][] = []
  if (writes) goals.push(...writes.goals)
  if (resync?.fullOverDd.length) goals.push(['full resync ÷ dd, same bytes (median of rounds)', spread(resync.fullOverDd), '≥ 1.0'])
  console.log('\nissue 11 goals, this run:')
  console.log(table([['measure', 'value', 'goal'], ...goals], 1))


  const load1 = readLoad()
  const totalS = (now() - tStart) / 1e6
  const out = {
    benchmark: 'bench:mirror',
    command: `npm run bench:mirror${process.argv.length > 2 ? ' -- ' + process.argv.slice(2).join(' ') : ''}`,
    startedAt: started.toISOString(),
    finishedAt: new Date().toISOString(),
    totalSeconds: totalS,
    machine: {
      ...machine(),
      fsType: info.fsType,
      dir: o.dir,
      loadavgBefore: load0.loadavg,
      loadavgAfter: load1.loadavg,
      pressureBefore: load0.pressure,
      pressureAfter: load1.pressure,
      mdBitmapIoThreads: process.env.MD_BITMAP_IO_THREADS ?? null,
    },
    params: { ...o, writeChunk: WRITE_CHUNK, behindLimit: BEHIND_LIMIT },
    writes: writes?.results,
    ratios: writes?.ratios,
    takenApart: writes?.takenApart,
    ceiling: writes?.ceiling.map((f) => {
      const a = writes.get('a', f.workload)
      const b = writes.get('b', f.workload)
      return { ...f, bOverCeiling: b.iops / f.ceilingIops, aOverCeiling: a.iops / f.ceilingIops, bCpuOverFio: b.cpuUsPerWrite / f.cpuUsPerIo, bOverA: b.iops / a.iops }
    }),
    resync: resync && {
      chunks: resync.chunks,
      dirtyChunks: resync.dirtyCount,
      runs: resync.runs,
      seconds: resyncSeconds,
      fullOverBitmap: resync.full.wallMs / resync.partialMs,
      fullOverDd: resync.fullOverDd,
      inFlight4Over1: resync.inFlightGain,
    },
  }
  fs.mkdirSync(path.dirname(o.out), { recursive: true })
  fs.writeFileSync(o.out, JSON.stringify(out, (_k, v) => (typeof v === 'bigint' ? v.toString() : v), 2) + '\n')
  // The chart is of the write workloads: a resync-only run leaves it alone.
  if (writes) {
    fs.mkdirSync(path.dirname(o.chart), { recursive: true })
    fs.writeFileSync(
      o.chart,
      barChart(
        WORKLOADS.map((w) => ({ label: w.label, bars: CONFIGS.map((c) => ({ label: c.label, value: writes.get(c.key, w.key).p50Us / 1000 })) })),
        {
          title: `Mirror write ack latency, p50 (slow member +${o.slowMs} ms)`,
          unit: 'ms',
          log: true,
          note:
            `${out.command}, ${started.toISOString().slice(0, 16).replace('T', ' ')} UTC, ${os.availableParallelism()} CPUs, load ${load0.loadavg[0].toFixed(1)}` +
            (resync ? `; resync of 1 % dirty: ${(resync.full.wallMs / resync.partialMs).toFixed(0)}x faster than full` : ''),
        },
      ),
    )
  }
  console.log(`\ntotal ${totalS.toFixed(0)} s; wrote ${path.relative(process.cwd(), o.out) || o.out}; ${loadChange(load0, load1)}`)
}

main().catch((e) => {
  console.error(e)
  process.exit(1)
})
