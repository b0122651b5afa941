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
 * On btrfs nothing lands late at all: btrfs allocates on every write, which it will not
 * start without blocking, so io_uring runs each write on one of its worker threads,
 * threads of the writing process, and the process's death waits for them.
 * On a block device the dead writer's exclusive open lasts until its writes landed:
 * a new open is refused (EBUSY, saying why) until then, and nothing lands after it.
 *
 * A mirror reopened after its owner was killed: the dead owner's lock is kept by the
 * kernel while its ring holds writes (the engine pins the lock), and an open waits for
 * it on a timer: with the default wait (2 s) it fails ELOCKED, with a `lockWaitMs`
 * longer than the dead owner's writes take it opens; the member stores' opens wait for
 * whatever is left. The new owner's writes after the open are then never overwritten by the dead
 * owner's. Checked by hand (2026-11-30): with the fence alone (no pin) the open took
 * 7.7 s and the test passed; with neither, the open took 6 ms and the dead owner's
 * writes landed over the new owner's on both members.
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
import { Mirror, PageStore, allocAligned, type MdBitmapError } from '../src'

const BLKIO = '/sys/fs/cgroup/blkio'
const SIZE = 4 * 2 ** 20
const hash = (b: Uint8Array) => createHash('sha256').update(b).digest('hex')

const t = requires(['root', 'loop', 'fsfreeze', ...fsCaps('ext4'), ...fsCaps('xfs'), ...fsCaps('btrfs')])

/**
 * Starts the late writer (`store` or `mirror` on `path`) in a blkio cgroup that lets
 * its writes reach `dev` at 256 KiB/s, kills it with its writes queued, and calls
 * `after` with the engine it used and how long its death took to be seen (from the
 * SIGKILL to its end). The cgroup is removed after.
 */
async function killThrottled(
  t: ExecutionContext,
  kind: 'store' | 'mirror',
  path: string,
  dev: string,
  after: (engine: string, deathMs: number) => Promise<void>,
): Promise<void> {
  t.timeout(120_000)
  t.teardown(killRunning)
  if (!existsSync(join(BLKIO, 'blkio.throttle.write_bps_device'))) return t.fail(`no cgroup v1 blkio throttle at ${BLKIO}: cannot slow one process's writes`)
  const group = join(BLKIO, `md-bitmap-test-${process.pid}-settle-${kind}`)
  mkdirSync(group)
  try {
    const rdev = statSync(dev).rdev
    writeFileSync(join(group, 'blkio.throttle.write_bps_device'), `${Math.floor(rdev / 256)}:${rdev % 256} ${256 * 1024}\n`)
    const w = startCrashChild('late-writer.ts', [kind, path, '16'])
    const engine = (await w.waitFor('loaded', 20_000)).split(' ')[1]
    writeFileSync(join(group, 'cgroup.procs'), String(w.child.pid))
    w.send('go')
    await w.waitFor('writing', 20_000)
    await sleep(300)
    const killed = Date.now()
    t.is(await w.kill(), 'SIGKILL')
    await after(engine, Date.now() - killed)
  } finally {
    rmdirSync(group)
  }
}

/**
 * Runs the late writer on a page store of a fresh file in a filesystem of `target`, or
 * of a loop device of its own (`device`), kills it with its writes queued, and calls
 * `after` with the file (or device), the mount point (null for a device), the hash of
 * the first SIZE bytes as the kill left them, the engine the writer used and how long
 * its death took. The cgroup, filesystem and loop device are undone.
 */
async function afterKill(
  t: ExecutionContext,
  target: 'ext4' | 'xfs' | 'btrfs' | 'device',
  after: (file: string, mnt: string | null, atKill: string, engine: string, deathMs: number) => Promise<void>,
): Promise<void> {
  const run = (file: string, dev: string, mnt: string | null) =>
    killThrottled(t, 'store', file, dev, (engine, deathMs) => after(file, mnt, hash(readDirect(file, 0, SIZE)), engine, deathMs))
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

/** Opens a page store on `file` and reads the file at once and a second later: how long the open took, and the file's hash at each read. */
async function openAndWatch(file: string): Promise<{ openMs: number; opened: string; later: string }> {
  const t0 = Date.now()
  const store = await PageStore.open(file, { mode: 'plain' })
  const openMs = Date.now() - t0
  const opened = hash(readDirect(file, 0, SIZE))
  await sleep(1000)
  const later = hash(readDirect(file, 0, SIZE))
  await store.close()
  return { openMs, opened, later }
}

for (const fsType of ['ext4', 'xfs'] as const) {
  t.serial(`${fsType}: a page store opened after the kill waits for the dead writer's writes to land`, (t) =>
    afterKill(t, fsType, async (file, _mnt, atKill, engine) => {
      const { openMs, opened, later } = await openAndWatch(file)
      t.log(`engine ${engine}: the open took ${openMs} ms`)
      t.is(later, opened, 'a write of the dead writer landed after the open')
      if (engine === 'uring') t.not(atKill, opened, 'no write of the killed writer was still in flight at the open: nothing was waited for')
    }),
  )
}

t.serial("btrfs: a killed writer's io_uring writes run on io_uring's worker threads, its death waits for them, and nothing lands after", (t) =>
  afterKill(t, 'btrfs', async (file, _mnt, atKill, engine, deathMs) => {
    const { opened, later } = await openAndWatch(file)
    t.log(`engine ${engine}: the death took ${deathMs} ms`)
    t.is(opened, atKill, 'a write of the dead writer landed between its death and the open')
    t.is(later, opened, 'a write of the dead writer landed after the open')
    // btrfs allocates on every write, so io_uring runs each on a worker thread, one of the
    // process's own: the process ends only once those writes are done.
    if (engine === 'uring') t.true(deathMs > 1000, `the death took ${deathMs} ms: no throttled write was in flight to wait for`)
  }),
)

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

t.serial("a mirror reopened after the kill: no write of the dead owner lands over the new owner's", (t) =>
  withFs('ext4', MIN_SIZE_MIB.ext4 + 8, async (mnt, dev) => {
    const bitmap = join(mnt, 'late.bitmap')
    const members = [join(mnt, 'm0'), join(mnt, 'm1')]
    // Members written in full: a write into a hole would wait for the dead owner's
    // writes on its own (ext4 serializes allocating direct writes with those in flight).
    for (const m of members) writeWhole(m, new Uint8Array(SIZE))
    await (await Mirror.create({ bitmap, members: members.map((path) => ({ path })), size: SIZE, chunkSize: 64 * 1024, overwrite: true })).close()
    await killThrottled(t, 'mirror', bitmap, dev, async (engine) => {
      const atKill = members.map((m) => hash(readDirect(m, 0, SIZE))).join()
      // Opened as a supervisor would: again while the dead owner's lock is held (the
      // kernel keeps it until the dead owner's writes in flight have completed). Each
      // try waits for it on a timer: the event loop keeps turning meanwhile.
      const t0 = Date.now()
      let refusals = 0
      let mirror: Mirror | undefined
      let lastTick = Date.now()
      let longestStall = 0
      const ticker = setInterval(() => {
        longestStall = Math.max(longestStall, Date.now() - lastTick)
        lastTick = Date.now()
      }, 10)
      try {
        while (!mirror) {
          try {
            // The default wait first (2 s); after its ELOCKED, as long as the dead owner's writes take.
            mirror = await Mirror.open(refusals === 0 ? { bitmap } : { bitmap, lockWaitMs: 30_000 })
          } catch (e) {
            const err = e as MdBitmapError
            if (err.code !== 'ELOCKED') throw e
            t.regex(err.message, /locked by a process that has exited/)
            if (refusals > 0) return t.fail(`ELOCKED again with lockWaitMs 30000, after ${Date.now() - t0} ms: ${err.message}`)
            refusals++
          }
        }
      } finally {
        clearInterval(ticker)
      }
      const openMs = Date.now() - t0
      t.true(longestStall < 500, `the event loop stalled ${longestStall} ms while the open waited for the dead owner's lock`)
      const opened = members.map((m) => hash(readDirect(m, 0, SIZE))).join()
      try {
        if (mirror.needsResync) await mirror.resync()
        await mirror.write(allocAligned(SIZE, mirror.alignment).fill(0xff), 0)
        await mirror.flush()
      } finally {
        await mirror.close()
      }
      // A write of the dead owner still on its way would land in this second.
      await sleep(1000)
      t.log(`engine ${engine}: ELOCKED ${refusals} times, opened after ${openMs} ms; the event loop's longest stall ${longestStall} ms`)
      for (const m of members) {
        const bytes = readDirect(m, 0, SIZE)
        const stale = bytes.findIndex((b) => b !== 0xff)
        t.is(stale, -1, `${m}: byte ${stale} is ${bytes[stale]}, a write of the dead owner landed over the new owner's acknowledged write`)
      }
      if (engine === 'uring') {
        t.not(atKill, opened, 'no write of the killed owner landed between the kill and the open: nothing was in flight to wait for')
        t.is(refusals, 1, 'the default wait (2 s) outlasted the dead owner\'s throttled writes: lockWaitMs was not exercised')
      }
    })
  }),
)
