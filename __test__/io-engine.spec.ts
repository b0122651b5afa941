/**
 * The I/O engine: which one a store uses is reported, each forced engine works, a
 * refused io_uring falls back to another engine that says why and works, write errors
 * come back typed and sticky under every engine, 1000 concurrent writes leave nothing
 * pending at waitIdle, and promises settled by the engine run their reactions at once.
 *
 * An engine belongs to a JavaScript thread and is chosen at its first open, so each
 * engine runs in a child process of its own (fixtures/engine-store.ts) with
 * MD_BITMAP_IO_ENGINE set.
 */
import test, { type ExecutionContext } from 'ava'
import { spawn } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { constants as os, release } from 'node:os'
import { join } from 'node:path'
import { extents } from '../src'
import { fsCaps, requires } from './helpers/env'
import { PAGE, deviceSize, writeWhole } from './helpers/io'
import { sh, withFs } from './helpers/loopfs'
import { noIoUring } from './helpers/seccomp'
import { withPagesFile } from './helpers/tmp'

const FIXTURE = join(__dirname, 'fixtures', 'engine-store.ts')
const ENGINES = ['uring', 'aio', 'threads'] as const
/** Engine and reaper pairs: every engine on the loop, and the completion thread. */
const RUNS = [...ENGINES.map((e) => [e, 'loop'] as const), ['uring', 'thread'] as const, ['threads', 'thread'] as const]
const MiB = 1 << 20

type Line = Record<string, any>

/** Whether an io_uring ring defers its completion work here: Linux 6.1 and later take DEFER_TASKRUN. */
const DEFERS = (() => {
  const [major, minor] = release().split('.').map(Number)
  return major > 6 || (major === 6 && minor >= 1)
})()

/** A child running the fixture: its JSON lines as they come, stdin, and its exit. */
function child(args: string[], engine: string | null, reaper: string | null = null, launcher: string[] | null = null) {
  const env = { ...process.env }
  if (engine === null) delete env.MD_BITMAP_IO_ENGINE
  else env.MD_BITMAP_IO_ENGINE = engine
  if (reaper === null) delete env.MD_BITMAP_IO_REAPER
  else env.MD_BITMAP_IO_REAPER = reaper
  const node = [process.execPath, '--import', 'tsx', FIXTURE, ...args]
  const [cmd, ...argv] = launcher === null ? node : [...launcher, ...node]
  const p = spawn(cmd, argv, { env, stdio: ['pipe', 'pipe', 'pipe'] })
  const lines: Line[] = []
  const waiters: (() => void)[] = []
  let out = ''
  let err = ''
  p.stdout.on('data', (d) => {
    out += d
    let i
    while ((i = out.indexOf('\n')) >= 0) {
      lines.push(JSON.parse(out.slice(0, i)))
      out = out.slice(i + 1)
      waiters.splice(0).forEach((w) => w())
    }
  })
  p.stderr.on('data', (d) => (err += d))
  const exited = new Promise<number | null>((resolve) => p.on('close', (code) => (resolve(code), waiters.splice(0).forEach((w) => w()))))
  let done = false
  exited.then(() => (done = true))
  return {
    /** The next JSON line (the n-th overall). */
    async line(n: number): Promise<Line> {
      while (lines.length <= n) {
        if (done) throw new Error(`the child exited before line ${n + 1}: ${err}`)
        await new Promise<void>((r) => waiters.push(r))
      }
      if (lines[n].fatal) throw new Error(`the child failed: ${JSON.stringify(lines[n].fatal)}`)
      return lines[n]
    },
    go: () => p.stdin.end('go\n'),
    exited,
    stderr: () => err,
  }
}

/** A child started with `engine`/`reaper` set to a value it must refuse: EINVAL naming it, exit 2. */
async function refusedAtStart(t: ExecutionContext, engine: string | null, reaper: string | null, message: RegExp) {
  await withPagesFile(1, async (file) => {
    const c = child([file, 'exercise'], engine, reaper)
    const e = await t.throwsAsync(c.line(0))
    t.regex(e!.message, /"code":"EINVAL"/)
    t.regex(e!.message, message)
    t.is(await c.exited, 2)
  })
}

async function exercise(t: ExecutionContext, engine: string | null, expect: (report: Line) => void, reaper: string | null = null) {
  await withPagesFile(1000, async (file) => {
    const c = child([file, 'exercise'], engine, reaper)
    const report = await c.line(0)
    t.log(`engine ${report.engine}${report.engineReason ? ` (${report.engineReason})` : ''}, reaper ${report.reaper}, mode ${report.mode}`)
    t.is(report.mode, 'direct')
    expect(report)
    const result = await c.line(1)
    t.true(result.idle, 'waitIdle resolved true')
    t.is(result.pendingAtIdle, 0, 'nothing pending when waitIdle resolved')
    t.true(result.readBackOk, 'the pages read back as written')
    t.is(result.error, null)
    t.is(await c.exited, 0, c.stderr())
  })
}

test('the best engine is chosen and reported: io_uring where the kernel allows it; completions reaped by the libuv loop', async (t) => {
  await exercise(t, null, (r) => {
    t.true(ENGINES.includes(r.engine))
    if (r.engine !== 'uring') t.truthy(r.engineReason, 'a fallback says why')
    t.is(r.deferredCompletions, r.engine === 'uring' && DEFERS, `deferred completion work reported (kernel ${release()})`)
    t.is(r.reaper, 'loop')
    t.is(r.reaperReason, null)
  })
})

for (const engine of ENGINES) {
  test(`MD_BITMAP_IO_REAPER=thread, ${engine}: the completion thread is used and reported; 1000 concurrent writes, waitIdle, nothing pending`, async (t) => {
    await exercise(t, engine, (r) => {
      t.is(r.engine, engine)
      // The completion thread only polls; the JavaScript thread still reaps alone.
      t.is(r.deferredCompletions, engine === 'uring' && DEFERS)
      t.is(r.reaper, 'thread')
      t.regex(r.reaperReason, /forced by MD_BITMAP_IO_REAPER/)
    }, 'thread')
  })
}

test('an unknown MD_BITMAP_IO_REAPER is refused with EINVAL', async (t) => {
  await refusedAtStart(t, null, 'poll', /MD_BITMAP_IO_REAPER must be 'loop' or 'thread', got 'poll'/)
})

for (const engine of ENGINES) {
  test(`MD_BITMAP_IO_ENGINE=${engine}: that engine is used and reported; 1000 concurrent writes, waitIdle, nothing pending`, async (t) => {
    await exercise(t, engine, (r) => {
      t.is(r.engine, engine)
      t.regex(r.engineReason, /forced by MD_BITMAP_IO_ENGINE/)
      t.is(r.deferredCompletions, engine === 'uring' && DEFERS)
    })
  })
}

for (const [engine, reaper] of RUNS) {
  test(`${engine}, reaper ${reaper}: an idle store does not keep the process alive, after a write and a refused one`, async (t) => {
    await withPagesFile(16, async (file) => {
      const c = child([file, 'idle'], engine, reaper)
      const r = await c.line(0)
      t.is(r.engine, engine)
      t.is(r.refused.code, 'EALIGN')
      const exit = await Promise.race([c.exited, new Promise<string>((res) => setTimeout(() => res('still running after 10 s'), 10_000))])
      t.is(exit, 0, c.stderr())
    })
  })
}

test('an unknown MD_BITMAP_IO_ENGINE is refused with EINVAL', async (t) => {
  await refusedAtStart(t, 'fast', null, /MD_BITMAP_IO_ENGINE must be 'uring', 'aio' or 'threads', got 'fast'/)
})

// io_uring refused for real, as a container's seccomp profile refuses it: the child runs
// under a seccomp filter that makes io_uring_setup fail with EPERM (helpers/seccomp.ts).
// The filter holds for the child alone; other test files running meanwhile keep io_uring.
requires(['cc'])('io_uring refused (a seccomp filter, as in a container): AIO is chosen, says why, and works; forcing io_uring fails with EPERM', async (t) => {
  const launcher = noIoUring()
  await withPagesFile(1000, async (file) => {
    const fallback = child([file, 'exercise'], null, null, launcher)
    const report = await fallback.line(0)
    const forced = child([file, 'exercise'], 'uring', null, launcher)
    const refusal = await t.throwsAsync(forced.line(0))
    t.is(report.engine, 'aio')
    t.regex(report.engineReason, /io_uring_setup refused/)
    t.false(report.deferredCompletions)
    const result = await fallback.line(1)
    t.true(result.idle)
    t.is(result.pendingAtIdle, 0)
    t.true(result.readBackOk)
    t.is(await fallback.exited, 0, fallback.stderr())
    t.regex(refusal!.message, /"code":"EPERM"/)
    t.regex(refusal!.message, /MD_BITMAP_IO_ENGINE=uring: io_uring_setup refused/)
    t.is(await forced.exited, 2)
  })
})

/** The fixture's `fail` run: the parent breaks the device between `ready` and `go`. */
async function stickyFailure(t: ExecutionContext, engine: string, file: string, breakDevice: () => void, allowed: string[]) {
  const c = child([file, 'fail', '3'], engine)
  const ready = await c.line(0)
  t.is(ready.engine, engine)
  t.is(ready.mode, 'direct')
  breakDevice()
  c.go()
  const r = await c.line(1)
  t.is(await c.exited, 0, c.stderr())
  const [first, ...later] = r.failures
  t.log(`${engine}: the write failed with ${first.code}: ${first.message}`)
  t.is(first.type, 'MdBitmapError')
  t.true(allowed.includes(first.code), `${first.code} is one of ${allowed.join(', ')}`)
  t.is(first.errno, (os.errno as Record<string, number>)[first.code], 'errno matches the code')
  t.regex(first.message, new RegExp(`at ${PAGE}\\b`), 'the message says which write failed')
  for (const l of later) t.is(l.type, 'MdBitmapError')
  t.deepEqual([r.sticky.code, r.sticky.message], [first.code, first.message], 'the first error is the sticky one')
  t.true(r.idle)
  t.is(r.pending, 0)
  t.is(r.closing.code, first.code, 'close() rejects with the sticky error')
  t.is(r.closing.message, first.message)
}

const ta = requires([...fsCaps('ext4'), 'truncate'])
const tb = requires([...fsCaps('ext4'), ...fsCaps('tmpfs'), 'fallocate', 'dd'])
for (const engine of ENGINES) {
  ta(`${engine}: a write past the end of a shrunk device fails with EIO, typed and sticky`, async (t) => {
    await withFs('ext4', 64, async (dir, dev, ctx) => {
      writeWhole(join(dir, 'filler'), new Uint8Array(12 * MiB))
      const file = join(dir, 'bitmap')
      writeWhole(file, randomBytes(MiB))
      const SHRINK = 4 * MiB
      const map = await extents(file)
      t.true(map.extents.every((e) => e.physical >= SHRINK), `the file lies past ${SHRINK}`)
      await stickyFailure(t, engine, file, () => {
        sh('truncate', ['-s', String(SHRINK), ctx.image!])
        sh('losetup', ['-c', dev])
        t.is(deviceSize(dev), SHRINK)
      }, ['EIO'])
    }, { mkfsArgs: ['-b', '4096'], mountOptions: 'errors=continue' })
  })

  tb(`${engine}: a write the device cannot allocate (full tmpfs under the loop image) fails with ENOSPC, typed and sticky`, async (t) => {
    await withFs('tmpfs', 48, async (tdir) => {
      await withFs('ext4', 32, async (dir, _dev, ctx) => {
        const file = join(dir, 'bitmap')
        writeWhole(file, randomBytes(MiB))
        const map = await extents(file)
        await stickyFailure(t, engine, file, () => {
          for (const e of map.extents) {
            sh('fallocate', ['--punch-hole', '--offset', String(e.physical), '--length', String(e.length), ctx.image!])
          }
          sh('sh', ['-c', `dd if=/dev/zero of=${join(tdir, 'fill')} bs=64k status=none || true`])
        }, ['ENOSPC', 'EIO'])
      }, { mkfsArgs: ['-b', '4096'], mountOptions: 'errors=continue', parentDir: tdir })
    })
  })
}

// In a process of its own: in the test worker, other events (ava's own messages and
// timers) would drain the microtask queue sooner or later and hide a settlement that
// does not. The chain alone cannot tell whether the reactions run inside the engine's
// callback (its callback scope): without the scope, Node still drained the queue soon
// after, from a callback of its own. The order probe can: a socket made readable just
// after a write completed sees its `data` only after the write's reaction ran.
for (const [engine, reaper] of RUNS) {
  test(`${engine}, reaper ${reaper}: promises the engine settles run their reactions at once, inside the wake-up's callback: a chain of awaits, and a write's reaction before the next ready callback`, async (t) => {
    await withPagesFile(16, async (file) => {
      const c = child([file, 'chain'], engine, reaper)
      const r = await c.line(0)
      t.is(r.engine, engine)
      t.is(r.reaper, reaper)
      t.is(r.steps, 102)
      t.is(r.pending, 0)
      t.deepEqual(r.order, ['reaction,data', 'reaction,data', 'reaction,data'], 'the reaction ran inside the engine callback, before the socket callback')
      t.is(await c.exited, 0, c.stderr())
    })
  })
}
