/**
 * Finds and loads the native addon. In order: the path in `MD_BITMAP_NATIVE_PATH`
 * (when set, nothing else is tried), the local build in `native/` (a source checkout
 * after `npm install`), then the prebuilt platform package `md-bitmap-<platform>`.
 * When none loads, one error lists every attempt and why it failed.
 *
 * @internal
 * @module
 */
import { existsSync } from 'node:fs'
import { join } from 'node:path'
import { MdBitmapError } from '../errors'
import type * as Binding from './binding'

export type NativeBinding = typeof Binding

/** The platform triple the binaries are named by, e.g. `linux-x64-gnu`. */
export function platformTriple(): string {
  const libc = process.platform === 'linux' ? (isMusl() ? '-musl' : '-gnu') : ''
  return `${process.platform}-${process.arch}${libc}`
}

function isMusl(): boolean {
  const report = process.report?.getReport() as { header?: { glibcVersionRuntime?: string } } | undefined
  return !report?.header?.glibcVersionRuntime
}

function load(): NativeBinding {
  const triple = platformTriple()
  const attempts: string[] = []
  const tryLoad = (what: string, spec: string): NativeBinding | undefined => {
    try {
      return require(spec) as NativeBinding
    } catch (e) {
      attempts.push(`${what} (${spec}): ${(e as Error).message.split('\n')[0]}`)
      return undefined
    }
  }
  const override = process.env.MD_BITMAP_NATIVE_PATH
  if (override) {
    const b = tryLoad('MD_BITMAP_NATIVE_PATH', override)
    if (b) return b
  } else {
    const local = join(__dirname, '..', '..', 'native', `md-bitmap.${triple}.node`)
    const b =
      (existsSync(local) ? tryLoad('local build', local) : (attempts.push(`local build (${local}): not built`), undefined)) ??
      tryLoad('platform package', `md-bitmap-${triple}`)
    if (b) return b
  }
  const supported = ['linux-x64-gnu', 'linux-x64-musl', 'linux-arm64-gnu', 'linux-arm64-musl']
  const hint = supported.includes(triple)
    ? `reinstall so npm fetches the optional dependency md-bitmap-${triple} (not with --no-optional / --omit=optional), or build from source with \`npm run build:native\` (needs Rust)`
    : `no prebuilt binary exists for ${triple} (supported: ${supported.join(', ')}); build from source with \`npm run build:native\``
  throw new MdBitmapError(
    'ENATIVE_LOAD',
    `md-bitmap could not load its native addon for ${triple}; ${hint}. Tried:\n  - ${attempts.join('\n  - ')}`,
  )
}

let cached: NativeBinding | undefined

/** The loaded binding; loads it on first use. */
export function binding(): NativeBinding {
  return (cached ??= load())
}
