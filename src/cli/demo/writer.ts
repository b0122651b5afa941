/**
 * The demo's writer: the child process `md-bitmap demo` starts and kills.
 *
 *   node writer.js BITMAP SLOW_MS SEED WORKERS WINDOW_BYTES SPEED_BYTES_PER_S
 *
 * Opens the mirror (the write-mostly member slowed, as the parent opens it), prints
 * `ready`, then writes until killed: WORKERS loops, each writing the blocks it owns
 * (block % WORKERS) inside a hot window of WINDOW_BYTES that moves through the device
 * at SPEED bytes per second, one write at a time, each a new generation of its block.
 * A write carries tagged sectors (`tagged-data.ts`) whose id is the block's generation,
 * so the parent can tell, sector by sector, which write of a block the disk holds. It
 * prints, one line each, with {@link printLine} (synchronous: a line printed before
 * the SIGKILL reaches the parent):
 *
 *   A <block> <gen> <ack ms>      the write was acknowledged (mirror.write resolved)
 *   S <ms>                        the slow member completed a write (its latency)
 *   T <writes> <behind> <fallbackLimit> <fallbackMemory>   mirror stats, every 100 ms
 *   E <code> <message>            the mirror reported an error
 *
 * @internal
 * @module
 */
import { toMdBitmapError } from '../../errors'
import { allocAligned } from '../../io/aligned'
import { Mirror } from '../../mirror/mirror'
import { errorLine } from '../errors'
import { BLOCK, demoOpenMember } from './members'
import { printLine } from './print-line'
import { Prng } from './prng'
import { tagSectors } from './tagged-data'

async function main(): Promise<void> {
  const [bitmap, slowArg, seedArg, workersArg, windowArg, speedArg] = process.argv.slice(2)
  const workers = Number(workersArg)
  const windowBytes = Number(windowArg)
  const speed = Number(speedArg)
  const prng = new Prng(Number(seedArg))
  const mirror = await Mirror.open({ bitmap, openMember: demoOpenMember(Number(slowArg), (ms) => printLine(`S ${ms.toFixed(3)}`)) })
  mirror.on('error', (e: Error & { code?: string }) => printLine(`E ${e.code} ${e.message}`))
  const blocks = Math.floor(mirror.size / BLOCK)
  const windowBlocks = Math.max(workers, Math.min(blocks, Math.floor(windowBytes / BLOCK)))
  const gens = new Uint32Array(blocks)
  const t0 = performance.now()
  const stats = () => {
    const s = mirror.stats()
    printLine(`T ${s.writes} ${s.behindWrites} ${s.behindFallbacks.limit} ${s.behindFallbacks.memory}`)
  }
  setInterval(stats, 100).unref()
  printLine('ready')
  const worker = async (w: number) => {
    for (;;) {
      const start = Math.floor((((performance.now() - t0) / 1000) * speed) / BLOCK)
      // One of this worker's blocks (block % workers === w) inside the window, which
      // wraps around at the device's end.
      const j = prng.below(Math.ceil(windowBlocks / workers))
      const block = ((Math.floor(start / workers) + j) * workers + w) % blocks
      if (block % workers !== w) continue
      const gen = ++gens[block]
      const data = allocAligned(BLOCK)
      tagSectors(data, gen, block * BLOCK)
      const t = performance.now()
      await mirror.write(data, block * BLOCK)
      printLine(`A ${block} ${gen} ${(performance.now() - t).toFixed(3)}`)
    }
  }
  await Promise.all(Array.from({ length: workers }, (_, w) => worker(w)))
}

main().catch((e: unknown) => {
  process.stderr.write(errorLine(toMdBitmapError(e, { fallback: 'EINTERNAL', context: 'demo writer' })) + '\n')
  process.exit(1)
})
