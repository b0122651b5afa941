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
 *
 * The library's own guard against the same window: a lock (a Bitmap's, a Mirror's) is
 * pinned to the io_uring ring (`Engine::pin`), so a killed owner's lock is held until the
 * kernel frees its ring, after its writes in flight. That narrows the window but, as
 * measured here, does not always close it: in about 1 run in 15 a write of the dead
 * owner landed after the lock came free (cause not found; a write the kernel had handed
 * to an io-wq worker is the suspect). The test asserts what holds every time (the lock
 * outlives the process) and logs whether anything landed after.
 */
import type { ExecutionContext } from 'ava'
import { createHash } from 'node:crypto'
import { existsSync, mkdirSync, rmdirSync, statSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { killRunning, startCrashChild } from './helpers/crash-child'
import { fsCaps, requires } from './helpers/env'
import { readDirect, writeWhole } from './helpers/io'
import { settleWrites, withFs } from './helpers/loopfs'
import { FileLock } from '../src/io/lock'
import { MdBitmapError } from '../src/errors'
import { sleep } from './helpers/wait'

const BLKIO = '/sys/fs/cgroup/blkio'
const SIZE = 4 * 2 ** 20
const hash = (b: Uint8Array) => createHash('sha256').update(b).digest('hex')

const t = requires(['root', 'loop', 'fsfreeze', ...fsCaps('ext4')])

/**
 * Starts late-writer.ts with `args` in a blkio cgroup whose writes reach `dev` at
 * 256 KiB/s, SIGKILLs it once its writes are under way, then runs `after` with the
 * engine it used (the cgroup goes once `after` is done).
 */
async function killThrottledWriter<T>(t: ExecutionContext, dev: string, args: string[], after: (engine: string) => Promise<T>): Promise<T> {
  const group = join(BLKIO, `md-bitmap-test-${process.pid}-${Math.random().toString(36).slice(2, 8)}`)
  mkdirSync(group)
  try {
    const rdev = statSync(dev).rdev
    writeFileSync(join(group, 'blkio.throttle.write_bps_device'), `${Math.floor(rdev / 256)}:${rdev % 256} ${256 * 1024}\n`)
    const w = startCrashChild('late-writer.ts', args)
    await w.waitFor('loaded', 20_000)
    writeFileSync(join(group, 'cgroup.procs'), String(w.child.pid))
    w.send('go')
    const engine = (await w.waitFor('writing', 20_000)).split(' ')[1]
    await sleep(300)
    t.is(await w.kill(), 'SIGKILL')
    return await after(engine)
  } finally {
    rmdirSync(group)
  }
}

t("a SIGKILLed owner's lock outlives it while its io_uring writes are in flight (the lock's file is pinned to the ring)", async (t) => {
  t.timeout(120_000)
  t.teardown(killRunning)
  if (!existsSync(join(BLKIO, 'blkio.throttle.write_bps_device'))) return t.fail(`no cgroup v1 blkio throttle at ${BLKIO}: cannot slow one process's writes`)
  await withFs('ext4', 32, async (mnt, dev) => {
    const file = join(mnt, 'late.img')
    const lockPath = join(mnt, 'late.lock')
    writeWhole(file, new Uint8Array(SIZE))
    await killThrottledWriter(t, dev, [file, '16', lockPath], async (engine) => {
      let refusals = 0
      let lock: FileLock | undefined
      const t0 = Date.now()
      while (!lock) {
        try {
          lock = FileLock.acquire(lockPath)
        } catch (e) {
          if (!(e instanceof MdBitmapError) || e.code !== 'ELOCKED') throw e
          refusals++
          if (Date.now() - t0 > 60_000) return t.fail('the dead writer\'s lock was never released')
          await sleep(20)
        }
      }
      const waitedMs = Date.now() - t0
      try {
        const atLock = readDirect(file, 0, SIZE)
        await sleep(1000)
        const later = readDirect(file, 0, SIZE)
        const changed: string[] = []
        for (let o = 0; o < SIZE && changed.length < 8; o += 4096) if (later[o] !== atLock[o]) changed.push(`${o / 1024} KiB: ${atLock[o]} → ${later[o]}`)
        // Not asserted: in about 1 run in 15 a write of the dead owner still landed after
        // its lock came free (see the module comment); the crash specs settle with a
        // freeze (settleWrites) whatever the lock says.
        t.log(`engine ${engine}: the lock came free ${waitedMs} ms after the kill (${refusals} refusals); ${changed.length ? `a write landed after it: ${changed.join(', ')}` : 'nothing landed after it'}`)
        if (engine === 'uring') t.true(refusals > 0, 'under io_uring the lock outlived the process while its writes were in flight')
      } finally {
        lock.release()
      }
    })
  })
})
t("a SIGKILLed writer's io_uring writes land after it ended; settleWrites waits for them", async (t) => {
  t.timeout(120_000)
  t.teardown(killRunning)
  if (!existsSync(join(BLKIO, 'blkio.throttle.write_bps_device'))) return t.fail(`no cgroup v1 blkio throttle at ${BLKIO}: cannot slow one process's writes`)
  await withFs('ext4', 32, async (mnt, dev) => {
    const file = join(mnt, 'late.img')
    writeWhole(file, new Uint8Array(SIZE))
    await killThrottledWriter(t, dev, [file, '16'], async (engine) => {
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
    })
  })
})
