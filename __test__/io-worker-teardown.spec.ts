/**
 * A worker thread terminated while its reads and writes are in flight: the kernel may
 * still be writing into the worker's buffers, so its engine must drain them before the
 * thread's heap goes, without calling into the dead environment. Each mode runs in a
 * process of its own (fixtures/teardown-worker.ts), which must end healthy with every
 * page of the file whole and nothing of the workers' left open, under each engine and
 * with the completion thread.
 */
import test from 'ava'
import { spawn } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { PAGE, writeWhole } from './helpers/io'
import { diskTempDir, removeDir } from './helpers/tmp'

const FIXTURE = join(__dirname, 'fixtures', 'teardown-worker.ts')
const ROUNDS = 6
const PAGES = 1024

const MODES = [
  { engine: 'uring', reaper: 'loop' },
  { engine: 'aio', reaper: 'loop' },
  { engine: 'threads', reaper: 'loop' },
  { engine: 'uring', reaper: 'thread' },
]

for (const { engine, reaper } of MODES) {
  test(`${engine}, reaper ${reaper}: workers terminated with I/O in flight leave the process healthy and the file whole`, async (t) => {
    const dir = diskTempDir('md-bitmap-teardown-')
    try {
      const file = join(dir, 'pages')
      writeWhole(file, new Uint8Array(PAGES * PAGE))
      const env = { ...process.env, MD_BITMAP_IO_ENGINE: engine, MD_BITMAP_IO_REAPER: reaper }
      const p = spawn(process.execPath, ['--import', 'tsx', FIXTURE, file, String(ROUNDS)], { env, stdio: ['ignore', 'pipe', 'pipe'] })
      let out = ''
      let err = ''
      p.stdout.on('data', (d) => (out += d))
      p.stderr.on('data', (d) => (err += d))
      const [code, signal] = await new Promise<[number | null, string | null]>((r) => p.on('close', (c, s) => r([c, s])))
      t.is(signal, null, `the process died of ${signal}: ${err}`)
      t.is(code, 0, `${out}${err}`)
      const r = JSON.parse(out.trim().split('\n').pop()!)
      t.is(r.rounds, ROUNDS)
      t.deepEqual(r.seen, [`${engine}/${reaper}`], 'every worker used the forced engine and reaper')
      t.true(r.pageZeroOk, 'the main thread still writes and reads the file')
      // Each worker's store, eventfd and ring are released once its I/O has drained (a
      // leak is 2-3 descriptors a round; 2 allows for a stray one of Node's own).
      t.true(r.fdsLeft <= 2, `${r.fdsLeft} descriptors left open by ${ROUNDS - 1} terminated workers`)
      const data = readFileSync(file)
      const bad: number[] = []
      for (let i = 1; i < PAGES; i++) {
        const v = data[i * PAGE]
        const whole = data.subarray(i * PAGE, (i + 1) * PAGE).every((b) => b === v)
        if (!whole || v > ROUNDS) bad.push(i)
      }
      t.deepEqual(bad, [], 'every page holds one round\'s byte throughout')
    } finally {
      removeDir(dir)
    }
  })
}
