/**
 * What a SIGKILL leaves behind: the writes a killed process had submitted through
 * io_uring are not waited for by its death, so they can land after its parent saw it
 * end (its pipes closed, its pid reaped). A crash test that reads "the files as the
 * crash left them" at once may read them before the dead writer's last writes land:
 * mirror-crash then saw a resync copy chunks "clear on disk at the crash" whose bits
 * were in a page write still on its way. `settleWrites` (helpers/loopfs.ts: a freeze
 * and thaw of the filesystem, which waits for every write in progress) is what the
 * crash specs call after each kill.
 *
 * To make the window wide on demand, the writer (fixtures/late-writer.ts) runs in a
 * blkio cgroup whose throttle lets its writes reach the loop device under the
 * filesystem at 256 KiB/s, so writes it submitted stay queued for seconds after the
 * kill. Linux AIO and the thread pool are waited for by the process's death (the AIO
 * context is torn down only once its requests completed; a thread in a direct write
 * finishes it before it exits): with them nothing lands late.
 */
import { createHash } from 'node:crypto'
import { existsSync, mkdirSync, rmdirSync, statSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { killRunning, startCrashChild } from './helpers/crash-child'
import { fsCaps, requires } from './helpers/env'
import { readDirect, writeWhole } from './helpers/io'
import { settleWrites, withFs } from './helpers/loopfs'
import { sleep } from './helpers/wait'

const BLKIO = '/sys/fs/cgroup/blkio'
const SIZE = 4 * 2 ** 20
const hash = (b: Uint8Array) => createHash('sha256').update(b).digest('hex')

const t = requires(['root', 'loop', 'fsfreeze', ...fsCaps('ext4')])
t("a SIGKILLed writer's io_uring writes land after it ended; settleWrites waits for them", async (t) => {
  t.timeout(120_000)
  t.teardown(killRunning)
  if (!existsSync(join(BLKIO, 'blkio.throttle.write_bps_device'))) return t.fail(`no cgroup v1 blkio throttle at ${BLKIO}: cannot slow one process's writes`)
  await withFs('ext4', 32, async (mnt, dev) => {
    const file = join(mnt, 'late.img')
    writeWhole(file, new Uint8Array(SIZE))
    const group = join(BLKIO, `md-bitmap-test-${process.pid}-settle`)
    mkdirSync(group)
    try {
      const rdev = statSync(dev).rdev
      writeFileSync(join(group, 'blkio.throttle.write_bps_device'), `${Math.floor(rdev / 256)}:${rdev % 256} ${256 * 1024}\n`)
      const w = startCrashChild('late-writer.ts', [file, '16'])
      await w.waitFor('loaded', 20_000)
      writeFileSync(join(group, 'cgroup.procs'), String(w.child.pid))
      w.send('go')
      const engine = (await w.waitFor('writing', 20_000)).split(' ')[1]
      await sleep(300)
      t.is(await w.kill(), 'SIGKILL')
      const atEnd = hash(readDirect(file, 0, SIZE))
      const t0 = Date.now()
      settleWrites(mnt)
      const settleMs = Date.now() - t0
      const settled = hash(readDirect(file, 0, SIZE))
      await sleep(500)
      t.is(hash(readDirect(file, 0, SIZE)), settled, 'nothing lands after settleWrites')
      t.log(`engine ${engine}: settleWrites took ${settleMs} ms`)
      if (engine === 'uring') t.not(atEnd, settled, 'writes of the killed writer landed after it ended')
      else t.is(atEnd, settled, `with ${engine}, the writer's death waited for its writes`)
    } finally {
      rmdirSync(group)
    }
  })
})
