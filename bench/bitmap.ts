/**
 * Bitmap benchmark (`npm run bench:bitmap`). In one run, on one bitmap file on the
 * same filesystem:
 *
 * 1. startWrite + endWrite pairs per second on chunks whose bits are already set
 *    (the hot path: counters only, no I/O).
 * 2. Page writes per 1000 startWrites into clean chunks, with 1, 8 and 32 callers in
 *    flight: the group-commit (batching) ratio. The chunks of one round lie in one
 *    page, the worst case for a bitmap without batching.
 * 3. Latency of a startWrite that must write a page, against a bare page write of
 *    the native store with the same durability (O_DSYNC), alternating in one loop.
 *
 * Options: --quick (fewer iterations), --dir DIR (a temp dir is made in it, default
 * /var/tmp), --out FILE (default bench/out/bitmap.json).
 */
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import { Bitmap, PageStore, allocAligned, check } from '../src/index'
import { loadChange, machine, parseOptions, percentile, readLoad, workDir } from './common'

const opts = parseOptions(process.argv.slice(2), { quick: 'flag', dir: 'value', out: 'value' }, 'usage: npm run bench:bitmap -- [--quick] [--dir DIR] [--out FILE]')
const quick = opts.flag('quick')
const dir = workDir(opts.value('dir') ?? '/var/tmp', 'md-bitmap-bench-')
const out = opts.value('out') ?? path.join(__dirname, 'out', 'bitmap.json')

const CHUNK = 64 * 1024
const SIZE = 64 * 2 ** 30 // 64 GiB of data: 1M chunks, a 128 KiB bitmap (32 pages)

async function hotPath(bitmap: Bitmap): Promise<{ pairsPerSec: number; pairs: number }> {
  // Dirty 64 chunks first, so the loop below never needs I/O.
  for (let c = 0; c < 64; c++) await bitmap.startWrite(c * CHUNK, 4096)
  const pairs = quick ? 200_000 : 1_000_000
  const t0 = process.hrtime.bigint()
  for (let i = 0; i < pairs; i++) {
    const off = (i % 64) * CHUNK
    await bitmap.startWrite(off, 4096)
    bitmap.endWrite(off, 4096)
  }
  const s = Number(process.hrtime.bigint() - t0) / 1e9
  for (let c = 0; c < 64; c++) bitmap.endWrite(c * CHUNK, 4096)
  return { pairsPerSec: pairs / s, pairs }
}

async function batching(bitmap: Bitmap, callers: number, base: number): Promise<{ callers: number; startWrites: number; pageWrites: number; perThousand: number }> {
  const total = quick ? 1000 : 4000
  const before = bitmap.stats().pagesWritten
  let next = 0
  // `callers` loops, each awaiting its own startWrite before the next: `callers` in flight.
  await Promise.all(
    Array.from({ length: callers }, async () => {
      while (next < total) {
        const c = base + next++
        await bitmap.startWrite(c * CHUNK, 4096)
        bitmap.endWrite(c * CHUNK, 4096)
      }
    }),
  )
  const pageWrites = bitmap.stats().pagesWritten - before
  return { callers, startWrites: total, pageWrites, perThousand: (pageWrites * 1000) / total }
}

async function latency(bitmap: Bitmap, store: PageStore): Promise<Record<string, number>> {
  const n = quick ? 300 : 2000
  const page = allocAligned(4096, store.alignment)
  const lat = { bitmap: [] as number[], bare: [] as number[] }
  for (let i = 0; i < n; i++) {
    const chunk = 600_000 + i // always a clean chunk, so always one page write
    // Alternate, so drift in the disk's behaviour hits both alike.
    let t = process.hrtime.bigint()
    await bitmap.startWrite(chunk * CHUNK, 4096)
    lat.bitmap.push(Number(process.hrtime.bigint() - t) / 1e3)
    bitmap.endWrite(chunk * CHUNK, 4096)
    t = process.hrtime.bigint()
    await store.write(page, (i % 32) * 4096)
    lat.bare.push(Number(process.hrtime.bigint() - t) / 1e3)
  }
  return {
    samples: n,
    bitmapP50us: percentile(lat.bitmap, 50),
    bitmapP99us: percentile(lat.bitmap, 99),
    bareP50us: percentile(lat.bare, 50),
    bareP99us: percentile(lat.bare, 99),
  }
}

async function main(): Promise<void> {
  const file = path.join(dir, 'bench.bitmap')
  const bare = path.join(dir, 'bare.img')
  fs.writeFileSync(bare, Buffer.alloc(32 * 4096, 1))
  fs.fsyncSync(fs.openSync(bare, 'r+'))
  const bitmap = await Bitmap.create(file, { size: SIZE, chunkSize: CHUNK, daemonSleep: 3600 })
  // The bare baseline has the bitmap's durability: O_DSYNC page writes.
  const store = await PageStore.open(bare, { dsync: true })
  const fsType = (await check(file)).fsType
  const load0 = readLoad()
  try {
    console.log(`md-bitmap bench:bitmap  ${os.availableParallelism()} cpus, ${os.release()}, ${fsType}, mode ${bitmap.stats().mode}, chunk ${CHUNK} B, ${bitmap.chunks} chunks${quick ? ', quick' : ''}`)
    const hot = await hotPath(bitmap)
    console.log(`\n1. startWrite+endWrite on dirty chunks: ${Math.round(hot.pairsPerSec).toLocaleString('en')} pairs/s (${hot.pairs} pairs)`)
    console.log('\n2. page writes per 1000 startWrites into clean chunks')
    const batch = []
    let base = 1000
    for (const callers of [1, 8, 32]) {
      const r = await batching(bitmap, callers, base)
      base += r.startWrites + 8 * 4096
      batch.push(r)
      console.log(`   ${String(callers).padStart(2)} in flight: ${r.pageWrites} page writes for ${r.startWrites} startWrites = ${r.perThousand.toFixed(1)} per 1000`)
    }
    console.log(`   batching ratio 32 vs 1 in flight: ${(batch[0].perThousand / batch[2].perThousand).toFixed(1)}x fewer page writes`)
    const lat = await latency(bitmap, store)
    console.log('\n3. latency of a startWrite that writes a page vs a bare page write (same run, alternating)')
    console.log(`   startWrite p50 ${lat.bitmapP50us.toFixed(0)} us, p99 ${lat.bitmapP99us.toFixed(0)} us`)
    console.log(`   bare write p50 ${lat.bareP50us.toFixed(0)} us, p99 ${lat.bareP99us.toFixed(0)} us`)
    console.log(`   ratio p50 ${(lat.bitmapP50us / lat.bareP50us).toFixed(2)}x, p99 ${(lat.bitmapP99us / lat.bareP99us).toFixed(2)}x`)
    const load1 = readLoad()
    console.log(`\n${loadChange(load0, load1)}`)
    fs.mkdirSync(path.dirname(out), { recursive: true })
    const m = machine()
    fs.writeFileSync(out, JSON.stringify({ date: new Date().toISOString(), quick, fsType, cpus: m.nproc, kernel: m.kernel, machine: m, loadBefore: load0, loadAfter: load1, hot, batch, latency: lat }, null, 2))
  } finally {
    await bitmap.close()
    await store.close()
  }
}

main().catch((e) => {
  console.error(e)
  process.exit(1)
})
