/**
 * The depth-1 write + fdatasync cycle, taken apart (`npm run bench:io`, after the main
 * rounds): 4 KiB written at a random offset, awaited, then fdatasync, awaited; the same
 * cycle with less of the stack above the disk, and two ways of making it durable.
 *
 * - `fio libaio`: fio's job for the `fdatasync` pattern at depth 1; its fdatasync is a
 *   system call in fio's thread;
 * - `fio io_uring`: the same job with `--ioengine=io_uring`, whose fdatasync is an
 *   io_uring operation (run by a kernel worker thread);
 * - `engine, sync through io_uring` and `engine, sync by system call`: the native engine
 *   alone, no Node (crates/md-bitmap-io/examples/syncstep.rs, built here with cargo);
 * - the page store from Node is the `native` row of the main table at depth 1.
 *
 * @module
 */
import { execFileP } from './common'

/** One timed run of write + fdatasync cycles. */
export interface CycleSample {
  cycles: number
  seconds: number
  /** User + system CPU time of the process doing the I/O. */
  cpuSeconds: number
}

export type CyclePart = 'fio libaio' | 'fio io_uring' | 'engine, sync through io_uring' | 'engine, sync by system call'
export const CYCLE_PARTS: CyclePart[] = ['fio libaio', 'fio io_uring', 'engine, sync through io_uring', 'engine, sync by system call']

/** One part for `seconds` on `file`, whose first `region` bytes are written. */
export async function runCyclePart(part: CyclePart, binary: string | null, file: string, region: number, seconds: number): Promise<CycleSample> {
  if (part === 'fio libaio' || part === 'fio io_uring') {
    const args = [
      '--name=cycle',
      `--filename=${file}`,
      `--size=${region}`,
      '--fallocate=none',
      '--rw=randwrite',
      '--norandommap',
      '--randrepeat=0',
      '--bs=4096',
      '--direct=1',
      `--ioengine=${part === 'fio libaio' ? 'libaio' : 'io_uring'}`,
      '--iodepth=1',
      '--fdatasync=1',
      '--time_based',
      `--runtime=${Math.max(1, Math.round(seconds * 1000))}ms`,
      '--output-format=json',
    ]
    const { stdout } = await execFileP('fio', args, { maxBuffer: 64 << 20 })
    const job = JSON.parse(stdout.slice(stdout.indexOf('{'))).jobs[0]
    if (job.error) throw new Error(`fio job error ${job.error}`)
    const s = job.write.runtime / 1000
    return { cycles: job.write.total_ios, seconds: s, cpuSeconds: ((job.usr_cpu + job.sys_cpu) / 100) * s }
  }
  if (!binary) throw new Error(`${part}: the syncstep example was not built`)
  const { stdout } = await execFileP(binary, [file, String(region), String(seconds), part === 'engine, sync by system call' ? 'syscall' : 'uring'])
  const r = JSON.parse(stdout) as { cycles: number; seconds: number; userUs: number; systemUs: number }
  return { cycles: r.cycles, seconds: r.seconds, cpuSeconds: (r.userUs + r.systemUs) / 1e6 }
}
