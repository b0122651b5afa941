/**
 * The depth-1 write + fdatasync cycle, taken apart (`npm run bench:io`, after the main
 * rounds): 4 KiB written at a random offset, awaited, then fdatasync, awaited; the same
 * cycle with less of the stack above the disk, and two ways of making it durable.
 *
 * - `fio libaio`: bench:io's fio job for the `fdatasync` pattern at depth 1; its
 *   fdatasync is a system call in fio's thread;
 * - `fio io_uring`: the same job with `--ioengine=io_uring`, whose fdatasync is an
 *   io_uring operation (run by a kernel worker thread);
 * - `engine, sync through io_uring` and `engine, sync by system call`: the native engine
 *   alone, no Node (crates/md-bitmap-io/examples/syncstep.rs, built here with cargo),
 *   write-through off (MD_BITMAP_WRITE_THROUGH=0), so that every sync is an fdatasync;
 * - `engine, write-through`: the same with write-through on, as a store has it by
 *   default (crates/md-bitmap-io/src/write_through.rs): after the first cycle each write
 *   goes O_DSYNC and each sync resolves without an fdatasync;
 * - the page store from Node is the `native` row of the main table at depth 1.
 *
 * @module
 */
import { runExample } from './cargo-example'

/** One timed run of write + fdatasync cycles. */
export interface CycleSample {
  cycles: number
  seconds: number
  /** User + system CPU time of the process doing the I/O. */
  cpuSeconds: number
}

export type CyclePart = 'fio libaio' | 'fio io_uring' | 'engine, sync through io_uring' | 'engine, sync by system call' | 'engine, write-through'
export const CYCLE_PARTS: CyclePart[] = ['fio libaio', 'fio io_uring', 'engine, sync through io_uring', 'engine, sync by system call', 'engine, write-through']

/**
 * One part for `seconds`: the fio parts through `fio` (bench:io's own job for the
 * pattern, with that I/O engine); the engine parts by the example `binary` on `file`,
 * whose first `region` bytes are written.
 */
export async function runCyclePart(
  part: CyclePart,
  seconds: number,
  fio: (ioengine: 'libaio' | 'io_uring') => Promise<{ writes: number; seconds: number; cpuSeconds: number }>,
  binary: string,
  file: string,
  region: number,
): Promise<CycleSample> {
  if (part === 'fio libaio' || part === 'fio io_uring') {
    const s = await fio(part === 'fio libaio' ? 'libaio' : 'io_uring')
    return { cycles: s.writes, seconds: s.seconds, cpuSeconds: s.cpuSeconds }
  }
  const env = part === 'engine, write-through' ? undefined : { MD_BITMAP_WRITE_THROUGH: '0' }
  const s = await runExample(binary, [file, String(region), String(seconds), part === 'engine, sync by system call' ? 'syscall' : 'uring'], 'cycles', env)
  return { cycles: s.rounds, seconds: s.seconds, cpuSeconds: s.cpuSeconds }
}
