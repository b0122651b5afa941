/**
 * The engine soak: many short-lived processes, two at a time, each opening a page
 * store, keeping 32 writes to random pages in flight (with some fdatasyncs) for a
 * second, reading every page back and closing (fixtures/engine-store.ts `soak`).
 * Every one must end on its own, in time, with every page as last written and nothing
 * pending.
 *
 * What it guards: a completion whose wake-up is lost, or mishandled, leaves a process
 * waiting or spinning with nothing to rescue it. On 2026-11-30 a stale io_uring TASKRUN
 * flag made the reap spin for ever (uring.rs): 2 of 61 such children hung on this
 * machine with two running at once. A child still running at its deadline is described
 * from /proc (threads, system calls, the ring's heads and tails) and killed, and the
 * test fails with that description.
 *
 * MD_BITMAP_ENGINE_SOAK_CHILDREN sets how many (40 here; `npm run soak:engine` runs
 * 2000). The engine is the default unless MD_BITMAP_IO_ENGINE forces one.
 */
import test from 'ava'
import { join } from 'node:path'
import { PAGE, writeWhole } from './helpers/io'
import { runWithDeadline } from './helpers/proc-report'
import { diskTempDir, removeDir } from './helpers/tmp'

const FIXTURE = join(__dirname, 'fixtures', 'engine-store.ts')
const CHILDREN = Number(process.env.MD_BITMAP_ENGINE_SOAK_CHILDREN ?? 40)
const LANES = 2
const RUN_MS = 1000
/** A child writes for a second; one still running 30 s after its start is stuck. */
const DEADLINE_MS = 30_000
const FILE_PAGES = 16384

test(`engine soak: ${CHILDREN} short-lived processes, ${LANES} at a time, each writing at depth 32 for ${RUN_MS} ms, all end on their own with every page as written`, async (t) => {
  t.timeout(Math.max(180_000, (CHILDREN / LANES) * (DEADLINE_MS / 4)) + DEADLINE_MS)
  const dir = diskTempDir('md-bitmap-soak-')
  try {
    const files = Array.from({ length: LANES }, (_, lane) => {
      const file = join(dir, `pages-${lane}`)
      writeWhole(file, new Uint8Array(FILE_PAGES * PAGE))
      return file
    })
    const failures: string[] = []
    let writes = 0
    let syncs = 0
    let next = 0
    const engines = new Set<string>()
    await Promise.all(
      files.map(async (file) => {
        while (next < CHILDREN && failures.length === 0) {
          const seed = ++next
          const o = await runWithDeadline(['--import', 'tsx', FIXTURE, file, 'soak', String(RUN_MS), String(seed)], process.env, DEADLINE_MS)
          const last = o.stdout.trim().split('\n').pop() ?? ''
          let report: { engine?: string; writes?: number; syncs?: number; mismatches?: number[]; pending?: number; error?: unknown } = {}
          try {
            report = JSON.parse(last)
          } catch {
            // judged below
          }
          const ok = !o.stuck && o.code === 0 && report.mismatches?.length === 0 && report.pending === 0 && report.error === null
          if (!ok) {
            failures.push(`child ${seed}: ${o.stuck ? `still running after ${DEADLINE_MS} ms, killed\n${o.stuck}` : `exit ${o.code ?? o.signal}`}\nlast line: ${last}\nstderr: ${o.stderr.slice(-2000)}`)
            continue
          }
          engines.add(report.engine!)
          writes += report.writes!
          syncs += report.syncs!
        }
      }),
    )
    t.log(`${next} children, engine ${[...engines].join(', ')}: ${writes} writes, ${syncs} fdatasyncs`)
    t.deepEqual(failures, [])
    t.is(next, CHILDREN)
  } finally {
    removeDir(dir)
  }
})
