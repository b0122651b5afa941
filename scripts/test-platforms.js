#!/usr/bin/env node
// `npm run test:platforms`: tests the shipped binaries on every platform and Node this
// machine can run, each step bounded in time and timed. Needs
// scripts/install-platform-deps.sh (zig, cargo-zigbuild, qemu-user, the Node binaries)
// and a built checkout (`npm ci` builds it). Run by .ci/run after `npm test`.
//
// Steps (all by default, or those named: node scripts/test-platforms.js matrix arm64):
//   lock       package-lock.json agrees with package.json: `npm ci` takes it, and
//              `npm install` changes nothing and warns of no engine.
//   build      npm run build:all: the four binaries, checked with readelf/objdump
//              (glibc ≤ 2.17, musl needs only its loader, stripped, right machine).
//   matrix     MATRIX_SPECS under each x64 Node of NODE_MATRIX (scripts/platforms.js),
//              with the shipped linux-x64-gnu binary (MD_BITMAP_NATIVE_PATH).
//   arm64      ARM64_SPECS under arm64 Node in qemu-user, in an arm64 copy of the
//              checkout whose native/ holds the shipped linux-arm64-gnu binary (the
//              loader finds it as a checkout's build). esbuild, which tsx uses to
//              compile the TypeScript specs, runs as its x64 binary: it is a build tool,
//              not part of what ships, and the x64 one is many times faster than qemu.
//   git        npm install git+file://<this checkout>: prepare builds the addon and
//              the TypeScript, and the installed package loads and runs.
//   release    npm run release:dry: all five tarballs, installed offline and run on x64
//              and, under qemu, arm64.
// The musl binaries are only built and checked: no musl Node runs here.
// Ends with one line "test-platforms: N passed, M failed" (ava tests plus steps' checks).
'use strict'
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const { spawnSync } = require('node:child_process')
const { ROOT, pkg, TARGETS, NODE_MATRIX, NODE_ARM64, nodeBinary } = require('./platforms.js')
const { userEnv } = require('./release.js')

/**
 * Specs that load the addon and touch every binding, the loader's cases, the layers
 * above that lean on newer Node APIs (fs.statfs, AbortSignal.any in the mirror's resync),
 * and the NBD server's socket reads and TLS, which lean on Node's internals (a socket's
 * `_handle`, the fields behind `onread`) and on the OpenSSL each Node bundles (Node 24
 * refused PSK clients of a server that also verifies certificates).
 */
const MATRIX_SPECS = ['__test__/native-binding.spec.ts', '__test__/native-load.spec.ts', '__test__/store.spec.ts', '__test__/check.spec.ts', '__test__/bitmap.spec.ts', '__test__/mirror.spec.ts', '__test__/mirror-resync.spec.ts', '__test__/cli.spec.ts', '__test__/nbd-protocol.spec.ts', '__test__/nbd-tls.spec.ts']
/**
 * Under qemu: the same less the CLI (its children each start Node under emulation), plus
 * the filesystem checks (extent maps, FIEMAP through qemu's ioctl translation), with
 * ARM64_EXCLUDED left out.
 */
const ARM64_SPECS = ['__test__/native-binding.spec.ts', '__test__/native-load.spec.ts', '__test__/store.spec.ts', '__test__/bitmap.spec.ts', '__test__/check.spec.ts', '__test__/extents.spec.ts']
/**
 * Tests whose time limits assume a native CPU: a child Node (with tsx) must start, open a
 * bitmap and exit within 8 s, which emulated arm64 Node on two busy cores does not
 * always do. They run on x64 in `npm test` and in the matrix.
 */
const ARM64_EXCLUDED = ['the timer is unref’d: a process with an open bitmap and nothing to do exits on its own']

const MINUTE = 60_000
const results = []

function target(platform) {
  return TARGETS.find((t) => t.platform === platform)
}

/** Runs a command with output shown and a time limit; returns { ok, out }. */
function run(what, cmd, args, opts) {
  const r = spawnSync(cmd, args, { encoding: 'utf8', maxBuffer: 256 << 20, ...opts })
  process.stdout.write(r.stdout ?? '')
  process.stderr.write(r.stderr ?? '')
  if (r.error) return { ok: false, out: String(r.error), why: `${what}: ${r.error.message}` }
  if (r.signal) return { ok: false, out: r.stdout, why: `${what}: killed by ${r.signal} (time limit ${Math.round(opts.timeout / MINUTE)} min)` }
  return { ok: r.status === 0, out: `${r.stdout}\n${r.stderr}`, why: r.status === 0 ? null : `${what}: exit ${r.status}` }
}

/** ava's closing counts, from its output; a skipped or todo test counts as a failure here. */
function avaCounts(out) {
  const n = (re) => Number(re.exec(out)?.[1] ?? 0)
  const passed = n(/^\s*(\d+) tests? passed/m)
  const failed = n(/^\s*(\d+) tests? failed/m) + n(/^\s*(\d+) (?:tests? )?skipped/m) + n(/^\s*(\d+) tests? todo/m) + n(/^\s*(\d+) uncaught exceptions?/m) + n(/^\s*(\d+) unhandled rejections?/m)
  return { passed, failed }
}

function ava(label, node, specs, cwd, env, timeout, excluded = []) {
  const match = excluded.flatMap((title) => ['--match', `!${title}`])
  const r = run(label, node, [path.join(cwd, 'node_modules', 'ava', 'entrypoints', 'cli.mjs'), ...match, ...specs], { cwd, env: { ...process.env, CI: 'true', ...env }, timeout })
  const c = avaCounts(r.out)
  const ok = r.ok && c.failed === 0 && c.passed > 0
  return { ok, ...c, why: ok ? null : r.why ?? `${label}: ${c.failed} failed, ${c.passed} passed` }
}

const steps = {
  lock() {
    // The committed lockfile agrees with package.json: `npm ci` accepts it, and
    // `npm install` leaves it as it is, printing no EBADENGINE on this Node.
    const work = fs.mkdtempSync(path.join(os.tmpdir(), 'md-bitmap-lock-'))
    try {
      for (const f of ['package.json', 'package-lock.json']) fs.copyFileSync(path.join(ROOT, f), path.join(work, f))
      const env = { ...process.env, npm_config_update_notifier: 'false', npm_config_fund: 'false', npm_config_audit: 'false' }
      const problems = []
      const ci = run('npm ci --dry-run', 'npm', ['ci', '--dry-run', '--ignore-scripts'], { cwd: work, env, timeout: 5 * MINUTE })
      if (!ci.ok) problems.push(ci.why)
      const inst = run('npm install --package-lock-only', 'npm', ['install', '--package-lock-only', '--ignore-scripts'], { cwd: work, env, timeout: 5 * MINUTE })
      if (!inst.ok) problems.push(inst.why)
      if (/EBADENGINE/.test(ci.out + inst.out)) problems.push(`EBADENGINE on Node ${process.version}`)
      if (fs.readFileSync(path.join(work, 'package-lock.json'), 'utf8') !== fs.readFileSync(path.join(ROOT, 'package-lock.json'), 'utf8')) problems.push('npm install rewrote package-lock.json')
      return { ok: problems.length === 0, passed: 3 - problems.length, failed: problems.length, why: problems.join('; ') || null }
    } finally {
      fs.rmSync(work, { recursive: true, force: true })
    }
  },

  build() {
    const r = run('build:all', process.execPath, [path.join(ROOT, 'scripts', 'build-all.js')], { cwd: ROOT, timeout: 20 * MINUTE })
    const checked = (r.out.match(/^check-binaries: \S+: md-bitmap\./gm) ?? []).length
    return { ok: r.ok && checked === TARGETS.length, passed: checked, failed: TARGETS.length - checked, why: r.why, detail: r.out.split('\n').filter((l) => l.startsWith('check-binaries:')).join('\n') }
  },

  matrix() {
    const shipped = path.join(target('linux-x64-gnu').dir, target('linux-x64-gnu').binary)
    const per = []
    let passed = 0
    let failed = 0
    const whys = []
    for (const v of NODE_MATRIX) {
      const node = nodeBinary('x64', v)
      const started = Date.now()
      const r = ava(`Node ${v}`, node, MATRIX_SPECS, ROOT, { MD_BITMAP_NATIVE_PATH: shipped }, 15 * MINUTE)
      passed += r.passed
      failed += r.failed + (r.ok ? 0 : r.failed === 0 ? 1 : 0)
      if (!r.ok) whys.push(r.why)
      per.push(`Node ${v} x64: ${r.passed} passed, ${r.failed} failed (${((Date.now() - started) / 1000).toFixed(0)} s)`)
    }
    return { ok: whys.length === 0, passed, failed, why: whys.join('; ') || null, detail: per.join('\n') }
  },

  arm64() {
    const t = target('linux-arm64-gnu')
    const co = fs.mkdtempSync(path.join(os.tmpdir(), 'md-bitmap-arm64-'))
    try {
      for (const entry of ['src', '__test__', 'bin', 'dist', 'scripts', 'package.json', 'tsconfig.json', 'README.md', 'LICENSE']) {
        fs.cpSync(path.join(ROOT, entry), path.join(co, entry), { recursive: true })
      }
      fs.symlinkSync(path.join(ROOT, 'node_modules'), path.join(co, 'node_modules'))
      fs.mkdirSync(path.join(co, 'native'))
      fs.copyFileSync(path.join(t.dir, t.binary), path.join(co, 'native', t.binary))
      const node = nodeBinary('arm64', NODE_ARM64)
      const esbuild = path.join(ROOT, 'node_modules', '@esbuild', 'linux-x64', 'bin', 'esbuild')
      const started = Date.now()
      const r = ava(`arm64 Node ${NODE_ARM64}`, node, ARM64_SPECS, co, { ESBUILD_BINARY_PATH: esbuild }, 40 * MINUTE, ARM64_EXCLUDED)
      return { ...r, detail: `Node ${NODE_ARM64} arm64 (qemu): ${r.passed} passed, ${r.failed} failed, ${ARM64_EXCLUDED.length} left out (${((Date.now() - started) / 1000).toFixed(0)} s)` }
    } finally {
      fs.rmSync(co, { recursive: true, force: true })
    }
  },

  git() {
    const work = fs.mkdtempSync(path.join(os.tmpdir(), 'md-bitmap-git-'))
    try {
      const app = path.join(work, 'app')
      fs.mkdirSync(app)
      fs.writeFileSync(path.join(app, 'package.json'), JSON.stringify({ name: 'app', version: '1.0.0', private: true }))
      // Online (prepare installs the devDependencies) but with Rust on PATH: a git install builds.
      const env = { ...userEnv(work), PATH: process.env.PATH, npm_config_offline: 'false', npm_config_cache: path.join(os.homedir(), '.npm') }
      const url = `git+file://${ROOT}`
      const inst = run('npm install git+file://', 'npm', ['install', '--no-audit', '--no-fund', url], { cwd: app, env, timeout: 15 * MINUTE })
      if (!inst.ok) return { ok: false, passed: 0, failed: 1, why: inst.why }
      const installed = path.join(app, 'node_modules', pkg.name)
      const problems = []
      const local = path.join(installed, 'native', `md-bitmap.${require(path.join(ROOT, 'dist', 'native', 'load.js')).platformTriple()}.node`)
      if (!fs.existsSync(local)) problems.push(`${local} is missing`)
      if (!fs.existsSync(path.join(installed, 'dist', 'index.js'))) problems.push('dist/ is missing')
      const bin = path.join(app, 'node_modules', '.bin', 'md-bitmap')
      const create = run('md-bitmap create', bin, ['create', 'g.bitmap', '--size', '16M', '--chunk', '1M'], { cwd: app, env, timeout: MINUTE })
      const examine = run('md-bitmap examine', bin, ['examine', 'g.bitmap'], { cwd: app, env, timeout: MINUTE })
      if (!create.ok || !examine.ok || !/^ +Bitmap : 16 bits \(chunks\), 0 dirty/m.test(examine.out)) problems.push(`create/examine: ${create.why ?? ''} ${examine.why ?? ''}`)
      const esm = run('import', process.execPath, ['--input-type=module', '-e', "import { check } from 'md-bitmap'; const i = await check('g.bitmap'); console.log(i.fileSize)"], { cwd: app, env, timeout: MINUTE })
      if (!esm.ok || !/^4096$/m.test(esm.out)) problems.push(`import + check: ${esm.why ?? esm.out}`)
      return { ok: problems.length === 0, passed: problems.length === 0 ? 1 : 0, failed: problems.length ? 1 : 0, why: problems.join('; ') || null }
    } finally {
      fs.rmSync(work, { recursive: true, force: true })
    }
  },

  release() {
    const r = run('release:dry', process.execPath, [path.join(ROOT, 'scripts', 'release.js'), 'dry'], { cwd: ROOT, timeout: 20 * MINUTE })
    const installs = (r.out.match(/create \+ examine OK/g) ?? []).length
    return { ok: r.ok && installs === 2, passed: installs, failed: 2 - installs, why: r.why, detail: r.out.split('\n').filter((l) => /^release: .*(OK on|musl tarballs)/.test(l)).join('\n') }
  },
}

const wanted = process.argv.slice(2)
for (const name of wanted) if (!(name in steps)) throw new Error(`test-platforms: no step ${name}; steps: ${Object.keys(steps).join(' ')}`)
const startedAll = Date.now()
for (const name of wanted.length ? wanted : Object.keys(steps)) {
  console.log(`\n=== test-platforms: ${name}`)
  const started = Date.now()
  let r
  try {
    r = steps[name]()
  } catch (e) {
    r = { ok: false, passed: 0, failed: 1, why: String(e?.stack ?? e) }
  }
  r.seconds = (Date.now() - started) / 1000
  results.push({ name, ...r })
  console.log(`=== test-platforms: ${name}: ${r.ok ? 'ok' : 'FAILED'} in ${r.seconds.toFixed(0)} s${r.why ? ` (${r.why})` : ''}`)
}
console.log('\ntest-platforms: summary')
for (const r of results) {
  console.log(`  ${r.ok ? 'ok    ' : 'FAILED'} ${r.name.padEnd(8)} ${String(r.seconds.toFixed(0)).padStart(5)} s  ${r.passed} passed, ${r.failed} failed${r.why ? `: ${r.why}` : ''}`)
  if (r.detail) for (const l of r.detail.split('\n')) if (l) console.log(`           ${l}`)
}
const passed = results.reduce((n, r) => n + r.passed, 0)
const failed = results.reduce((n, r) => n + r.failed, 0) + results.filter((r) => !r.ok && r.failed === 0).length
console.log(`test-platforms: total ${((Date.now() - startedAll) / 1000).toFixed(0)} s`)
console.log(`test-platforms: ${passed} passed, ${failed} failed`)
process.exit(results.every((r) => r.ok) ? 0 : 1)
