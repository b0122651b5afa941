/**
 * CPU per mirror write (`node --import tsx bench/mirror-cpu.ts`): a small driver for
 * profiling and comparing builds of the mirror's write path, one configuration per
 * process so that two builds can be run in alternation (rounds rotated by the caller).
 *
 * A mirror of two members takes 4 KiB writes at random 4 KiB-aligned offsets, `--depth`
 * in flight, for `--seconds` (after a 0.5 s warm-up); printed: writes per second and
 * the process's CPU time (user, system) per mirror write. With `--no-io` the members are
 * in-memory stand-ins whose writes complete at once, so what is left is the data path's
 * own JavaScript cost (fence, barrier, bitmap fast path, member write tracking): no
 * engine, no disk. Otherwise the members are two files of `--size` MiB in `--dir`
 * (written in full first), through the native engine.
 *
 * Options: --depth N (32) --seconds S (3) --size MIB (256) --dir DIR (/var/tmp)
 *          --no-bitmap --no-io --dist PATH (the build to load, default this checkout's
 *          src/; e.g. another checkout's dist/index.js, to compare builds)
 * Profile: node --cpu-prof --import tsx bench/mirror-cpu.ts --depth 32
 *
 * @module
 */
import { mkdtempSync, rmSync } from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import { KiB, MiB, Prng, parseOptions } from './common'
import * as local from '../src/index'

type Api = typeof local

const a = parseOptions(
  process.argv.slice(2),
  { depth: 'value', seconds: 'value', size: 'value', dir: 'value', 'no-bitmap': 'flag', 'no-io': 'flag', dist: 'value' },
  'usage: node --import tsx bench/mirror-cpu.ts [--depth N] [--seconds S] [--size MIB] [--dir DIR] [--no-bitmap] [--no-io] [--dist PATH]',
)
const depth = a.number('depth', 32)
const seconds = a.number('seconds', 3)
const size = a.number('size', 256) * MiB
const noIo = a.flag('no-io')
const bitmap = !a.flag('no-bitmap')

async function main(): Promise<void> {
  const dist = a.value('dist')
  const api: Api = dist ? ((await import(path.resolve(dist))) as Api) : local
  const dir = mkdtempSync(path.join(a.value('dir') ?? '/var/tmp', 'md-bitmap-bench-cpu-'))
  try {
    const files = [path.join(dir, 'm0'), path.join(dir, 'm1')]
    if (!noIo) await prefill(api, files)
    const inMemory: local.OpenMember = async (spec) => ({
      path: spec.path,
      size,
      alignment: 4096,
      read: () => Promise.resolve(),
      write: () => Promise.resolve(),
      flush: () => Promise.resolve(),
      close: () => Promise.resolve(),
    })
    const mirror = await api.Mirror.create({
      bitmap: bitmap ? path.join(dir, 'bitmap') : null,
      metadata: bitmap ? undefined : path.join(dir, 'metadata'),
      members: files.map((p) => ({ path: p })),
      size,
      chunkSize: 64 * MiB,
      assumeClean: true,
      overwrite: true,
      ...(noIo ? { openMember: inMemory } : {}),
    })
    const prng = new Prng(12345)
    const pages = size / (4 * KiB)
    let writes = 0
    const run = (until: number) =>
      Promise.all(
        Array.from({ length: depth }, async () => {
          const buf = api.allocAligned(4 * KiB, 4 * KiB)
          while (performance.now() < until) {
            await mirror.write(buf, prng.below(pages) * 4 * KiB)
            writes++
          }
        }),
      )
    await run(performance.now() + 500)
    writes = 0
    const cpu0 = process.cpuUsage()
    const t0 = performance.now()
    await run(t0 + seconds * 1000)
    const s = (performance.now() - t0) / 1000
    const cpu = process.cpuUsage(cpu0)
    await mirror.close()
    console.log(
      `${noIo ? 'no I/O' : 'files'}, ${bitmap ? 'bitmap' : 'no bitmap'}, depth ${depth}: ${Math.round(writes / s)} writes/s, ` +
        `CPU ${((cpu.user + cpu.system) / writes).toFixed(2)} µs/write (user ${(cpu.user / writes).toFixed(2)}, sys ${(cpu.system / writes).toFixed(2)}); load ${os.loadavg()[0].toFixed(1)}`,
    )
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
}

/** Both member files written in full, so no write allocates blocks. */
async function prefill(api: Api, files: string[]): Promise<void> {
  const buf = api.allocAligned(4 * MiB, 4 * KiB)
  for (const f of files) {
    await api.FileMember.ensure(f, size)
    const m = await api.FileMember.open(f)
    for (let o = 0; o < size; o += buf.length) await m.write(buf, o)
    await m.flush()
    await m.close()
  }
}

main().catch((e) => {
  console.error(e)
  process.exit(1)
})
