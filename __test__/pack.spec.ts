/**
 * The package as a user gets it: the root and this machine's platform package packed
 * the way the release packs them (scripts/release.js: the root staged with its
 * optionalDependencies written in, the platform package carrying this checkout's addon
 * from native/), both tarballs installed into an empty project with no Rust toolchain on
 * PATH, no registry (offline, empty cache), and there: a bitmap created with the
 * `md-bitmap` command, written through `require` and through `import`, examined with
 * `npx md-bitmap examine` (and, where mdadm is installed, compared with
 * `mdadm --examine-bitmap` line for line).
 *
 * Packing runs no scripts: the root's `prepare` (the full build) has already run at
 * `npm install`, and rebuilding dist/ here would race the tests that load it.
 */
import test from 'ava'
import { spawnSync, type SpawnSyncOptions } from 'node:child_process'
import { copyFileSync, existsSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { basename, join, relative, resolve } from 'node:path'
import { inCI, which } from './helpers/env'
import { platformTriple } from '../src/native/load'

const ROOT = resolve(__dirname, '..')
const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8'))
const MiB = 2 ** 20

interface Run {
  status: number | null
  stdout: string
  stderr: string
}

const timings: string[] = []

function run(cmd: string, args: string[], opts: SpawnSyncOptions): Run {
  const t0 = Date.now()
  const r = spawnSync(cmd, args, { encoding: 'utf8', timeout: 120_000, ...opts })
  timings.push(`${Date.now() - t0} ms ${cmd.split('/').pop()} ${args.slice(0, 3).join(' ')}`)
  if (r.error) throw r.error
  return { status: r.status, stdout: String(r.stdout), stderr: String(r.stderr) }
}

const show = (r: Run) => `exit ${r.status}\n--- stdout\n${r.stdout}\n--- stderr\n${r.stderr}`

// The release script's user environment: no Rust on PATH, npm offline with an empty cache.
// eslint-disable-next-line @typescript-eslint/no-require-imports
const { userEnv, RUST_TOOLS } = require('../scripts/release.js') as { userEnv(work: string): NodeJS.ProcessEnv; RUST_TOOLS: string[] }

/** Files under dir (relative), for the freshness check of dist/. */
function newestMtime(dir: string, ext: RegExp): number {
  let newest = 0
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name)
    if (e.isDirectory()) newest = Math.max(newest, newestMtime(p, ext))
    else if (ext.test(e.name)) newest = Math.max(newest, statSync(p).mtimeMs)
  }
  return newest
}

const CJS = `
const { Bitmap, decodeSuperblock } = require('md-bitmap')
const fs = require('node:fs')
;(async () => {
  const MiB = 2 ** 20
  const bitmap = await Bitmap.open('cli.bitmap')
  // Chunk 5: written and ended, so the daemon may clear it.
  await bitmap.startWrite(5 * MiB, 4096)
  bitmap.endWrite(5 * MiB, 4096)
  // Chunk 9: written, never ended: like a crash during the write.
  await bitmap.startWrite(9 * MiB + 512, 8192)
  await bitmap.settle()
  const sb = decodeSuperblock(fs.readFileSync('cli.bitmap').subarray(0, 256))
  console.log(JSON.stringify({ chunks: bitmap.chunks, dirty: bitmap.dirtyChunks(), mode: bitmap.stats().mode, uuid: Buffer.from(sb.uuid).toString('hex') }))
  process.exit(0) // no close(): chunk 9 stays dirty on disk, as after a crash
})().catch((e) => { console.error(e); process.exit(1) })
`

const ESM = `
import { Bitmap, decodeSuperblock, mdadmUuid } from 'md-bitmap'
import md from 'md-bitmap'
import { readFileSync } from 'node:fs'
if (md.Bitmap !== Bitmap) throw new Error('the default export and the named export differ')
const MiB = 2 ** 20
const bitmap = await Bitmap.create('esm.bitmap', { size: 32 * MiB, chunkSize: 2 * MiB, writeBehind: 8, daemonSleep: 3, uuid: '00112233445566778899aabbccddeeff' })
await bitmap.startWrite(0, 5 * MiB) // chunks 0, 1, 2
await bitmap.startWrite(30 * MiB, MiB, true) // chunk 15, behind
const sb = decodeSuperblock(readFileSync('esm.bitmap').subarray(0, 256))
console.log(JSON.stringify({ dirty: bitmap.dirtyChunks(), behind: bitmap.behindWrites, uuid: mdadmUuid(sb.uuid), writeBehind: sb.writeBehind }))
process.exit(0)
`

const PROBE_MISSING = `
const { check } = require('md-bitmap')
check('.').then(() => console.log('loaded'), (e) => console.log(JSON.stringify({ code: e.code, message: e.message })))
`

test.serial('npm pack: the tarballs install into an empty project without Rust or a registry, and work there', (t) => {
  const started = Date.now()
  const triple = platformTriple()
  const binary = `${pkg.napi.binaryName}.${triple}.node`
  const platformDir = join(ROOT, 'npm', triple)
  const platformName = `${pkg.name}-${triple}`

  // What the tarballs are made from must exist: npm install (prepare) builds it.
  for (const f of [join('native', binary), 'dist/index.js', 'dist/index.mjs', 'dist/index.d.ts', 'dist/cli/main.js', 'bin/md-bitmap.js']) {
    t.true(existsSync(join(ROOT, f)), `${f} is missing: run \`npm run build\``)
  }
  t.true(existsSync(join(platformDir, 'package.json')), `no platform package npm/${triple}`)
  if (newestMtime(join(ROOT, 'dist'), /\.js$/) < newestMtime(join(ROOT, 'src'), /\.ts$/)) {
    t.log('dist/ is older than src/: the tarball carries the last build (run `npm run build:ts` to refresh it)')
  }

  // Version sync: every platform package at the root's version; the root lists none of
  // them (the lockfile could not record them): the release writes them into the tarball.
  const sync = run(process.execPath, [join(ROOT, 'scripts', 'version-sync.js'), '--check'], { cwd: ROOT })
  t.is(sync.status, 0, show(sync))
  t.is(pkg.optionalDependencies?.[platformName], undefined, `package.json does not list ${platformName}`)

  const work = mkdtempSync(join(tmpdir(), 'md-bitmap-pack-'))
  try {
    // Pack as the release does, with this checkout's addon in the platform package.
    const tarballs = join(work, 'tarballs')
    const r = run(process.execPath, [join(ROOT, 'scripts', 'release.js'), 'pack', '--local', '--out', tarballs, triple], { cwd: ROOT })
    t.is(r.status, 0, show(r))
    const listed = JSON.parse(readFileSync(join(tarballs, 'tarballs.json'), 'utf8')) as Record<string, { file: string; files: string[] }>
    t.deepEqual(Object.keys(listed).sort(), [triple, 'root'].sort())
    const packed = { [pkg.name]: { filename: listed.root.file, files: listed.root.files }, [platformName]: { filename: listed[triple].file, files: listed[triple].files } }
    t.is(basename(packed[pkg.name].filename), `${pkg.name}-${pkg.version}.tgz`)
    t.is(basename(packed[platformName].filename), `${platformName}-${pkg.version}.tgz`)
    const rootFiles = packed[pkg.name].files
    for (const f of ['package.json', 'README.md', 'LICENSE', 'bin/md-bitmap.js', 'dist/index.js', 'dist/index.mjs', 'dist/index.d.ts', 'dist/index.d.mts', 'dist/native/binding.d.ts', 'dist/cli/main.js']) {
      t.true(rootFiles.includes(f), `the root tarball carries ${f}`)
    }
    for (const f of rootFiles) {
      t.regex(f, /^(package\.json|README\.md|LICENSE|bin\/[^/]+\.js|dist\/.+)$/, `the root tarball carries nothing else (found ${f})`)
      t.false(f.endsWith('.map'), `no source map ships (their sources do not): ${f}`)
    }
    t.false(rootFiles.some((f) => f.endsWith('.node')), 'the root tarball carries no addon: that is the platform packages\' job')
    t.deepEqual(packed[platformName].files, [binary, 'LICENSE', 'README.md', 'package.json'].sort(), 'the platform tarball carries the addon and the licence')
    const fromTar = (file: string, member: string) => spawnSync('tar', ['-xzOf', file, `package/${member}`], { maxBuffer: 64 << 20 }).stdout
    t.deepEqual(fromTar(packed[platformName].filename, binary), readFileSync(join(ROOT, 'native', binary)), 'the packed addon is the built one')
    const manifest = JSON.parse(fromTar(packed[pkg.name].filename, 'package.json').toString())
    const platforms = ['linux-x64-gnu', 'linux-x64-musl', 'linux-arm64-gnu', 'linux-arm64-musl']
    t.deepEqual(manifest.optionalDependencies, Object.fromEntries(platforms.map((p) => [`${pkg.name}-${p}`, pkg.version])), 'the packed root lists every platform package at its version')
    t.is(manifest.type, 'commonjs')
    t.is(manifest.scripts, undefined, 'no development scripts (prepare needs the Rust sources)')
    t.is(manifest.devDependencies, undefined)
    t.false(manifest.files.some((f: string) => f.startsWith('native')))

    // The user's side: an empty project, no Rust, offline with an empty cache.
    const app = join(work, 'app')
    mkdirSync(app)
    writeFileSync(join(app, 'package.json'), JSON.stringify({ name: 'app', version: '1.0.0', private: true }, null, 2))
    const env = userEnv(work)
    const noRust = run('sh', ['-c', `for t in ${RUST_TOOLS.join(' ')}; do command -v $t; done; exit 0`], { cwd: app, env })
    t.is(noRust.stdout.trim(), '', `no Rust tool on the user's PATH: ${noRust.stdout}`)
    const onPath = run('sh', ['-c', 'command -v node && command -v npm'], { cwd: app, env })
    t.is(onPath.status, 0, `node and npm are on the user's PATH: ${show(onPath)}`)

    const install = run('npm', ['install', '--no-audit', '--no-fund', packed[pkg.name].filename, packed[platformName].filename], { cwd: app, env })
    t.is(install.status, 0, `npm install of the tarballs: ${show(install)}`)
    const installed = join(app, 'node_modules', pkg.name)
    t.false(lstatSync(installed).isSymbolicLink(), 'the package is installed as files, not linked to the source tree')
    t.false(existsSync(join(installed, 'native')), 'no native/ build in the installed package: prepare did not run')
    t.false(existsSync(join(installed, 'target')), 'no cargo target/ in the installed package')
    t.true(existsSync(join(app, 'node_modules', platformName, binary)), `the addon is installed from ${platformName}`)
    const ls = run('npm', ['ls', '--all', '--json'], { cwd: app, env })
    t.is(ls.status, 0, `npm ls finds the tree valid: ${show(ls)}`)
    const tree = JSON.parse(ls.stdout) as { dependencies: Record<string, { version: string; dependencies?: Record<string, unknown> }> }
    t.is(tree.dependencies[pkg.name]?.version, pkg.version)
    t.is(tree.dependencies[platformName]?.version, pkg.version)

    // The command from the package's bin: through npx (--no: never fetch) as a user
    // types it, and straight through the link npm made (what npx runs; quicker).
    const npx = (...args: string[]) => run('npx', ['--no', '--', 'md-bitmap', ...args], { cwd: app, env })
    const bin = (...args: string[]) => run(join(app, 'node_modules', '.bin', 'md-bitmap'), args, { cwd: app, env })
    const created = npx('create', 'cli.bitmap', '--size', '64M', '--chunk', '1M')
    t.is(created.status, 0, `md-bitmap create: ${show(created)}`)

    // The library through require, and through import.
    writeFileSync(join(app, 'use.cjs'), CJS)
    const cjs = run(process.execPath, ['use.cjs'], { cwd: app, env })
    t.is(cjs.status, 0, `require('md-bitmap'): ${show(cjs)}`)
    const c = JSON.parse(cjs.stdout)
    t.is(c.chunks, 64)
    t.deepEqual(c.dirty, [{ offset: 9 * MiB, length: MiB }], 'chunk 5 was cleared by flush, chunk 9 is dirty')

    writeFileSync(join(app, 'use.mjs'), ESM)
    const esm = run(process.execPath, ['use.mjs'], { cwd: app, env })
    t.is(esm.status, 0, `import 'md-bitmap': ${show(esm)}`)
    const m = JSON.parse(esm.stdout)
    t.deepEqual(m.dirty, [{ offset: 0, length: 6 * MiB }, { offset: 30 * MiB, length: 2 * MiB }])
    t.is(m.behind, 1)
    t.is(m.uuid, '00112233:44556677:8899aabb:ccddeeff')

    // Examine both files with the command, as text and as JSON.
    const expected: Record<string, { dirty: number; bits: number; writeMode: string; uuid?: string }> = {
      'cli.bitmap': { dirty: 1, bits: 64, writeMode: 'Normal', uuid: c.uuid.replace(/(.{8})(?!$)/g, '$1:') },
      'esm.bitmap': { dirty: 4, bits: 16, writeMode: 'Allow write behind, max 8', uuid: m.uuid },
    }
    const mdadm = which('mdadm')
    for (const [file, want] of Object.entries(expected)) {
      const text = file === 'cli.bitmap' ? npx('examine', file) : bin('examine', file)
      t.is(text.status, 0, `md-bitmap examine ${file}: ${show(text)}`)
      const pct = ((100 * want.dirty) / want.bits).toFixed(1)
      t.regex(text.stdout, new RegExp(`^ +Bitmap : ${want.bits} bits \\(chunks\\), ${want.dirty} dirty \\(${pct.replace('.', '\\.')}%\\)$`, 'm'), `${file}: ${text.stdout}`)
      t.regex(text.stdout, new RegExp(`^ +Write Mode : ${want.writeMode}$`, 'm'))
      t.regex(text.stdout, new RegExp(`^ +UUID : ${want.uuid}$`, 'm'))
      t.regex(text.stdout, /^ +State : OK$/m)
      const json = bin('examine', file, '--json')
      t.is(json.status, 0, show(json))
      const j = JSON.parse(json.stdout)
      t.is(j.dirty, want.dirty)
      t.is(j.chunks, want.bits)
      if (mdadm) {
        const x = run(mdadm, ['--examine-bitmap', file], { cwd: app, env })
        t.is(x.status, 0, `mdadm -X ${file}: ${show(x)}`)
        t.is(text.stdout, x.stdout, `${file}: md-bitmap examine prints what mdadm --examine-bitmap prints`)
      } else if (inCI) {
        t.fail('mdadm is not installed (scripts/install-test-deps.sh installs it): cannot compare examine with mdadm -X')
      }
    }
    const dirty = bin('dirty', 'cli.bitmap', '--json')
    t.is(dirty.status, 0, show(dirty))
    t.deepEqual(JSON.parse(dirty.stdout).ranges, [{ offset: 9 * MiB, length: MiB }])

    // Without the platform package there is no addon: the loader says so, naming it.
    renameSync(join(app, 'node_modules', platformName), join(work, 'moved-away'))
    writeFileSync(join(app, 'probe.cjs'), PROBE_MISSING)
    const probe = run(process.execPath, ['probe.cjs'], { cwd: app, env })
    t.is(probe.status, 0, show(probe))
    const p = JSON.parse(probe.stdout)
    t.is(p.code, 'ENATIVE_LOAD')
    t.true(p.message.includes(`platform package (${platformName}): not installed`), p.message)
    t.true(p.message.includes(`\`npm install ${platformName}@${pkg.version}\``), p.message)

    t.log(timings.join('\n'))
    t.log(`tarballs: ${Object.values(packed).map((x) => `${relative(tarballs, x.filename)} (${x.files.length} files)`).join(', ')}; ${Date.now() - started} ms`)
  } finally {
    rmSync(work, { recursive: true, force: true })
  }
})

test('version-sync --check fails when a platform package is out of step, or the root lists one', (t) => {
  // A copy of the manifests with one platform version changed: --check must say so.
  const work = mkdtempSync(join(tmpdir(), 'md-bitmap-vsync-'))
  try {
    mkdirSync(join(work, 'scripts'))
    for (const f of ['version-sync.js', 'platforms.js']) copyFileSync(join(ROOT, 'scripts', f), join(work, 'scripts', f))
    copyFileSync(join(ROOT, 'package.json'), join(work, 'package.json'))
    for (const d of readdirSync(join(ROOT, 'npm'))) {
      mkdirSync(join(work, 'npm', d), { recursive: true })
      copyFileSync(join(ROOT, 'npm', d, 'package.json'), join(work, 'npm', d, 'package.json'))
    }
    const script = join(work, 'scripts', 'version-sync.js')
    t.is(run(process.execPath, [script, '--check'], { cwd: work }).status, 0)

    // npm version bumps the root; the "version" script must follow with the rest.
    const root = JSON.parse(readFileSync(join(work, 'package.json'), 'utf8'))
    root.version = '9.8.7'
    root.engines = { node: '>=99' }
    // A root listing a platform package (npm could not record it in the lockfile).
    root.optionalDependencies = { [`${root.name}-linux-x64-gnu`]: '9.8.7' }
    writeFileSync(join(work, 'package.json'), JSON.stringify(root, null, 2) + '\n')
    const stale = run(process.execPath, [script, '--check'], { cwd: work })
    t.is(stale.status, 1, show(stale))
    t.true(stale.stderr.includes(`version "${pkg.version}", root is "9.8.7"`), stale.stderr)
    t.regex(stale.stderr, /engines \{"node":"[^"]+"\}, root is \{"node":">=99"\}/)
    t.regex(stale.stderr, /optionalDependencies lists md-bitmap-linux-x64-gnu/)
    const fix = run(process.execPath, [script], { cwd: work })
    t.is(fix.status, 0, show(fix))
    t.is(run(process.execPath, [script, '--check'], { cwd: work }).status, 0)
    for (const d of readdirSync(join(work, 'npm'))) {
      const platform = JSON.parse(readFileSync(join(work, 'npm', d, 'package.json'), 'utf8'))
      t.is(platform.version, '9.8.7', d)
      t.deepEqual(platform.engines, { node: '>=99' }, d)
    }
    const after = JSON.parse(readFileSync(join(work, 'package.json'), 'utf8'))
    t.is(after.optionalDependencies, undefined, 'the platform package is no longer listed')
    t.is(after.scripts.version, root.scripts.version, 'the rest of package.json is kept')
  } finally {
    rmSync(work, { recursive: true, force: true })
  }
})

