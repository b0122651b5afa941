/**
 * The mirror's events never let a listener break the mirror (src/mirror/types.ts,
 * MirrorEvents): they are emitted on a later tick, once the state they report is
 * complete, so a `'member-faulty'` listener that throws neither half-fails the member
 * nor unwinds the write, read or flush that met the failure, and close() still ends.
 *
 * The listener's exception is an `'uncaughtException'` of the process, as Node makes
 * of any listener's throw outside the emitter's caller; under ava that would fail the
 * test worker itself, so the mirror runs in a child process
 * (fixtures/throwing-listener.ts) that records what reached it.
 *
 * A resync's or check's `onProgress` is the caller's own callback, called from the
 * run: if it throws, the run stops and its promise rejects with what it threw.
 */
import test from 'ava'
import { killRunning, startCrashChild } from './helpers/crash-child'
import { KiB, MiB, makeRig, pattern } from './helpers/mirror'
import { diskTempDir, removeDir } from './helpers/tmp'

const dir = diskTempDir('md-bitmap-mirror-events-')
test.after.always(() => removeDir(dir))

test("a 'member-faulty' listener that throws: the failing write still succeeds on the others, the members are faulty in memory and on disk, close() ends", async (t) => {
  t.teardown(killRunning)
  const w = startCrashChild('throwing-listener.ts', [dir])
  const watchdog = setTimeout(() => void w.kill(), 60_000)
  const how = await w.ended
  clearTimeout(watchdog)
  t.log(w.lines.join('\n'))
  t.is(how, 0, `the child exited by itself; stderr: ${w.stderr}`)
  const lines = w.lines
  t.true(lines.includes('faulty 1 faulty'), 'the listener ran for member 1 and saw it faulty')
  t.true(lines.includes('faulty 2 faulty'), 'the listener ran for member 2 and saw it faulty')
  t.deepEqual(
    lines.filter((l) => l.startsWith('uncaught ')),
    ['uncaught listener threw for member 1', 'uncaught listener threw for member 2'],
    "each listener's exception reached the process, once",
  )
  t.deepEqual(lines.filter((l) => l.startsWith('unhandled ')), [], 'no promise of the mirror was left rejected')
  t.true(lines.includes('write ok'), 'the write met the failure of member 1 and still succeeded on members 0 and 2')
  t.true(lines.includes('read ok'), 'the read met the failure of member 2 and fell through to member 0')
  t.false(lines.some((l) => l.startsWith('flush ')), 'flush resolved')
  t.true(lines.includes('members in-sync,faulty,faulty'))
  t.true(lines.includes('recorded in-sync,faulty,faulty'), 'both failures are in the metadata')
  t.true(lines.includes('closed'), 'close() resolved')
})

test('an onProgress callback that throws stops its resync or check, which rejects with what it threw; the mirror stays usable', async (t) => {
  const r = await makeRig(dir, [{}, {}])
  const m = r.mirror
  t.teardown(() => m.close().catch(() => {}))
  await m.write(pattern(64 * KiB, 1), 0)
  await m.bitmap!.markNeeded(0, MiB)
  const thrower = () => {
    throw new Error('progress callback threw')
  }
  const resync = await t.throwsAsync(m.resync({ onProgress: thrower, progressIntervalMs: 0, inFlight: 2 }))
  t.is(resync?.message, 'progress callback threw')
  t.false(m.resyncRunning, 'the resync ended')
  const check = await t.throwsAsync(m.check({ onProgress: thrower, progressIntervalMs: 0 }))
  t.is(check?.message, 'progress callback threw')
  t.false(m.resyncRunning, 'the check ended')
  // A resync without it copies what the stopped one left, and everything closes.
  const report = await m.resync()
  t.true(report.chunksCopied > 0)
  t.false(m.needsResync)
  t.is((await m.check()).mismatchSectors, 0)
  await m.close()
})
