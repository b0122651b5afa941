#!/usr/bin/env node
// Packs what `npm publish` would publish, the way the release job publishes it:
//
//   node scripts/release.js pack [--out DIR] [--local] [PLATFORM...]
//       Packs the root package and the platform packages (all four, or those named)
//       into DIR (default dist-release/), and writes DIR/tarballs.json. Each package is
//       staged first in DIR/stage/: the root from the files `npm pack` would take, less
//       native/ (a checkout's own build: the platform packages carry the addons), with
//       optionalDependencies on every platform package at exactly the root's version
//       written into its manifest (npm never records unpublished packages in the
//       lockfile, so they are not in the committed package.json; this is what
//       `napi prepublish` does) and no development fields; each platform package with
//       its manifest, README, LICENSE and addon from npm/<platform>/ — or, with --local,
//       this machine's addon from native/ (the checkout's build) instead.
//   node scripts/release.js dry
//       `npm run release:dry`: checks the four binaries of `npm run build:all`
//       (scripts/check-binaries.js), packs all five tarballs into dist-release/, and
//       installs them into a clean project, offline and without Rust, for every platform
//       this machine can run: linux-x64-gnu natively, linux-arm64-gnu under qemu with
//       arm64 Node; there `md-bitmap create` and `md-bitmap examine` must work.
//   node scripts/release.js refuse-publish
//       The root's prepublishOnly: `npm publish` in the checkout would publish neither
//       the optionalDependencies nor the addons; publish the tarballs instead.
'use strict'
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const { execFileSync, spawnSync } = require('node:child_process')
const { ROOT, pkg, TARGETS, NODE_ARM64, nodeBinary } = require('./platforms.js')
const { checkAll } = require('./check-binaries.js')

const quiet = { ...process.env, npm_config_update_notifier: 'false', npm_config_fund: 'false', npm_config_audit: 'false' }

function npmPack(dir, out) {
  const json = execFileSync('npm', ['pack', '--ignore-scripts', '--json', '--pack-destination', out], { cwd: dir, env: quiet, encoding: 'utf8' })
  const [info] = JSON.parse(json)
  return { file: path.join(out, info.filename), files: info.files.map((f) => f.path).sort() }
}

function copyInto(from, to, files) {
  for (const f of files) {
    fs.mkdirSync(path.dirname(path.join(to, f)), { recursive: true })
    fs.copyFileSync(path.join(from, f), path.join(to, f))
  }
}

/** The root's manifest as published: its platform packages as optional dependencies. */
function publishedManifest() {
  const m = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8'))
  for (const field of ['scripts', 'devDependencies', 'overrides', 'ava']) delete m[field]
  m.files = m.files.filter((f) => !f.startsWith('native'))
  m.optionalDependencies = { ...m.optionalDependencies, ...Object.fromEntries(TARGETS.map((t) => [t.packageName, pkg.version])) }
  return m
}

/** Packs the root and the given targets' packages into out; returns { root, [platform]: tarball }. */
function pack(out, targets, local) {
  // Only what an earlier pack left is removed: out may be any folder.
  fs.mkdirSync(out, { recursive: true })
  for (const f of fs.readdirSync(out)) if (f.endsWith('.tgz') || f === 'tarballs.json') fs.rmSync(path.join(out, f))
  const stage = path.join(out, 'stage')
  fs.rmSync(stage, { recursive: true, force: true })
  fs.mkdirSync(stage, { recursive: true })
  const packed = {}

  const listed = JSON.parse(execFileSync('npm', ['pack', '--dry-run', '--ignore-scripts', '--json'], { cwd: ROOT, env: quiet, encoding: 'utf8' }))[0]
  const rootFiles = listed.files.map((f) => f.path).filter((f) => f !== 'package.json' && !f.startsWith('native/'))
  const rootStage = path.join(stage, 'root')
  copyInto(ROOT, rootStage, rootFiles)
  fs.writeFileSync(path.join(rootStage, 'package.json'), JSON.stringify(publishedManifest(), null, 2) + '\n')
  packed.root = npmPack(rootStage, out)

  for (const t of targets) {
    const dir = path.join(stage, t.platform)
    copyInto(t.dir, dir, ['package.json', 'README.md', 'LICENSE'])
    const binary = local ? path.join(ROOT, 'native', t.binary) : path.join(t.dir, t.binary)
    if (!fs.existsSync(binary)) throw new Error(`release: ${path.relative(ROOT, binary)} is not built (${local ? 'npm run build:native' : 'npm run build:all'})`)
    fs.copyFileSync(binary, path.join(dir, t.binary))
    packed[t.platform] = npmPack(dir, out)
  }
  fs.rmSync(stage, { recursive: true, force: true })
  fs.writeFileSync(path.join(out, 'tarballs.json'), JSON.stringify(packed, null, 2) + '\n')
  return packed
}

const RUST_TOOLS = ['cargo', 'rustc', 'rustup']

/** The absolute path of an executable on PATH, or null. */
function onPath(tool) {
  for (const d of (process.env.PATH ?? '').split(path.delimiter)) {
    const p = path.join(d, tool)
    try {
      fs.accessSync(p, fs.constants.X_OK)
      return p
    } catch {
      // not here
    }
  }
  return null
}

/**
 * An environment like a user's: PATH without any directory holding cargo, rustc or
 * rustup (node, npm and npx stay reachable through a folder of links in work/ when they
 * share a directory with them), with nodeDir first when given (another platform's Node);
 * no CARGO_/RUSTUP_/MD_BITMAP_ variables, none of the npm_* variables of a running npm
 * script, and npm pointed at an empty cache in work/, offline.
 */
function userEnv(work, nodeDir = null) {
  const env = {}
  for (const [k, v] of Object.entries(process.env)) {
    if (/^(npm_|CARGO|RUSTUP|RUSTC|MD_BITMAP_)/i.test(k) || k === 'INIT_CWD' || k === 'NODE_OPTIONS') continue
    env[k] = v
  }
  const hasRust = (d) => RUST_TOOLS.some((t) => fs.existsSync(path.join(d, t)))
  const dirs = (process.env.PATH ?? '').split(path.delimiter).filter((d) => d && !hasRust(d))
  const shims = path.join(work, 'shims')
  fs.mkdirSync(shims, { recursive: true })
  for (const tool of ['node', 'npm', 'npx']) {
    const found = onPath(tool)
    if (!found) throw new Error(`${tool} not found in PATH`)
    if (hasRust(path.dirname(found))) fs.symlinkSync(found, path.join(shims, tool))
  }
  env.PATH = [...(nodeDir ? [nodeDir] : []), shims, ...dirs].join(path.delimiter)
  Object.assign(env, {
    npm_config_cache: path.join(work, 'npm-cache'),
    npm_config_offline: 'true',
    npm_config_audit: 'false',
    npm_config_fund: 'false',
    npm_config_update_notifier: 'false',
    npm_config_loglevel: 'warn',
  })
  return env
}

function must(what, r) {
  if (r.error) throw r.error
  if (r.status !== 0) throw new Error(`release: ${what} exited ${r.status}\n${r.stdout}\n${r.stderr}`)
  return r.stdout
}

/**
 * Installs the root and one platform tarball into a clean project and runs the command
 * there with `node` (that platform's Node); returns what it checked.
 */
function tryInstall(packed, target, node) {
  const work = fs.mkdtempSync(path.join(os.tmpdir(), `md-bitmap-release-${target.platform}-`))
  try {
    const app = path.join(work, 'app')
    fs.mkdirSync(app)
    fs.writeFileSync(path.join(app, 'package.json'), JSON.stringify({ name: 'app', version: '1.0.0', private: true }, null, 2))
    const env = userEnv(work, node === process.execPath ? null : path.dirname(node))
    const started = Date.now()
    // npm runs on the platform's Node too (under qemu for arm64), as on a user's machine.
    must('npm install', spawnSync(node, [npmCli(), 'install', packed.root.file, packed[target.platform].file], { cwd: app, env, encoding: 'utf8' }))
    const installed = (name) => fs.existsSync(path.join(app, 'node_modules', name, 'package.json'))
    if (!installed(pkg.name) || !installed(target.packageName)) throw new Error(`release: ${target.platform}: the install lacks ${pkg.name} or ${target.packageName}`)
    if (fs.existsSync(path.join(app, 'node_modules', pkg.name, 'native'))) throw new Error('release: the installed root carries native/')
    const bin = path.join(app, 'node_modules', '.bin', 'md-bitmap')
    // The command as a user runs it: node_modules/.bin/md-bitmap, whose `env node` finds this platform's Node first on PATH.
    must('md-bitmap create', spawnSync(bin, ['create', 'r.bitmap', '--size', '64M', '--chunk', '1M'], { cwd: app, env, encoding: 'utf8' }))
    const text = must('md-bitmap examine', spawnSync(bin, ['examine', 'r.bitmap'], { cwd: app, env, encoding: 'utf8' }))
    if (!/^ +Bitmap : 64 bits \(chunks\), 0 dirty \(0\.0%\)$/m.test(text) || !/^ +State : OK$/m.test(text)) throw new Error(`release: ${target.platform}: md-bitmap examine printed:\n${text}`)
    const probe = must(
      'node -p',
      spawnSync('node', ['-p', `[process.arch, require.resolve('md-bitmap'), require('md-bitmap/package.json').optionalDependencies['${target.packageName}']].join(' ')`], { cwd: app, env, encoding: 'utf8' }),
    ).trim()
    const [arch, , optional] = probe.split(' ')
    if (arch !== target.arch) throw new Error(`release: ${target.platform}: the command ran on ${arch} Node`)
    if (optional !== pkg.version) throw new Error(`release: the packed root lists ${target.packageName}@${optional}, want ${pkg.version}`)
    return `${target.platform}: installed ${path.basename(packed.root.file)} + ${path.basename(packed[target.platform].file)} offline, create + examine OK on ${arch} Node ${node === process.execPath ? process.version : NODE_ARM64} (${((Date.now() - started) / 1000).toFixed(1)} s)`
  } finally {
    fs.rmSync(work, { recursive: true, force: true })
  }
}

/** npm's CLI script (this machine's npm), to run on any Node. */
function npmCli() {
  return fs.realpathSync(onPath('npm'))
}

function dry() {
  if (!checkAll(TARGETS)) throw new Error('release: the binaries fail their checks; run `npm run build:all`')
  const out = path.join(ROOT, 'dist-release')
  const packed = pack(out, TARGETS, false)
  for (const [name, p] of Object.entries(packed)) console.log(`release: ${name}: ${path.relative(ROOT, p.file)} (${p.files.length} files: ${p.files.join(' ')})`)
  const x64 = TARGETS.find((t) => t.platform === 'linux-x64-gnu')
  const arm64 = TARGETS.find((t) => t.platform === 'linux-arm64-gnu')
  console.log(`release: ${tryInstall(packed, x64, process.execPath)}`)
  const armNode = nodeBinary('arm64', NODE_ARM64)
  if (!fs.existsSync(armNode)) throw new Error(`release: no arm64 Node at ${armNode}; run scripts/install-platform-deps.sh`)
  console.log(`release: ${tryInstall(packed, arm64, armNode)}`)
  console.log('release: musl tarballs packed and checked (readelf/objdump) only: no musl Node runs here')
}

function main() {
  const [cmd, ...rest] = process.argv.slice(2)
  if (cmd === 'pack') {
    const outAt = rest.indexOf('--out')
    const out = outAt >= 0 ? path.resolve(rest[outAt + 1]) : path.join(ROOT, 'dist-release')
    const names = rest.filter((a, i) => !a.startsWith('--') && rest[i - 1] !== '--out')
    const targets = names.length ? TARGETS.filter((t) => names.includes(t.platform)) : TARGETS
    if (targets.length !== names.length && names.length) throw new Error(`release: unknown platform in ${names.join(' ')}`)
    const packed = pack(out, targets, rest.includes('--local'))
    for (const [name, p] of Object.entries(packed)) console.log(`release: ${name}: ${p.file}`)
  } else if (cmd === 'dry') {
    dry()
  } else if (cmd === 'refuse-publish') {
    console.error('release: do not `npm publish` the checkout: it would carry no optionalDependencies and no addons. Run `npm run release:pack` and publish the tarballs in dist-release/ (the CI workflow\'s publish job does).')
    process.exit(1)
  } else {
    console.error('usage: node scripts/release.js pack [--out DIR] [--local] [PLATFORM...] | dry | refuse-publish')
    process.exit(2)
  }
}

module.exports = { pack, userEnv, RUST_TOOLS }
if (require.main === module) main()
