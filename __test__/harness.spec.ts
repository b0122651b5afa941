/**
 * The test harness itself: capability gating (skip outside CI, fail in CI, never a silent
 * skip), loop-mounted filesystems that are always cleaned up, even when the test
 * throws or the process exits or is killed in the middle, and the crash-test child
 * (helpers/crash-child.ts): no line announcing I/O is lost to a SIGKILL.
 */
import test from 'ava'
import { spawnSync } from 'node:child_process'
import * as fs from 'node:fs'
import { tmpdir } from 'node:os'
import { join, relative, resolve } from 'node:path'
import { startCrashChild } from './helpers/crash-child'
import { fsCaps, missing, requires } from './helpers/env'
import { isMounted, loopBacking, withFs } from './helpers/loopfs'
import { diskTempDir, removeDir } from './helpers/tmp'
import { sleep } from './helpers/wait'

const ROOT = resolve(__dirname, '..')
const AVA = join(ROOT, 'node_modules', 'ava', 'entrypoints', 'cli.mjs')

function runFixtureSuite(ci: boolean) {
  const dir = fs.mkdtempSync(join(tmpdir(), 'md-bitmap-gating-'))
  const config = join(dir, 'ava.config.mjs')
  fs.writeFileSync(
    config,
    `export default ${JSON.stringify({
      files: ['__test__/helpers/fixtures/gating.ts'],
      extensions: { ts: 'commonjs' },
      nodeArguments: ['--import=tsx'],
      workerThreads: false,
    })}\n`,
  )
  const env: NodeJS.ProcessEnv = { ...process.env }
  delete env.CI
  if (ci) env.CI = 'true'
  try {
    const r = spawnSync(process.execPath, [AVA, '--config', config, '--tap'], { cwd: ROOT, env, encoding: 'utf8', timeout: 60_000 })
    return { status: r.status, out: r.stdout + r.stderr }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true })
  }
}

test('gating outside CI: missing capabilities skip their tests and say why, once', (t) => {
  const r = runFixtureSuite(false)
  t.is(r.status, 0, r.out)
  t.regex(r.out, /^ok \d+ - gated concurrent # SKIP$/m)
  t.regex(r.out, /^ok \d+ - gated serial # SKIP$/m)
  t.regex(r.out, /^ok \d+ - ungated$/m)
  const reasons = r.out.match(/skipping tests that need \[definitely-not-a-tool-md-bitmap\]: definitely-not-a-tool-md-bitmap not found in PATH/g)
  t.is(reasons?.length, 1, r.out)
})

test('gating in CI: nothing skips; tests whose capabilities are missing fail with the reason', (t) => {
  const r = runFixtureSuite(true)
  t.not(r.status, 0)
  t.notRegex(r.out, /# SKIP/)
  t.regex(r.out, /^not ok \d+ - gated concurrent$/m)
  t.regex(r.out, /^not ok \d+ - gated serial$/m)
  t.regex(r.out, /^ok \d+ - ungated$/m)
  t.regex(r.out, /tests may not skip in CI/)
  t.regex(r.out, /definitely-not-a-tool-md-bitmap not found in PATH/)
  t.regex(r.out, /# fail 2/)
})

test('capability probes', (t) => {
  t.is(missing('root') === null, process.getuid?.() === 0)
  t.is(missing('sh'), null)
  t.regex(missing('no-such-tool-md-bitmap') ?? '', /not found/)
  t.regex(missing('fs:no-such-fs-md-bitmap') ?? '', /does not support/)
  t.is(requires(['sh']).unavailable, null)
  t.truthy(requires(['sh', 'no-such-tool-md-bitmap']).unavailable)
  t.deepEqual(fsCaps('tmpfs').includes('loop'), false)
  t.deepEqual(fsCaps('xfs').includes('mkfs.xfs'), true)
})

const tloop = requires(fsCaps('ext4'))

tloop('withFs cleans up when the test throws', async (t) => {
  let seen: { dir: string; mountDir: string; loopDev: string | null; fd: number } | undefined
  const err = await t.throwsAsync(
    withFs('ext4', 16, async (mountDir, loopDev, ctx) => {
      t.true(isMounted(mountDir))
      t.truthy(loopBacking(loopDev))
      // An open descriptor on the filesystem, as a failed test might leave behind.
      seen = { dir: ctx.dir, mountDir, loopDev, fd: fs.openSync(join(mountDir, 'open'), 'w') }
      throw new Error('boom')
    }),
  )
  t.is(err?.message, 'boom')
  t.truthy(seen)
  t.false(isMounted(seen!.mountDir), 'unmounted (lazily: a descriptor was still open)')
  t.false(fs.existsSync(seen!.dir), 'temporary directory removed')
  // The busy loop device was set to detach itself once the filesystem is released.
  fs.closeSync(seen!.fd)
  const deadline = Date.now() + 3000
  while (servesImageIn(seen!.loopDev!, seen!.dir) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50))
  t.false(servesImageIn(seen!.loopDev!, seen!.dir), 'loop device detached')
})

tloop('withFs refuses sizes the tools would refuse', async (t) => {
  await t.throwsAsync(withFs('xfs', 100, async () => undefined), { message: /at least 300 MiB/ })
  await t.throwsAsync(withFs('btrfs', 64, async () => undefined), { message: /at least 128 MiB/ })
})

/**
 * Whether `loopDev` still serves an image inside `dir`. Once detached, the same device
 * may at once be attached again by a test running beside this one, with its own image:
 * that is not a leak of this test's.
 */
function servesImageIn(loopDev: string, dir: string): boolean {
  return loopBacking(loopDev)?.startsWith(`${dir}/`) ?? false
}

for (const how of ['exit', 'SIGTERM'] as const) {
  tloop(`withFs: a process that ends mid-test (${how}) leaves no mount or loop device behind`, (t) => {
    const script = `
      const { withFs } = require(${JSON.stringify(join(__dirname, 'helpers', 'loopfs'))})
      withFs('ext4', 16, async (mountDir, loopDev, ctx) => {
        console.log(JSON.stringify({ dir: ctx.dir, mountDir, loopDev }))
        ${how === 'exit' ? 'process.exit(0)' : "process.kill(process.pid, 'SIGTERM')"}
        await new Promise((r) => setTimeout(r, 10000))
      })
    `
    const r = spawnSync(process.execPath, ['--import', 'tsx', '-e', script], { cwd: ROOT, encoding: 'utf8', timeout: 30_000 })
    const seen = JSON.parse(r.stdout.trim().split('\n')[0])
    t.false(isMounted(seen.mountDir), r.stderr)
    t.false(servesImageIn(seen.loopDev, seen.dir), `${seen.loopDev} detached from the image in ${seen.dir}`)
    t.false(fs.existsSync(seen.dir))
  })
}

test('crash child: with the parent not reading, the child stops at the line it cannot print; after SIGKILL every write done has its line', async (t) => {
  const dir = diskTempDir('md-bitmap-harness-')
  t.teardown(() => removeDir(dir))
  const file = join(dir, 'writes')
  const COUNT = 200_000 // about 22 MB of lines: far more than the pipe and the reader's buffer hold
  const c = startCrashChild('line-printer.ts', [file, String(COUNT)])
  t.teardown(() => c.kill())
  await c.waitFor('I 1 ', 30_000)
  c.child.stdout.pause()
  // Until the child stopped writing (held at a full pipe), however slow the machine.
  const writes = () => fs.readFileSync(file, 'utf8').length
  for (let last = -1, now = writes(); now !== last; last = now, now = writes()) await sleep(300)
  t.is(await c.kill(), 'SIGKILL', c.stderr)
  const done = fs.readFileSync(file, 'utf8').split('\n').filter(Boolean).map(Number)
  const printed = c.lines.map((l) => Number(l.split(' ')[1]))
  t.true(done.length > 0, 'the child wrote')
  t.true(done.length < COUNT, 'the pipe filled: the child was held at a line (else the test proves nothing)')
  t.deepEqual(printed.slice(0, done.length), done, 'every write done was announced by a line the parent read, in order')
  t.true(printed.length - done.length <= 1, 'at most the line of a write not yet done was read past the last write')
})

test('crash child: a last line cut by the kill is dropped; ended waits for stdout to close', async (t) => {
  const dir = diskTempDir('md-bitmap-harness-')
  t.teardown(() => removeDir(dir))
  const fixture = join(dir, 'cut.ts')
  // A fixture outside __test__/fixtures: pass the path relative to that folder.
  fs.writeFileSync(fixture, "process.stdout.write('one\\ntwo\\nthr')\nsetInterval(() => {}, 1 << 30)\n")
  const c = startCrashChild(relative(join(__dirname, 'fixtures'), fixture), [])
  await c.waitFor('two', 20_000)
  await sleep(200)
  t.is(await c.kill(), 'SIGKILL')
  t.deepEqual(c.lines, ['one', 'two'])
})
