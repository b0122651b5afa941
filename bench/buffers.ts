/**
 * Large direct writes from the two kinds of buffer a caller can allocate
 * (`npm run bench:buffers`): `allocAligned` (ordinary memory, 4 KiB pages wherever the
 * kernel put them) against `allocHugePageBuffers` (memory backed by 2 MiB transparent
 * huge pages). A direct write hands the device its buffer's pages as they lie in
 * physical memory; on this project's virtio disk a buffer of scattered small pages
 * made the same write run at about half the speed (docs/benchmarks.md, "The disk's two
 * speeds are the buffer's pages").
 *
 * In one run, on the same files (a region written in full first, so no row pays for
 * block allocation), these rows rotate round after round, each for `--duration`
 * seconds, every one with a buffer allocated afresh for its turn:
 *   - `mirror`: `Mirror.write` of 1 MiB, sequential over the region, 1 in flight, a
 *     mirror of two file members with a bitmap of 64 MiB chunks (bench:mirror's (b));
 *   - `page store`: `PageStore.write` of 1 MiB on one of the files, the same way;
 *   each from an `allocAligned` buffer and from an `allocHugePageBuffers` one, and the
 *   mirror also from an unaligned one (a plain Uint8Array one byte into its memory,
 *   which the mirror copies into an aligned buffer of its own for each write);
 *   - `dd`: `dd if=/dev/zero oflag=direct bs=1M` over the region (dd's own buffer), the
 *     outside reference.
 * Printed: MB/s and CPU per MiB written (this process's user + system time; dd's
 * through its rusage), median (min–max) of the rounds; huge pages ÷ allocAligned per
 * round; the load before and after.
 *
 * Options:
 *   --dir DIR        where the files go (default: a temp dir under /var/tmp)
 *   --region MIB     the region written (default 1024)
 *   --duration S     seconds per row per round (default 3)
 *   --rounds R       default 6
 *   --out FILE       default bench/out/buffers.json
 *
 * @module
 */
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { randomFillSync } from 'node:crypto'
import { FileMember, Mirror, PageStore, allocAligned, allocHugePageBuffers } from '../src/index'
import { MiB, execFileP, fmt, loadChange, machine, parseOptions, readLoad, spread, table, workDir } from './common'

const USAGE = 'usage: npm run bench:buffers -- [--dir DIR] [--region MIB] [--duration S] [--rounds R] [--out FILE]'

type Target = 'mirror' | 'page store'
type BufferKind = 'allocAligned' | 'allocHugePageBuffers' | 'unaligned'
type RowKey = `${Target}, ${BufferKind}` | 'dd'
const ROWS: RowKey[] = ['mirror, allocAligned', 'mirror, allocHugePageBuffers', 'mirror, unaligned', 'page store, allocAligned', 'page store, allocHugePageBuffers', 'dd']

interface Sample {
  mib: number
  seconds: number
  cpuSeconds: number
  load1: number
}

const newBuffer: Record<BufferKind, () => Uint8Array> = {
  allocAligned: () => allocAligned(MiB),
  allocHugePageBuffers: () => allocHugePageBuffers(MiB, 1)[0],
  /** A plain Uint8Array one byte into its memory: the mirror bounces it through an aligned copy. */
  unaligned: () => new Uint8Array(MiB + 1).subarray(1),
}

/** 1 MiB writes through `write`, sequential over `region` from `cursor`, 1 in flight, for `seconds`. */
async function writeFor(write: (buf: Uint8Array, offset: number) => Promise<void>, kind: BufferKind, region: number, seconds: number, cursor: { at: number }): Promise<Sample> {
  const buf = newBuffer[kind]()
  randomFillSync(buf)
  const pieces = region / MiB
  const cpu0 = process.cpuUsage()
  const t0 = performance.now()
  let mib = 0
  while (performance.now() - t0 < seconds * 1000) {
    buf[0] = mib & 0xff
    await write(buf, (cursor.at++ % pieces) * MiB)
    mib++
  }
  const elapsed = (performance.now() - t0) / 1000
  const cpu = process.cpuUsage(cpu0)
  return { mib, seconds: elapsed, cpuSeconds: (cpu.user + cpu.system) / 1e6, load1: os.loadavg()[0] }
}

/** dd of `region` bytes of zeroes onto `file`, direct, 1 MiB at a time; its CPU from the shell's `times` (its children's user and system time). */
async function ddOnce(file: string, region: number): Promise<Sample> {
  const script = `dd if=/dev/zero of="$1" bs=1M count="$2" oflag=direct conv=notrunc status=none; times`
  const t0 = performance.now()
  const { stdout } = await execFileP('sh', ['-c', script, 'dd', file, String(region / MiB)])
  const elapsed = (performance.now() - t0) / 1000
  // `times`: the shell's own user/system, then its children's: "0m0.001s 0m0.002s\n0m0.010s 0m0.300s".
  const lines = stdout.trim().split('\n')
  const secs = (s: string) => {
    const m = /(\d+)m([\d.]+)s/.exec(s)
    return m ? Number(m[1]) * 60 + Number(m[2]) : 0
  }
  const children = (lines[lines.length - 1] ?? '').split(/\s+/)
  return { mib: region / MiB, seconds: elapsed, cpuSeconds: secs(children[0] ?? '') + secs(children[1] ?? ''), load1: os.loadavg()[0] }
}

async function main(): Promise<void> {
  const p = parseOptions(process.argv.slice(2), { dir: 'value', region: 'value', duration: 'value', rounds: 'value', out: 'value' }, USAGE)
  const region = p.number('region', 1024) * MiB
  const seconds = p.number('duration', 3)
  const rounds = p.number('rounds', 6)
  const out = p.value('out') ?? path.join(__dirname, 'out', 'buffers.json')
  if (!Number.isInteger(region / MiB) || region < MiB) throw new Error(`--region must be a whole number of MiB, at least 1\n${USAGE}`)
  if (!(seconds > 0) || !Number.isInteger(rounds) || rounds < 1) throw new Error(`bad --duration or --rounds\n${USAGE}`)
  const dir = workDir(p.value('dir') ?? '/var/tmp', 'md-bitmap-bench-buffers-')
  const files = [path.join(dir, 'm0'), path.join(dir, 'm1')]
  const load0 = readLoad()
  console.log(`bench:buffers: ${JSON.stringify(machine())}; region ${region / MiB} MiB, ${rounds} rounds of ${seconds} s per row`)

  // The region written in full once on both files, through the mirror, so no row allocates blocks.
  for (const f of files) await FileMember.ensure(f, region)
  const mirror = await Mirror.create({
    bitmap: path.join(dir, 'bitmap'),
    metadata: path.join(dir, 'mirror.json'),
    members: files.map((f) => ({ path: f })),
    size: region,
    chunkSize: 64 * MiB,
    assumeClean: true,
    overwrite: true,
  })
  const fill = allocHugePageBuffers(MiB, 1)[0]
  for (let at = 0; at < region; at += MiB) await mirror.write(fill, at)
  await mirror.flush()
  const store = await PageStore.open(files[1])

  const samples = new Map<RowKey, Sample[]>(ROWS.map((r) => [r, []]))
  const cursor = { at: 0 }
  try {
    for (let round = 0; round < rounds; round++) {
      const order = ROWS.map((_, i) => ROWS[(i + round) % ROWS.length])
      for (const row of order) {
        let s: Sample
        if (row === 'dd') s = await ddOnce(files[0], region)
        else {
          const [target, kind] = row.split(', ') as [Target, BufferKind]
          const write = target === 'mirror' ? (b: Uint8Array, o: number) => mirror.write(b, o) : (b: Uint8Array, o: number) => store.write(b, o)
          s = await writeFor(write, kind, region, seconds, cursor)
        }
        samples.get(row)!.push(s)
        process.stdout.write(`  round ${round + 1}/${rounds} ${row.padEnd(34)} ${fmt(s.mib / s.seconds).padStart(6)} MB/s ${fmt((s.cpuSeconds * 1e6) / s.mib).padStart(6)} CPU µs/MiB, load ${s.load1.toFixed(2)}\n`)
      }
    }
  } finally {
    await store.close()
    await mirror.close()
  }
  const load1 = readLoad()

  const rate = (s: Sample) => s.mib / s.seconds
  const rows: string[][] = [['row', 'MB/s, median (min–max) of rounds', 'CPU µs/MiB', 'huge pages ÷ allocAligned, per round']]
  for (const row of ROWS) {
    const ss = samples.get(row)!
    const cpu = ss.reduce((a, s) => a + s.cpuSeconds, 0) / ss.reduce((a, s) => a + s.mib, 0)
    let ratio = ''
    if (row.endsWith('allocHugePageBuffers')) {
      const small = samples.get(row.replace('allocHugePageBuffers', 'allocAligned') as RowKey)!
      ratio = spread(ss.map((s, i) => rate(s) / rate(small[i])))
    }
    rows.push([row, spread(ss.map(rate), 0, (x) => fmt(x)), fmt(cpu * 1e6), ratio])
  }
  console.log('\n' + table(rows, 1, true))
  console.log(`\nMB/s: MiB written ÷ seconds (1 MiB = 2^20 bytes). dd writes the whole region each round from its own buffer; its CPU is its user + system time.`)
  fs.mkdirSync(path.dirname(out), { recursive: true })
  fs.writeFileSync(out, JSON.stringify({ machine: machine(), region, seconds, rounds, samples: Object.fromEntries(samples), load: { before: load0, after: load1 } }, null, 2) + '\n')
  console.log(`wrote ${path.relative(process.cwd(), out) || out}; ${loadChange(load0, load1)}`)
}

main().catch((e) => {
  console.error(e)
  process.exit(1)
})
