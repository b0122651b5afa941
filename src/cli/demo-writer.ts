/**
 * The demo's writer: the child process `md-bitmap demo` starts and kills.
 *
 *   node demo-writer.js BITMAP SLOW_MS RUN SEED WORKERS WINDOW_BYTES SPEED_BYTES_PER_S
 *
 * Opens the mirror (the write-mostly member slowed, as the parent opens it), prints
 * `ready`, then writes until killed: WORKERS loops, each writing the blocks it owns
 * (block % WORKERS) inside a hot window of WINDOW_BYTES that moves through the device
 * at SPEED bytes per second, one write at a time, each a new generation of its block.
 * It prints, one line each (stdout writes to a pipe are synchronous, so a line printed
 * before the SIGKILL reaches the parent):
 *
 *   A <block> <gen> <ack ms>      the write was acknowledged (mirror.write resolved)
 *   S <ms>                        the slow member completed a write (its latency)
 *   T <writes> <behind> <fallbackLimit> <fallbackMemory>   mirror stats, every 100 ms
 *
 * @internal
 * @module
 */
import { Mirror } from '../mirror/mirror'
import { BLOCK, blockData, demoOpenMember } from './demo-shared'

async function main(): Promise<void> {
  const [bitmap, slowArg, runArg, seedArg, workersArg, windowArg, speedArg] = process.argv.slice(2)
  const run = Number(runArg) >>> 0
  const workers = Number(workersArg)
  const windowBytes = Number(windowArg)
  const speed = Number(speedArg)
  let seed = Number(seedArg) >>> 0 || 1
  const rand = () => {
    seed ^= seed << 13
    seed >>>= 0
    seed ^= seed >>> 17
    seed ^= seed << 5
    seed >>>= 0
    return seed / 2 ** 32
  }
  const out = (line: string) => process.stdout.write(line + '\n')
  const mirror = await Mirror.open({ bitmap, openMember: demoOpenMember(Number(slowArg), (ms) => out(`S ${ms.toFixed(3)}`)) })
  mirror.on('error', (e: Error & { code?: string }) => out(`E ${e.code} ${e.message}`))
  const blocks = Math.floor(mirror.size / BLOCK)
  const windowBlocks = Math.max(workers, Math.min(blocks, Math.floor(windowBytes / BLOCK)))
  const gens = new Uint32Array(blocks)
  const t0 = performance.now()
  const stats = () => {
    const s = mirror.stats()
    out(`T ${s.writes} ${s.behindWrites} ${s.behindFallbacks.limit} ${s.behindFallbacks.memory}`)
  }
  setInterval(stats, 100).unref()
  out('ready')
  const worker = async (w: number) => {
    for (;;) {
      const start = Math.floor((((performance.now() - t0) / 1000) * speed) / BLOCK)
      // One of this worker's blocks (block % workers === w) inside the window, which
      // wraps around at the device's end.
      const j = Math.floor(rand() * Math.ceil(windowBlocks / workers))
      const block = ((Math.floor(start / workers) + j) * workers + w) % blocks
      if (block % workers !== w) continue
      const gen = ++gens[block]
      const data = blockData(run, block, gen)
      const t = performance.now()
      await mirror.write(data, block * BLOCK)
      out(`A ${block} ${gen} ${(performance.now() - t).toFixed(3)}`)
    }
  }
  await Promise.all(Array.from({ length: workers }, (_, w) => worker(w)))
}

main().catch((e: Error & { code?: string }) => {
  process.stderr.write(`md-bitmap: ${e.code ?? 'EINTERNAL'}: demo writer: ${e.message}\n`)
  process.exit(1)
})
