/**
 * Finds and loads the native addon, once per process, in this order (a state machine;
 * each step either loads the addon or records one attempt with its cause and moves on):
 *
 *   OVERRIDE   MD_BITMAP_NATIVE_PATH is set → require that file. Loaded: done. Failed:
 *              FAIL (nothing else is tried: an override that does not load is a mistake
 *              to report, not to paper over).
 *   LOCAL      <package>/native/md-bitmap.<platform>.node, the build of a source checkout
 *              or of a git install (`prepare` builds it) → exists? require it. Loaded:
 *              done. Missing or failed: record, go to PACKAGE.
 *   PACKAGE    the prebuilt platform package md-bitmap-<platform> (an optional
 *              dependency) → resolve its package.json. Not installed: record, FAIL.
 *              Its version differs from this package's: record, FAIL — unless
 *              MD_BITMAP_SKIP_VERSION_CHECK=1, then go on. require its addon. Loaded:
 *              done. Failed: record, FAIL.
 *   FAIL       ENATIVE_LOAD naming the platform and Rust target triple, which package
 *              is missing and how to get it, and every attempt with its cause.
 *
 * The platform is `<os>-<arch>[-gnu|-musl]`. The C library is read from the ELF program
 * interpreter of the running Node binary (process.execPath): a file read, which cannot
 * hang. Only a Node without one (a static build) falls back to the diagnostic report,
 * with its network section excluded (collecting it resolves every open socket's peer,
 * which can take minutes in a busy process).
 *
 * @internal
 * @module
 */
import { closeSync, existsSync, openSync, readFileSync, readSync } from 'node:fs'
import { join } from 'node:path'
import { MdBitmapError } from '../errors'
import type * as Binding from './binding'

export type NativeBinding = typeof Binding

/** The package root: the folder holding package.json, from src/native or dist/native. */
const PACKAGE_ROOT = join(__dirname, '..', '..')
const BINARY_NAME = 'md-bitmap'
/** The platforms a prebuilt addon is published for, with their Rust target triples. */
const PREBUILT: Record<string, string> = {
  'linux-x64-gnu': 'x86_64-unknown-linux-gnu',
  'linux-x64-musl': 'x86_64-unknown-linux-musl',
  'linux-arm64-gnu': 'aarch64-unknown-linux-gnu',
  'linux-arm64-musl': 'aarch64-unknown-linux-musl',
}

/**
 * The program interpreter (PT_INTERP) named by an ELF executable, e.g.
 * `/lib64/ld-linux-x86-64.so.2` or `/lib/ld-musl-aarch64.so.1`; null when it names none
 * (a static executable), undefined when the file cannot be read as ELF.
 */
export function elfInterpreter(file: string): string | null | undefined {
  let fd: number
  try {
    fd = openSync(file, 'r')
  } catch {
    return undefined
  }
  try {
    const read = (length: number, position: number): Buffer => {
      const buf = Buffer.alloc(length)
      return buf.subarray(0, readSync(fd, buf, 0, length, position))
    }
    const h = read(64, 0)
    if (h.length < 52 || h.readUInt32BE(0) !== 0x7f454c46) return undefined
    const is64 = h[4] === 2
    const le = h[5] === 1
    const u16 = (b: Buffer, o: number) => (le ? b.readUInt16LE(o) : b.readUInt16BE(o))
    const u32 = (b: Buffer, o: number) => (le ? b.readUInt32LE(o) : b.readUInt32BE(o))
    const word = (b: Buffer, o: number) => (is64 ? Number(le ? b.readBigUInt64LE(o) : b.readBigUInt64BE(o)) : u32(b, o))
    const phoff = word(h, is64 ? 0x20 : 0x1c)
    const phentsize = u16(h, is64 ? 0x36 : 0x2a)
    const phnum = u16(h, is64 ? 0x38 : 0x2c)
    if (phentsize < (is64 ? 56 : 32) || phnum * phentsize > 1 << 16) return undefined
    const ph = read(phnum * phentsize, phoff)
    for (let i = 0; i + phentsize <= ph.length; i += phentsize) {
      if (u32(ph, i) !== 3) continue // PT_INTERP
      const offset = word(ph, i + (is64 ? 8 : 4))
      const size = word(ph, i + (is64 ? 32 : 16))
      if (size > 4096) return undefined
      return read(size, offset).toString('latin1').replace(/\0+$/, '')
    }
    return null
  } finally {
    closeSync(fd)
  }
}

function detectMusl(): boolean {
  const interp = elfInterpreter(process.execPath)
  if (interp) return interp.includes('musl')
  const report = process.report as (NodeJS.ProcessReport & { excludeNetwork?: boolean }) | undefined
  if (!report) return false
  const before = report.excludeNetwork
  report.excludeNetwork = true
  try {
    const header = (report.getReport() as { header?: { glibcVersionRuntime?: string } }).header
    return !header?.glibcVersionRuntime
  } finally {
    report.excludeNetwork = before
  }
}

let triple: string | undefined

/** The platform the binaries are named by, e.g. `linux-x64-gnu`. */
export function platformTriple(): string {
  if (triple === undefined) {
    const libc = process.platform === 'linux' ? (detectMusl() ? '-musl' : '-gnu') : ''
    triple = `${process.platform}-${process.arch}${libc}`
  }
  return triple
}

function rootVersion(): string {
  return (JSON.parse(readFileSync(join(PACKAGE_ROOT, 'package.json'), 'utf8')) as { version: string }).version
}

const firstLine = (e: unknown) => String((e as Error)?.message ?? e).split('\n')[0]

function load(): NativeBinding {
  const platform = platformTriple()
  const attempts: string[] = []
  const tryRequire = (what: string, file: string): NativeBinding | undefined => {
    try {
      return require(file) as NativeBinding
    } catch (e) {
      attempts.push(`${what} (${file}): ${firstLine(e)}`)
      return undefined
    }
  }

  // OVERRIDE
  const override = process.env.MD_BITMAP_NATIVE_PATH
  if (override) {
    const b = tryRequire('MD_BITMAP_NATIVE_PATH', override)
    if (b) return b
    throw fail(platform, attempts, 'unset MD_BITMAP_NATIVE_PATH to load the installed addon, or point it at a loadable .node file')
  }

  // LOCAL
  const local = join(PACKAGE_ROOT, 'native', `${BINARY_NAME}.${platform}.node`)
  if (existsSync(local)) {
    const b = tryRequire('local build', local)
    if (b) return b
  } else {
    attempts.push(`local build (${local}): not built`)
  }

  // PACKAGE
  const version = rootVersion()
  const name = `${BINARY_NAME}-${platform}`
  const wanted = `${name}@${version}`
  let manifest: string | undefined
  try {
    manifest = require.resolve(`${name}/package.json`)
  } catch {
    attempts.push(`platform package (${name}): not installed`)
  }
  if (manifest) {
    const pkg = JSON.parse(readFileSync(manifest, 'utf8')) as { version: string; main: string }
    if (pkg.version !== version && process.env.MD_BITMAP_SKIP_VERSION_CHECK !== '1') {
      attempts.push(`platform package (${manifest}): version ${pkg.version}, but md-bitmap is ${version} (MD_BITMAP_SKIP_VERSION_CHECK=1 skips this check)`)
    } else {
      const b = tryRequire('platform package', join(manifest, '..', pkg.main))
      if (b) return b
    }
  }

  // FAIL
  const rust = PREBUILT[platform]
  const fromSource = existsSync(join(PACKAGE_ROOT, 'crates'))
    ? '; or, in this source checkout, build it with `npm run build:native` (needs Rust)'
    : ''
  const hint = rust
    ? `the prebuilt addon for ${platform} (Rust target ${rust}) is the package ${wanted}, an optional dependency of md-bitmap: install it with \`npm install ${wanted}\`, or reinstall md-bitmap without --omit=optional / --no-optional${fromSource}`
    : `no prebuilt addon exists for ${platform} (there are for ${Object.keys(PREBUILT).join(', ')}); build one from a source checkout of md-bitmap with \`npm run build:native\` (needs Rust) and set MD_BITMAP_NATIVE_PATH to it`
  throw fail(platform, attempts, hint)
}

function fail(platform: string, attempts: string[], hint: string): MdBitmapError {
  return new MdBitmapError(
    'ENATIVE_LOAD',
    `md-bitmap could not load its native addon for ${platform}; ${hint}. Tried:\n  - ${attempts.join('\n  - ')}`,
  )
}

let cached: NativeBinding | undefined

/**
 * The loaded binding; loads it on first use, and has it make its errors
 * {@link MdBitmapError}s (its page reads and writes are returned as they are, with no
 * handler of their own to convert a rejection).
 */
export function binding(): NativeBinding {
  if (cached === undefined) {
    const b = load()
    if (typeof (b as Partial<NativeBinding>).setErrorClass !== 'function') {
      throw new MdBitmapError(
        'ENATIVE_LOAD',
        'the loaded native addon is older than this md-bitmap (it has no setErrorClass); rebuild it with `npm run build:native`, or install the platform package of this version',
      )
    }
    // The addon's codes are the core's errno-style codes, MdBitmapErrorCode's own.
    b.setErrorClass(MdBitmapError as new (code: string, message: string, options?: { errno?: number }) => Error)
    cached = b
  }
  return cached
}
