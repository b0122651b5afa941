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
 * A page store opening the file after the kill waits for those writes itself
 * (crates/md-bitmap-io/src/fence.rs), on ext4 and XFS: nothing lands after its open.
 * On a block device the dead writer's exclusive open lasts until its writes landed:
 * a new open is refused (EBUSY, saying why) until then, and nothing lands after it.
 */
import type { ExecutionContext } from 'ava'
import { createHash } from 'node:crypto'
import { existsSync, mkdirSync, rmdirSync, statSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { killRunning, startCrashChild } from './helpers/crash-child'
import { fsCaps, requires } from './helpers/env'
import { readDirect, writeWhole } from './helpers/io'
import { MIN_SIZE_MIB, settleWrites, withFs, withLoopDevice } from './helpers/loopfs'
import { sleep } from './helpers/wait'
import { PageStore, type MdBitmapError } from '../src'

const BLKIO = '/sys/fs/cgroup/blkio'
const SIZE = 4 * 2 ** 20
const hash = (b: Uint8Array) => createHash('sha256').update(b).digest('hex')

const t = requires(['root', 'loop', 'fsfreeze', ...fsCaps('ext4'), ...fsCaps('xfs')])

/**
 * Runs the late writer on a fresh file in a filesystem of `target`, or on a loop
 * device of its own (`device`), throttled; kills it with its writes queued; and calls
 * `after` with the file (or device), the mount point (null for a device), the hash of
 * the first SIZE bytes as the kill left them, and the engine the writer used. The
 * cgroup, filesystem and loop device are undone.
 */
async function afterKill(
  t: ExecutionContext,
  target: 'ext4' | 'xfs' | 'device',
  after: (file: string, mnt: string | null, atKill: string, engine: string) => Promise<void>,
): Promise<void> {
  t.timeout(120_000)
  t.teardown(killRunning)
  if (!existsSync(join(BLKIO, 'blkio.throttle.write_bps_device'))) return t.fail(`no cgroup v1 blkio throttle at ${BLKIO}: cannot slow one process's writes`)
  const run = async (file: string, dev: string, mnt: string | null) => {
    const group = join(BLKIO, `md-bitmap-test-${process.pid}-settle-${target}`)
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
      await after(file, mnt, hash(readDirect(file, 0, SIZE)), engine)
    } finally {
      rmdirSync(group)
    }
  }
  if (target !== 'device') {
    await withFs(target, MIN_SIZE_MIB[target], async (mnt, dev) => {
      const file = join(mnt, 'late.img')
      writeWhole(file, new Uint8Array(SIZE))
      await run(file, dev, mnt)
    })
    return
  }
  await withLoopDevice(SIZE, (dev) => run(dev, dev, null))
}

t.serial("a SIGKILLed writer's io_uring writes land after it ended; settleWrites waits for them", (t) =>
  afterKill(t, 'ext4', async (file, mnt, atKill, engine) => {
    const t0 = Date.now()
    settleWrites(mnt!)
    const settleMs = Date.now() - t0
    const settled = hash(readDirect(file, 0, SIZE))
    await sleep(500)
    t.is(hash(readDirect(file, 0, SIZE)), settled, 'nothing lands after settleWrites')
    t.log(`engine ${engine}: settleWrites took ${settleMs} ms`)
    if (engine === 'uring') t.not(atKill, settled, 'writes of the killed writer landed after it ended')
    else t.is(atKill, settled, `with ${engine}, the writer's death waited for its writes`)
  }),
)

for (const fsType of ['ext4', 'xfs'] as const) {
  t.serial(`${fsType}: a page store opened after the kill waits for the dead writer's writes to land`, (t) =>
    afterKill(t, fsType, async (file, _mnt, atKill, engine) => {
      const t0 = Date.now()
      const store = await PageStore.open(file, { mode: 'plain' })
      const openMs = Date.now() - t0
      const opened = hash(readDirect(file, 0, SIZE))
      await sleep(1000)
      const later = hash(readDirect(file, 0, SIZE))
      await store.close()
      t.log(`engine ${engine}: the open took ${openMs} ms`)
      t.is(later, opened, 'a write of the dead writer landed after the open')
      if (engine === 'uring') t.not(atKill, opened, 'no write of the killed writer was still in flight at the open: nothing was waited for')
    }),
  )
}

t.serial("a block device: an open after the kill fails EBUSY, saying why, until the dead writer's writes landed; nothing lands after", (t) =>
  afterKill(t, 'device', async (dev, _mnt, atKill, engine) => {
    const t0 = Date.now()
    let refusals = 0
    let store: PageStore | undefined
    while (!store) {
      try {
        store = await PageStore.open(dev, { mode: 'plain' })
      } catch (e) {
        const err = e as MdBitmapError
        t.is(err.code, 'EBUSY', err.message)
        t.regex(err.message, /killed moments ago/)
        if (Date.now() - t0 > 30_000) return t.fail(`still refused after 30 s: ${err.message}`)
        refusals++
        await sleep(100)
      }
    }
    const openMs = Date.now() - t0
    const opened = hash(readDirect(dev, 0, SIZE))
    await sleep(1000)
    const later = hash(readDirect(dev, 0, SIZE))
    await store.close()
    t.log(`engine ${engine}: refused ${refusals} times, opened after ${openMs} ms`)
    t.is(later, opened, 'a write of the dead writer landed after the open')
    if (engine === 'uring') {
      t.true(refusals > 0, 'the first open was not refused: no write of the killed writer was in flight')
      t.not(atKill, opened, 'no write of the killed writer landed before the open')
    }
  }),
)
