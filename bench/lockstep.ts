/**
 * The mirror at 1 in flight, taken apart (`npm run bench:mirror`, part 1): the same
 * work as a mirror write of two file members, with less and less of the stack above
 * the disk. Each round writes the same 4 KiB to both member files at one random
 * 4 KiB-aligned offset of the write region, and waits for both:
 *
 * - `engine`: the native engine alone, no Node (crates/md-bitmap-io/examples/lockstep.rs,
 *   built here with cargo): two page stores on one engine, driven as the Node reactor
 *   drives it (eventfd polled; per wake-up: reap, flush, rearm);
 * - `stores`: two {@link PageStore}s from Node, `Promise.all` of their writes: the
 *   engine plus the event loop, N-API and promises, without the mirror's data path.
 *
 * Between these, the fio ceiling and the mirror itself, the rows say where the time
 * of a mirror write at 1 in flight goes.
 *
 * @module
 */
import { PageStore, allocAligned } from '../src/index'
import { runExample } from './cargo-example'
import { Prng } from './common'

const PAGE = 4096

/** One timed run of lockstep writes. */
export interface LockstepSample {
  /** Rounds completed (each: one write to each of the two files). */
  writes: number
  seconds: number
  /** User + system CPU time of the process doing the writes. */
  cpuSeconds: number
}

/** The engine alone: the lockstep example on `files` for `seconds`. */
export async function engineLockstep(binary: string, files: [string, string], region: number, seconds: number): Promise<LockstepSample> {
  const s = await runExample(binary, [...files, String(region), String(seconds)], 'writes')
  return { writes: s.rounds, seconds: s.seconds, cpuSeconds: s.cpuSeconds }
}

/** Two page stores from Node, in this process: 0.5 s of warm-up, then `seconds` timed. */
export async function storesLockstep(files: [string, string], region: number, seconds: number, seed: number): Promise<LockstepSample> {
  const stores = [await PageStore.open(files[0]), await PageStore.open(files[1])]
  try {
    const prng = new Prng(seed)
    const buf = allocAligned(PAGE, Math.max(stores[0].alignment, stores[1].alignment))
    buf.fill(0x5a)
    const run = async (ms: number): Promise<number> => {
      const end = performance.now() + ms
      let n = 0
      while (performance.now() < end) {
        const offset = prng.below(region / PAGE) * PAGE
        await Promise.all([stores[0].write(buf, offset), stores[1].write(buf, offset)])
        n++
      }
      return n
    }
    await run(500)
    const cpu0 = process.cpuUsage()
    const t0 = performance.now()
    const writes = await run(seconds * 1e3)
    const t = (performance.now() - t0) / 1e3
    const cpu = process.cpuUsage(cpu0)
    return { writes, seconds: t, cpuSeconds: (cpu.user + cpu.system) / 1e6 }
  } finally {
    for (const s of stores) await s.close()
  }
}
