/**
 * The loader (src/native/load.ts) as an installed package meets it: a copy of the built
 * package in a project's node_modules, with no local build, and the platform package
 * present, absent, or at another version; each case in a child Node. Also the libc
 * detection: the ELF program interpreter of real executables (this Node, a musl
 * program built by musl-gcc), and that the diagnostic report is never consulted when
 * the interpreter can be read (collecting it can hang a process with open sockets).
 */
import test, { type ExecutionContext } from 'ava'
import { execFileSync, spawnSync } from 'node:child_process'
import { copyFileSync, cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { elfInterpreter, platformTriple } from '../src/native/load'
import { requires } from './helpers/env'

const ROOT = resolve(__dirname, '..')
const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { name: string; version: string }
const RUST = { 'linux-x64-gnu': 'x86_64-unknown-linux-gnu', 'linux-arm64-gnu': 'aarch64-unknown-linux-gnu', 'linux-x64-musl': 'x86_64-unknown-linux-musl', 'linux-arm64-musl': 'aarch64-unknown-linux-musl' } as Record<string, string>

/** Runs `code` (CommonJS) in a child Node in `cwd`, with none of our MD_BITMAP_ variables unless given. */
function child(cwd: string, code: string, env: Record<string, string> = {}) {
  const base = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('MD_BITMAP_')))
  const r = spawnSync(process.execPath, ['-e', code], { cwd, encoding: 'utf8', env: { ...base, NODE_OPTIONS: '', ...env }, timeout: 60_000 })
  if (r.error) throw r.error
  return r
}

const PROBE = `
const m = require('md-bitmap')
m.check('/').then(
  () => console.log(JSON.stringify({ loaded: true })),
  (e) => console.log(JSON.stringify(e.code === 'ENATIVE_LOAD' ? { code: e.code, message: e.message } : { loaded: true })),
)`

/**
 * A project with the built package copied into node_modules/md-bitmap (package.json and
 * dist/, no native/ and no crates/: as npm installs the tarball) and, unless `platform`
 * is null, the platform package at that version carrying this checkout's addon.
 */
function withProject(t: ExecutionContext, platformVersion: string | null, fn: (app: string, platformName: string) => void) {
  const triple = platformTriple()
  const binary = join(ROOT, 'native', `md-bitmap.${triple}.node`)
  t.true(existsSync(binary), `${binary} is built by npm run build`)
  t.true(existsSync(join(ROOT, 'dist', 'index.js')), 'dist/ is built by npm run build')
  const app = mkdtempSync(join(tmpdir(), 'md-bitmap-load-'))
  try {
    const root = join(app, 'node_modules', pkg.name)
    mkdirSync(root, { recursive: true })
    copyFileSync(join(ROOT, 'package.json'), join(root, 'package.json'))
    cpSync(join(ROOT, 'dist'), join(root, 'dist'), { recursive: true })
    const platformName = `${pkg.name}-${triple}`
    if (platformVersion !== null) {
      const dir = join(app, 'node_modules', platformName)
      mkdirSync(dir)
      writeFileSync(join(dir, 'package.json'), JSON.stringify({ name: platformName, version: platformVersion, main: `md-bitmap.${triple}.node` }))
      copyFileSync(binary, join(dir, `md-bitmap.${triple}.node`))
    }
    fn(app, platformName)
  } finally {
    rmSync(app, { recursive: true, force: true })
  }
}

test('the platform package at the root\'s version loads', (t) => {
  withProject(t, pkg.version, (app) => {
    const r = child(app, PROBE)
    t.deepEqual(JSON.parse(r.stdout), { loaded: true }, r.stderr)
  })
})

test('no platform package: ENATIVE_LOAD names the missing package and version, the triple, how to install it, and every attempt', (t) => {
  withProject(t, null, (app, platformName) => {
    const r = child(app, PROBE)
    const out = JSON.parse(r.stdout)
    t.is(out.code, 'ENATIVE_LOAD')
    const triple = platformTriple()
    t.true(out.message.includes(`for ${triple}`), out.message)
    t.true(out.message.includes(`Rust target ${RUST[triple]}`), out.message)
    t.true(out.message.includes(`\`npm install ${platformName}@${pkg.version}\``), out.message)
    t.true(out.message.includes('--omit=optional'), out.message)
    t.regex(out.message, /Tried:\n {2}- local build \([^)]*native\/md-bitmap\.[a-z0-9-]+\.node\): not built\n {2}- platform package \(md-bitmap-[a-z0-9-]+\): not installed$/)
    t.false(out.message.includes('build:native'), 'an installed package has no Rust sources: no build hint')
  })
})

test('a platform package of another version is refused, naming both versions; MD_BITMAP_SKIP_VERSION_CHECK=1 loads it', (t) => {
  withProject(t, '0.0.1-other', (app, platformName) => {
    const r = child(app, PROBE)
    const out = JSON.parse(r.stdout)
    t.is(out.code, 'ENATIVE_LOAD', r.stderr)
    t.true(out.message.includes(`version 0.0.1-other, but md-bitmap is ${pkg.version}`), out.message)
    t.true(out.message.includes('MD_BITMAP_SKIP_VERSION_CHECK=1'), out.message)
    t.true(out.message.includes(`npm install ${platformName}@${pkg.version}`), out.message)
    t.regex(out.message, /- local build .*not built\n {2}- platform package \(.*package\.json\): version/)
    const skipped = child(app, PROBE, { MD_BITMAP_SKIP_VERSION_CHECK: '1' })
    t.deepEqual(JSON.parse(skipped.stdout), { loaded: true }, skipped.stderr)
  })
})

test('in a source checkout the error also says how to build the addon', (t) => {
  const r = child(ROOT, `
    const { binding } = require('./dist/native/load.js')
    try { binding(); console.log('{}') } catch (e) { console.log(JSON.stringify({ message: e.message })) }`, { MD_BITMAP_NATIVE_PATH: join(ROOT, 'no-such.node') })
  const out = JSON.parse(r.stdout)
  t.regex(out.message, /MD_BITMAP_NATIVE_PATH \([^)]*no-such\.node\): Cannot find module/)
  t.regex(out.message, /unset MD_BITMAP_NATIVE_PATH/)
  // Without the override, a checkout whose platform package is absent points at the build.
  withProject(t, null, (app) => {
    mkdirSync(join(app, 'node_modules', pkg.name, 'crates'))
    const r2 = child(app, PROBE)
    t.regex(JSON.parse(r2.stdout).message, /in this source checkout, build it with `npm run build:native` \(needs Rust\)/)
  })
})

test('libc detection reads the ELF interpreter of this Node and never asks the diagnostic report', (t) => {
  const interp = elfInterpreter(process.execPath)
  t.is(typeof interp, 'string')
  t.regex(interp!, /^\/lib(64)?\/ld-(linux|musl)-[a-z0-9_-]+\.so\.[12]$/)
  t.is(platformTriple().endsWith('-musl'), interp!.includes('musl'))
  t.is(elfInterpreter(join(ROOT, 'package.json')), undefined, 'not an ELF file')
  t.is(elfInterpreter(join(ROOT, 'no-such-file')), undefined, 'no file')
  // A shared object names no interpreter.
  t.is(elfInterpreter(join(ROOT, 'native', `md-bitmap.${platformTriple()}.node`)), null)

  const r = child(ROOT, `
    process.report.getReport = () => { throw new Error('the diagnostic report was consulted') }
    console.log(require('./dist/native/load.js').platformTriple())`)
  t.is(r.status, 0, r.stderr)
  t.is(r.stdout.trim(), platformTriple())
})

requires(['musl-gcc'])('a program linked against musl is recognised by its interpreter; a static one names none', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'md-bitmap-musl-'))
  try {
    writeFileSync(join(dir, 'hello.c'), 'int main(void) { return 0; }\n')
    execFileSync('musl-gcc', ['-o', join(dir, 'hello'), join(dir, 'hello.c')], { stdio: 'pipe' })
    execFileSync(join(dir, 'hello'))
    const interp = elfInterpreter(join(dir, 'hello'))
    t.regex(interp ?? '', /^\/lib\/ld-musl-[a-z0-9_]+\.so\.1$/)
    // Linked statically, it names none.
    execFileSync('musl-gcc', ['-static', '-o', join(dir, 'static'), join(dir, 'hello.c')], { stdio: 'pipe' })
    t.is(elfInterpreter(join(dir, 'static')), null)
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
})
