/**
 * Capability gating for tests that need root, loop devices, a kernel filesystem or an
 * external tool.
 *
 *   const t = requires(['root', 'loop', 'mkfs.xfs', 'fs:xfs'])
 *   t('something on xfs', async (tt) => { ... })
 *
 * When everything is available, the returned function is ava's `test` itself. When
 * something is missing:
 * - outside CI (`CI` is not `'true'`), the tests are skipped (`test.skip`) and the
 *   reason is printed once per missing set with console.log;
 * - in CI (`CI=true`) nothing is ever skipped: each test is declared and fails with
 *   the reason, because a test that silently skips in CI is a test that never runs.
 *
 * Capability names:
 * - `root`: running as uid 0;
 * - `loop`: /dev/loop-control exists and `losetup -f` finds a free device;
 * - `fs:<name>`: the kernel knows the filesystem (/proc/filesystems, or its module
 *   can be loaded);
 * - anything else: an executable looked up in PATH plus the sbin directories
 *   (`mkfs.xfs`, `filefrag`, `losetup`, ...).
 */
import test, { type ExecutionContext } from 'ava'
import { execFileSync } from 'node:child_process'
import { accessSync, constants, existsSync, readFileSync } from 'node:fs'
import { delimiter, join } from 'node:path'

export const inCI = process.env.CI === 'true'

const SBIN = ['/usr/local/sbin', '/usr/sbin', '/sbin']

/** The absolute path of an executable, or null. */
export function which(tool: string): string | null {
  const dirs = [...(process.env.PATH ?? '').split(delimiter).filter(Boolean), ...SBIN]
  for (const d of dirs) {
    const p = join(d, tool)
    try {
      accessSync(p, constants.X_OK)
      return p
    } catch {
      // not here
    }
  }
  return null
}

const cache = new Map<string, string | null>()

/** Why `cap` is unavailable, or null when it is available. Cached per process. */
export function missing(cap: string): string | null {
  if (cache.has(cap)) return cache.get(cap)!
  const why = probe(cap)
  cache.set(cap, why)
  return why
}

function probe(cap: string): string | null {
  if (cap === 'root') {
    return process.getuid?.() === 0 ? null : `not running as root (uid ${process.getuid?.()})`
  }
  if (cap === 'loop') {
    if (!existsSync('/dev/loop-control')) return 'no /dev/loop-control (loop driver not available)'
    const losetup = which('losetup')
    if (!losetup) return 'losetup not found'
    try {
      execFileSync(losetup, ['-f'], { stdio: 'pipe' })
      return null
    } catch (e) {
      return `losetup -f found no free loop device: ${String((e as { stderr?: Buffer }).stderr ?? e).trim()}`
    }
  }
  if (cap.startsWith('fs:')) {
    const name = cap.slice(3)
    const known = () => readFileSync('/proc/filesystems', 'utf8').split('\n').some((l) => l.split('\t').pop() === name)
    if (known()) return null
    const modprobe = which('modprobe')
    if (modprobe) {
      try {
        execFileSync(modprobe, [name], { stdio: 'pipe' })
      } catch {
        // reported below
      }
      if (known()) return null
    }
    return `the kernel does not support the ${name} filesystem (not in /proc/filesystems, modprobe ${name} failed)`
  }
  return which(cap) ? null : `${cap} not found in PATH`
}

type Impl = (t: ExecutionContext) => unknown

/** A test declarer gated on capabilities; `.serial` declares a serial test. */
export interface Gated {
  (title: string, impl: Impl): void
  serial(title: string, impl: Impl): void
  /** Null when every capability is available, else why not. */
  readonly unavailable: string | null
}

const announced = new Set<string>()

function gated(declare: (title: string, impl: Impl) => void, declareSerial: (title: string, impl: Impl) => void, unavailable: string | null): Gated {
  return Object.assign((title: string, impl: Impl) => declare(title, impl), { serial: declareSerial, unavailable })
}

/** ava's `test` when every capability in `caps` is available; see the module comment. */
export function requires(caps: string[]): Gated {
  const reasons = caps.map((c) => missing(c)).filter((r): r is string => r !== null)
  const reason = reasons.length ? reasons.join('; ') : null
  if (reason === null) {
    return gated((title, impl) => test(title, impl), (title, impl) => test.serial(title, impl), null)
  }
  if (inCI) {
    const failing = (t: ExecutionContext) => {
      t.fail(`required capability unavailable in CI (tests may not skip in CI): ${reason}`)
    }
    return gated((title) => test(title, failing), (title) => test.serial(title, failing), reason)
  }
  const key = `${caps.join(',')}: ${reason}`
  const announce = () => {
    if (!announced.has(key)) {
      announced.add(key)
      console.log(`skipping tests that need [${caps.join(', ')}]: ${reason}`)
    }
  }
  return gated(
    (title, impl) => {
      announce()
      test.skip(title, impl)
    },
    (title, impl) => {
      announce()
      test.serial.skip(title, impl)
    },
    reason,
  )
}

/** The capabilities every loop-mounted filesystem test needs, plus mkfs for `fsType`. */
export function fsCaps(fsType: 'ext4' | 'xfs' | 'btrfs' | 'tmpfs'): string[] {
  if (fsType === 'tmpfs') return ['root', 'mount', 'umount', 'fs:tmpfs']
  return ['root', 'loop', 'losetup', 'mount', 'umount', `mkfs.${fsType}`, `fs:${fsType}`]
}
