/**
 * One owner at a time: a bitmap or a mirror is held by one open, locked (flock) from
 * open to close. A second open, in this process or another, fails at once with
 * ELOCKED naming the holder's pid (and, for a mirror, its control socket); a holder
 * killed with SIGKILL releases it with no manual step. A device-mode holder killed
 * while its file is pinned immutable: the next open, holding the lock, takes the pin
 * over (device mode) or lifts it (file mode), and says so.
 */
import test, { type ExecutionContext } from 'ava'
import { execFileSync } from 'node:child_process'
import { existsSync, mkdirSync } from 'node:fs'
import { join } from 'node:path'

import { Bitmap, MdBitmapError, Mirror } from '../src'
import { daemonPass } from '../src/bitmap/testing'
import { startCrashChild, type CrashChild } from './helpers/crash-child'
import { fsCaps, requires } from './helpers/env'
import { readDisk } from './helpers/mdadm'
import { diskTempDir, removeDir } from './helpers/tmp'
import { withFs } from './helpers/loopfs'
import { IDLE, KiB, MiB } from './helpers/mirror'

const dir = diskTempDir('md-bitmap-lock-')
test.after.always(() => removeDir(dir))

const CS = 64 * KiB

/** Starts a process that holds `path` open in `mode` until killed (at teardown at the latest); resolves once it holds it. */
async function holder(t: ExecutionContext, path: string, mode: 'file' | 'device', chunk?: number): Promise<CrashChild & { pid: number }> {
  const child = startCrashChild('bitmap-holder.ts', [path, mode, ...(chunk ? [String(chunk)] : [])])
  t.teardown(() => child.kill())
  await child.waitFor('held ', 30_000)
  return Object.assign(child, { pid: child.child.pid! })
}

async function lockedBy(t: ExecutionContext, p: Promise<unknown>, pid: number): Promise<MdBitmapError> {
  const e = await t.throwsAsync(p)
  t.is((e as MdBitmapError).code, 'ELOCKED', (e as Error).message)
  t.regex((e as Error).message, new RegExp(`locked by process ${pid}\\b`))
  return e as MdBitmapError
}

function immutable(path: string): boolean {
  return /^\S*i\S*\s/.test(execFileSync('lsattr', [path], { encoding: 'utf8' }))
}

test('Bitmap.open twice in one process: the second fails ELOCKED at once, naming this pid; after close it opens', async (t) => {
  const path = join(dir, 'same-process.bitmap')
  const b = await Bitmap.create(path, { size: 16 * MiB, chunkSize: CS, daemonSleep: IDLE })
  const started = Date.now()
  await lockedBy(t, Bitmap.open(path), process.pid)
  await lockedBy(t, Bitmap.create(path, { size: 16 * MiB, chunkSize: CS, overwrite: true }), process.pid)
  t.true(Date.now() - started < 2000, 'at once, no waiting')
  await b.startWrite(0, 512)
  await b.close()
  t.true(readDisk(path).bit(0), 'the refused overwrite left the holder’s file alone')
  const again = await Bitmap.open(path)
  t.deepEqual(again.opened, { pin: null, extended: null })
  await again.close()
})

test('lockWaitMs: a live holder is refused at once however long the wait; a wait that is not a number of milliseconds is EINVAL', async (t) => {
  const path = join(dir, 'lock-wait.bitmap')
  const b = await Bitmap.create(path, { size: 16 * MiB, chunkSize: CS, daemonSleep: IDLE })
  const started = Date.now()
  // The wait is for an owner that has exited (its writes landing): a live one does not go away by waiting.
  await lockedBy(t, Bitmap.open(path, { lockWaitMs: 30_000 }), process.pid)
  t.true(Date.now() - started < 2000, 'at once, no waiting')
  for (const lockWaitMs of [-1, Number.NaN, Number.POSITIVE_INFINITY, '5' as unknown as number]) {
    const e = await t.throwsAsync(Bitmap.open(path, { lockWaitMs }))
    t.is((e as MdBitmapError).code, 'EINVAL', (e as Error).message)
    t.regex((e as Error).message, /lockWaitMs must be a finite number of milliseconds/)
  }
  const metadata = join(dir, 'lock-wait.mirror.json')
  const e = await t.throwsAsync(Mirror.open({ metadata, lockWaitMs: -5 }))
  t.is((e as MdBitmapError).code, 'EINVAL', (e as Error).message)
  t.false(existsSync(`${metadata}.lock`), 'refused before anything was locked')
  await b.close()
})

test('Bitmap.open in two processes: ELOCKED names the holder; after kill -9 of the holder it opens at once with its bit loaded', async (t) => {
  const path = join(dir, 'two-processes.bitmap')
  await (await Bitmap.create(path, { size: 16 * MiB, chunkSize: CS, daemonSleep: IDLE })).close()
  const child = await holder(t, path, 'file', CS)
  const e = await lockedBy(t, Bitmap.open(path), child.pid)
  t.regex(e.message, /a process that dies releases it/)
  await child.kill()
  const b = await Bitmap.open(path)
  t.deepEqual(b.neededChunks(), [3], 'the write the killed holder had in flight is NEEDED')
  await b.close()
})

test('Mirror.open twice: ELOCKED names the holder and its control socket; after close the socket and lock file are gone', async (t) => {
  const d = join(dir, 'mirror')
  mkdirSync(d)
  const bitmap = join(d, 'disk.bitmap')
  const m = await Mirror.create({ bitmap, members: [{ path: join(d, 'a.img') }, { path: join(d, 'b.img') }], size: 4 * MiB, chunkSize: CS, daemonSleep: IDLE, control: true })
  t.is(m.controlSocket, join(d, 'disk.bitmap.mirror.sock'))
  const e = await lockedBy(t, Mirror.open({ bitmap }), process.pid)
  t.true(e.message.includes(`its control socket is ${m.controlSocket}`), e.message)
  // The bitmap is locked on its own too; a create over the held mirror is refused before it touches anything.
  await lockedBy(t, Bitmap.open(bitmap), process.pid)
  await lockedBy(t, Mirror.create({ bitmap, members: [{ path: join(d, 'c.img') }], size: 4 * MiB, chunkSize: CS, overwrite: true }), process.pid)
  t.false(existsSync(join(d, 'c.img')))
  await m.close()
  t.false(existsSync(join(d, 'disk.bitmap.mirror.sock')))
  t.false(existsSync(join(d, 'disk.bitmap.mirror.json.lock')))
  const again = await Mirror.open({ bitmap })
  t.is(again.controlSocket, null)
  await lockedBy(t, Mirror.open({ bitmap }), process.pid).then((err) => t.false(err.message.includes('control socket'), err.message))
  await again.close()
})

const onExt4 = requires([...fsCaps('ext4'), 'lsattr'])

onExt4('a device-mode holder SIGKILLed leaves its file immutable; the next open takes the pin over (device mode) or lifts it (file mode), no chattr needed', async (t) => {
  await withFs('ext4', 64, async (mnt) => {
    const path = join(mnt, 'disk.bitmap')
    await (await Bitmap.create(path, { size: 64 * MiB, chunkSize: CS, daemonSleep: IDLE })).close()

    // Device mode, killed: immutable, bit 3 set on the device.
    let child = await holder(t, path, 'device', CS)
    t.true(immutable(path), 'a device-mode holder pins its file')
    // While it lives, nobody else touches the pin.
    await lockedBy(t, Bitmap.open(path, { mode: 'device' }), child.pid)
    t.true(immutable(path))
    await child.kill()
    t.true(immutable(path), 'SIGKILL left the pin')

    const dev = await Bitmap.open(path, { mode: 'device' })
    t.is(dev.opened.pin, 'taken-over')
    t.is(dev.stats().mode, 'device')
    t.deepEqual(dev.neededChunks(), [3])
    t.true(immutable(path), 'pinned again, by this open')
    await daemonPass(dev)
    await dev.close()
    t.false(immutable(path), 'the pin taken over is released at close')
    t.true(readDisk(path).bit(3), 'still marked for resync')

    // Again, reopened in file mode.
    child = await holder(t, path, 'device', CS)
    await child.kill()
    t.true(immutable(path))
    const file = await Bitmap.open(path)
    t.is(file.opened.pin, 'lifted')
    t.not(file.stats().mode, 'device')
    t.false(immutable(path))
    await file.startWrite(5 * CS, 512)
    t.true(readDisk(path).bit(5), 'file mode writes the lifted file')
    await file.close()
  })
})
