/**
 * Real filesystems on loop devices (or tmpfs) for tests, always cleaned up.
 *
 *   await withFs('xfs', 300, async (dir, dev, ctx) => { ... })
 *
 * creates a sparse image in a fresh temporary directory, attaches it with
 * `losetup -f --show`, runs mkfs, mounts it, runs `fn`, and then, whatever `fn` did
 * (threw, left files open, broke the filesystem), unmounts (lazily if it must),
 * detaches the loop device and removes the temporary directory. A process 'exit'
 * handler (and SIGINT/SIGTERM handlers) clean up anything still mounted, and at load
 * this module sweeps mounts and loop devices leaked by earlier test processes that died.
 */
import { execFileSync, type ExecFileSyncOptions } from 'node:child_process'
import { mkdirSync, mkdtempSync, readFileSync, readdirSync, readlinkSync, rmSync, truncateSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

export type FsType = 'ext4' | 'xfs' | 'btrfs' | 'tmpfs'
export type LoopFsType = Exclude<FsType, 'tmpfs'>

/** Smallest sizes the tools accept: xfsprogs 6.x refuses < 300 MiB, mkfs.btrfs < ~109 MiB. */
export const MIN_SIZE_MIB: Record<FsType, number> = { ext4: 8, xfs: 300, btrfs: 128, tmpfs: 1 }

export interface WithFsOptions {
  /** Extra mkfs arguments, before the device. */
  mkfsArgs?: string[]
  /** Passed to `mount -o`. */
  mountOptions?: string
  /** Where to put the temporary directory holding the image (default: os.tmpdir()). */
  parentDir?: string
  /** The loop device's logical sector size (`losetup -b`), default 512. */
  sectorSize?: number
}

export interface FsContext {
  /** The temporary directory holding the image and the mount point. */
  dir: string
  /** The backing image, or null for tmpfs. */
  image: string | null
  mountDir: string
  loopDev: string | null
  fsType: FsType
}

const PREFIX = 'md-bitmap-test-'

interface Resource {
  dir: string
  mountDir: string
  mounted: boolean
  loopDev: string | null
}

const active = new Set<Resource>()

function run(cmd: string, args: string[], opts: ExecFileSyncOptions = {}): string {
  return execFileSync(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], encoding: 'utf8', ...opts }) as string
}

function errText(e: unknown): string {
  const x = e as { stderr?: string | Buffer; message?: string }
  return String(x.stderr || x.message || e).trim()
}

function sleepSync(ms: number) {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms)
}

/** Unmounts `dir`, retrying a busy unmount, and lazily as the last resort. */
export function unmount(dir: string): void {
  let last: unknown
  for (let i = 0; i < 3; i++) {
    try {
      run('umount', [dir])
      return
    } catch (e) {
      last = e
      if (!isMounted(dir)) return
      sleepSync(100 * (i + 1))
    }
  }
  try {
    run('umount', ['-l', dir])
  } catch (e) {
    if (isMounted(dir)) throw new Error(`cannot unmount ${dir}: ${errText(last)}; lazy: ${errText(e)}`)
  }
}

/** Whether something is mounted at `dir` (by /proc/self/mountinfo). */
export function isMounted(dir: string): boolean {
  return mountPoints().includes(dir)
}

function mountPoints(): string[] {
  return readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((l) => l.split(' ')[4].replace(/\\040/g, ' '))
}

export function detach(loopDev: string): void {
  for (let i = 0; i < 5; i++) {
    try {
      run('losetup', ['-d', loopDev])
      return
    } catch (e) {
      // Already gone?
      if (!loopBacking(loopDev)) return
      if (i === 4) throw new Error(`cannot detach ${loopDev}: ${errText(e)}`)
      sleepSync(100 * (i + 1))
    }
  }
}

/** The backing file of a loop device, or null if it is not attached. */
export function loopBacking(loopDev: string): string | null {
  const name = loopDev.replace(/^\/dev\//, '')
  try {
    return readFileSync(`/sys/block/${name}/loop/backing_file`, 'utf8').trim()
  } catch {
    return null
  }
}

const frozen = new Set<string>()

/** `fsfreeze --freeze`; cleanup thaws it if the test did not. */
export function freeze(mountDir: string): void {
  run('fsfreeze', ['--freeze', mountDir])
  frozen.add(mountDir)
}

export function thaw(mountDir: string): void {
  if (!frozen.has(mountDir)) return
  run('fsfreeze', ['--unfreeze', mountDir])
  frozen.delete(mountDir)
}

/**
 * Where the crash specs put the images of their filesystems (withFs `parentDir`): in
 * memory, so that the loop device's flushes (an fsync of its image) cost nothing while
 * the specs SIGKILL writers (which loses nothing the page cache holds). The filesystem
 * on the loop device is a disk filesystem all the same (ext4, direct I/O).
 */
export const CRASH_FS_PARENT = '/dev/shm'

/**
 * Waits until every write in progress on the filesystem mounted at `mountDir` has
 * completed, including those a process killed with SIGKILL left in flight: writes
 * submitted through io_uring are not waited for when the process dies, so they may
 * still land after its parent saw it end (its pipes closed, its pid reaped; see
 * crash-settle.spec.ts). A freeze waits for every write holding the filesystem's write
 * protection (an io_uring write holds it until it completes) and syncs the
 * filesystem; the thaw that follows lets writes go on. A crash test reads "the files
 * as the crash left them" only after this.
 */
export function settleWrites(mountDir: string): void {
  freeze(mountDir)
  thaw(mountDir)
}

/** This process's open descriptors on files under `dir` or on `dev`. */
export function openFdsOn(dir: string, dev: string | null): string[] {
  const out: string[] = []
  for (const fd of readdirSync('/proc/self/fd')) {
    let target: string
    try {
      target = readlinkSync(`/proc/self/fd/${fd}`)
    } catch {
      continue
    }
    if (target.startsWith(dir + '/') || (dev !== null && target === dev)) out.push(`fd ${fd} -> ${target}`)
  }
  return out
}

function cleanup(r: Resource): string[] {
  const errors: string[] = []
  // Whatever the test opened on this filesystem and did not close is a leak (a store
  // whose close() did not release its descriptors, say): report it, then clean up anyway.
  const leaks = openFdsOn(r.mountDir, r.loopDev)
  if (leaks.length) errors.push(`descriptors still open at cleanup: ${leaks.join(', ')}`)
  if (frozen.has(r.mountDir)) {
    try {
      thaw(r.mountDir)
    } catch (e) {
      errors.push(`cannot thaw ${r.mountDir}: ${errText(e)}`)
    }
  }
  if (r.mounted) {
    try {
      unmount(r.mountDir)
      r.mounted = false
    } catch (e) {
      errors.push(String(e))
    }
  }
  if (r.loopDev) {
    try {
      detach(r.loopDev)
      r.loopDev = null
    } catch (e) {
      errors.push(String(e))
    }
  }
  try {
    if (!isMounted(r.mountDir)) rmSync(r.dir, { recursive: true, force: true })
  } catch (e) {
    errors.push(`cannot remove ${r.dir}: ${e}`)
  }
  active.delete(r)
  return errors
}

function cleanupAll() {
  // Newest first: a filesystem whose image lives on another test mount goes first.
  for (const r of [...active].reverse()) cleanup(r)
}

process.on('exit', cleanupAll)
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
  process.once(sig, () => {
    cleanupAll()
    process.kill(process.pid, sig)
  })
}

/**
 * Cleans up what earlier test processes (named in the directory, `md-bitmap-test-<pid>-`)
 * leaked when they died without running their exit handlers. Never touches the
 * resources of a live process.
 */
export function sweepStale(): void {
  const alive = (pid: number) => {
    try {
      process.kill(pid, 0)
      return true
    } catch (e) {
      return (e as NodeJS.ErrnoException).code === 'EPERM'
    }
  }
  const stale = (path: string) => {
    const m = new RegExp(`/${PREFIX}(\\d+)-`).exec(path)
    return m !== null && Number(m[1]) !== process.pid && !alive(Number(m[1]))
  }
  // Mounts, deepest first.
  for (const mp of mountPoints().filter(stale).sort((a, b) => b.length - a.length)) {
    try {
      unmount(mp)
    } catch {
      // best effort
    }
  }
  try {
    for (const name of readdirSync('/sys/block').filter((n) => n.startsWith('loop'))) {
      const backing = loopBacking(name)
      if (backing && stale(backing)) {
        try {
          detach(`/dev/${name}`)
        } catch {
          // best effort
        }
      }
    }
  } catch {
    // no sysfs
  }
  try {
    for (const name of readdirSync(tmpdir()).filter((n) => n.startsWith(PREFIX))) {
      const p = join(tmpdir(), name)
      if (stale(p) && !mountPoints().some((m) => m.startsWith(p + '/'))) rmSync(p, { recursive: true, force: true })
    }
  } catch {
    // best effort
  }
}

if (process.getuid?.() === 0) sweepStale()

/**
 * `losetup -f --show`, retrying when another process grabbed the same free device.
 * `directIo`: `--direct-io=on|off` (off: the device's writes land in the backing file's
 * page cache, and only a flush writes them back); default: losetup's.
 */
export function attachLoop(image: string, sectorSize?: number, directIo?: 'on' | 'off'): string {
  let last: unknown
  for (let i = 0; i < 8; i++) {
    try {
      return run('losetup', ['-f', '--show', ...(sectorSize ? ['-b', String(sectorSize)] : []), ...(directIo ? [`--direct-io=${directIo}`] : []), image]).trim()
    } catch (e) {
      last = e
      sleepSync(50 + Math.random() * 200)
    }
  }
  throw new Error(`losetup -f --show ${image} failed: ${errText(last)}`)
}

/**
 * A loop device over a fresh sparse image, detached whatever `fn` does (and at process
 * exit). The image's directory is named like withFs's, so the sweep also cleans up
 * after a test process that died.
 */
export async function withLoopDevice<T>(size: number, fn: (dev: string, image: string) => Promise<T>): Promise<T> {
  const dir = mkdtempSync(join(tmpdir(), `${PREFIX}${process.pid}-loopdev-`))
  const image = join(dir, 'dev.img')
  writeFileSync(image, '')
  truncateSync(image, size)
  let dev: string | null = null
  const cleanup = () => {
    if (dev) detach(dev)
    dev = null
    rmSync(dir, { recursive: true, force: true })
  }
  process.on('exit', cleanup)
  try {
    dev = attachLoop(image)
    return await fn(dev, image)
  } finally {
    process.off('exit', cleanup)
    cleanup()
  }
}

function mkfs(fsType: LoopFsType, dev: string, extra: string[]) {
  switch (fsType) {
    case 'ext4':
      // No lazy init: a background thread zeroing inode tables would write the device
      // while tests compare its bytes.
      run('mkfs.ext4', ['-q', '-F', '-E', 'lazy_itable_init=0,lazy_journal_init=0,nodiscard', ...extra, dev])
      break
    case 'xfs':
      run('mkfs.xfs', ['-q', '-f', ...extra, dev])
      break
    case 'btrfs':
      run('mkfs.btrfs', ['-q', '-f', ...extra, dev])
      break
  }
}

export function withFs<T>(
  fsType: 'tmpfs',
  sizeMiB: number,
  fn: (mountDir: string, loopDev: null, ctx: FsContext) => Promise<T>,
  opts?: WithFsOptions,
): Promise<T>
export function withFs<T>(
  fsType: LoopFsType,
  sizeMiB: number,
  fn: (mountDir: string, loopDev: string, ctx: FsContext) => Promise<T>,
  opts?: WithFsOptions,
): Promise<T>
export async function withFs<T>(
  fsType: FsType,
  sizeMiB: number,
  fn: (mountDir: string, loopDev: any, ctx: FsContext) => Promise<T>,
  opts: WithFsOptions = {},
): Promise<T> {
  if (!(sizeMiB >= MIN_SIZE_MIB[fsType])) {
    throw new Error(`withFs: ${fsType} needs at least ${MIN_SIZE_MIB[fsType]} MiB, got ${sizeMiB}`)
  }
  const parent = opts.parentDir ?? tmpdir()
  const dir = mkdtempSync(join(parent, `${PREFIX}${process.pid}-${fsType}-`))
  const mountDir = join(dir, 'mnt')
  mkdirSync(mountDir)
  const r: Resource = { dir, mountDir, mounted: false, loopDev: null }
  active.add(r)
  let image: string | null = null
  let result: T
  try {
    if (fsType === 'tmpfs') {
      const o = [`size=${sizeMiB}m`, opts.mountOptions].filter(Boolean).join(',')
      run('mount', ['-t', 'tmpfs', '-o', o, 'tmpfs', mountDir])
      r.mounted = true
    } else {
      image = join(dir, 'fs.img')
      run('truncate', ['-s', `${sizeMiB}M`, image])
      r.loopDev = attachLoop(image, opts.sectorSize)
      mkfs(fsType, r.loopDev, opts.mkfsArgs ?? [])
      run('mount', ['-t', fsType, ...(opts.mountOptions ? ['-o', opts.mountOptions] : []), r.loopDev, mountDir])
      r.mounted = true
    }
    result = await fn(mountDir, r.loopDev, { dir, image, mountDir, loopDev: r.loopDev, fsType })
  } catch (e) {
    const errors = cleanup(r)
    if (errors.length) console.log(`withFs cleanup after failure: ${errors.join('; ')}`)
    throw e
  }
  const errors = cleanup(r)
  if (errors.length) throw new Error(`withFs(${fsType}) cleanup failed: ${errors.join('; ')}`)
  return result
}

/** Runs a command, returning stdout; throws with its stderr on failure. */
export function sh(cmd: string, args: string[], opts: ExecFileSyncOptions = {}): string {
  try {
    return run(cmd, args, opts)
  } catch (e) {
    throw new Error(`${cmd} ${args.join(' ')}: ${errText(e)}`)
  }
}
