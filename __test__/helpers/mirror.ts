/**
 * Test rigs for the Mirror: members wrapped in a {@link ProbeMember} that counts reads
 * and writes, can delay write completions (through the library's SlowMember) and can
 * inject faults, with one control object per member slot that survives the member
 * being reopened (reAdd, Mirror.open).
 *
 * Fault injection exists because a real device cannot be made to fail one chosen read
 * or write on demand; the failure specs also produce real errors (ENOSPC, a shrunk
 * device) where the kernel can.
 */
import type { ExecutionContext } from 'ava'
import { mkdtempSync } from 'node:fs'
import { join } from 'node:path'
import { FileMember, MdBitmapError, Mirror, SlowMember, allocAligned, type Member, type MemberSpec, type MirrorCreateOptions, type OpenMember } from '../../src'
import { diskTempDir } from './mdadm'
import { PAGE, readDirect } from './io'

export const KiB = 1024
export const MiB = 1024 * KiB
/** daemonSleep for tests: the timer never fires, passes run only when a test asks. */
export const IDLE = 86400

/** What a test controls and observes for one member slot. */
export class MemberControl {
  /** Extra milliseconds before each write completes (SlowMember). */
  delayMs = 0
  /** Fail reads / writes that overlap [offset, offset+length) when this says so. */
  failRead: ((offset: number, length: number) => boolean) | null = null
  failWrite: ((offset: number, length: number) => boolean) | null = null
  reads = 0
  writesStarted = 0
  writesDone = 0
  writesInFlight = 0
  /** Called when a write completed on the member (successfully). */
  onWriteDone: ((offset: number, length: number) => void) | null = null
  /** While set, writes wait here before they start (see {@link hold}). */
  gate: Promise<void> | null = null
  private openGate: (() => void) | null = null
  private readonly pending = new Set<Promise<unknown>>()

  /**
   * Holds every write issued from now on until {@link release}: a slow member whose
   * slowness does not depend on how loaded the machine is, so a test can be sure a
   * write is still in flight while it looks.
   */
  hold(): void {
    if (!this.gate) this.gate = new Promise((r) => (this.openGate = r))
  }

  release(): void {
    this.openGate?.()
    this.gate = null
    this.openGate = null
  }
  /** Offsets (start) of completed writes, in completion order. */
  readonly completed: number[] = []

  track(p: Promise<unknown>): void {
    this.pending.add(p)
    const rm = () => void this.pending.delete(p)
    p.then(rm, rm)
  }

  /** Resolves once every write issued so far to the member has settled. */
  async idle(): Promise<void> {
    while (this.pending.size) await Promise.allSettled([...this.pending])
  }
}

export function injected(what: string, offset: number): MdBitmapError {
  return new MdBitmapError('EIO', `injected ${what} error at ${offset} (test fault)`, { errno: 5 })
}

/** A member that counts, delays and fails on its control's say. */
export class ProbeMember implements Member {
  private readonly slow: SlowMember
  constructor(
    readonly inner: Member,
    readonly ctl: MemberControl,
  ) {
    this.slow = new SlowMember(inner, 0)
  }
  get path(): string {
    return this.inner.path
  }
  get size(): number {
    return this.inner.size
  }
  get alignment(): number {
    return this.inner.alignment
  }
  async read(target: Uint8Array, offset: number): Promise<void> {
    if (this.ctl.failRead?.(offset, target.length)) throw injected('read', offset)
    await this.inner.read(target, offset)
    this.ctl.reads++
  }
  write(data: Uint8Array, offset: number): Promise<void> {
    const ctl = this.ctl
    ctl.writesStarted++
    ctl.writesInFlight++
    const delay = ctl.delayMs
    const gate = ctl.gate
    const p = (async () => {
      try {
        if (gate) await gate
        if (ctl.failWrite?.(offset, data.length)) throw injected('write', offset)
        this.slow.delayMs = delay
        await this.slow.write(data, offset)
        ctl.writesDone++
        ctl.completed.push(offset)
        ctl.onWriteDone?.(offset, data.length)
      } finally {
        ctl.writesInFlight--
      }
    })()
    ctl.track(p)
    return p
  }
  flush(): Promise<void> {
    return this.inner.flush()
  }
  close(): Promise<void> {
    return this.inner.close()
  }
}

export interface RigMember {
  writeMostly?: boolean
  delayMs?: number
}

export interface Rig {
  dir: string
  bitmapPath: string
  metaPath: string
  paths: string[]
  ctl: MemberControl[]
  openMember: OpenMember
  mirror: Mirror
}

/** An opener that wraps every member slot in a ProbeMember with a control per slot. */
export function probeOpener(ctl: MemberControl[]): OpenMember {
  return async (spec: MemberSpec) => {
    ctl[spec.index] ??= new MemberControl()
    return new ProbeMember(await FileMember.open(spec.path), ctl[spec.index])
  }
}

/**
 * A mirror in a fresh directory under `parent` (a disk filesystem): members `m<i>.img`
 * created sparse by the mirror, bitmap `bitmap` (or none with `bitmap: null`).
 */
export async function makeRig(
  parent: string,
  members: RigMember[],
  o: Partial<Omit<MirrorCreateOptions, 'members' | 'bitmap'>> & { bitmap?: null; memberPaths?: (string | undefined)[] } = {},
): Promise<Rig> {
  const dir = mkdtempSync(join(parent, 'rig-'))
  const bitmapPath = join(dir, 'bitmap')
  const metaPath = o.bitmap === null ? join(dir, 'mirror.json') : `${bitmapPath}.mirror.json`
  const paths = members.map((_, i) => o.memberPaths?.[i] ?? join(dir, `m${i}.img`))
  const ctl = members.map((m) => Object.assign(new MemberControl(), { delayMs: m.delayMs ?? 0 }))
  const openMember = probeOpener(ctl)
  const { memberPaths: _, bitmap, ...rest } = o
  const mirror = await Mirror.create({
    size: MiB,
    chunkSize: 64 * KiB,
    daemonSleep: IDLE,
    ...rest,
    bitmap: bitmap === null ? null : bitmapPath,
    metadata: bitmap === null ? metaPath : undefined,
    members: members.map((m, i) => ({ path: paths[i], writeMostly: m.writeMostly })),
    openMember,
  })
  return { dir, bitmapPath, metaPath, paths, ctl, openMember, mirror }
}

/** A page-aligned buffer of `size` bytes filled from `seed` (distinct per seed). */
export function pattern(size: number, seed: number): Uint8Array {
  const b = allocAligned(size, PAGE)
  let x = (seed * 2654435761 + 12345) >>> 0 || 1
  for (let i = 0; i < size; i += 4) {
    x ^= x << 13
    x >>>= 0
    x ^= x >>> 17
    x ^= x << 5
    x >>>= 0
    new DataView(b.buffer, b.byteOffset + i, 4).setUint32(0, x, true)
  }
  return b
}

/**
 * Asserts two byte arrays are equal, saying where they first differ. (ava's deepEqual
 * takes seconds per MiB of buffer; this is a memcmp.)
 */
export function sameBytes(t: ExecutionContext, actual: Uint8Array, expected: Uint8Array, message = 'the bytes match'): void {
  const a = Buffer.from(actual.buffer, actual.byteOffset, actual.length)
  const b = Buffer.from(expected.buffer, expected.byteOffset, expected.length)
  if (a.equals(b)) {
    t.pass(message)
    return
  }
  let i = 0
  while (i < a.length && i < b.length && a[i] === b[i]) i++
  t.fail(`${message}: ${a.length} vs ${b.length} bytes, first difference at byte ${i} (actual ${a.subarray(i, i + 8).toString('hex')}, expected ${b.subarray(i, i + 8).toString('hex')})`)
}

/** Bytes of a member file (or device) read with O_DIRECT, bypassing the library. */
export function onDisk(path: string, offset: number, length: number): Buffer {
  const b = readDirect(path, offset, length)
  return Buffer.from(b.buffer, b.byteOffset, b.length)
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms))
}

/** Polls `cond` every few milliseconds until it holds (or throws after `ms`). */
export async function until(cond: () => boolean, ms = 5000, what = 'condition'): Promise<void> {
  const t0 = Date.now()
  while (!cond()) {
    if (Date.now() - t0 > ms) throw new Error(`timed out after ${ms} ms waiting for ${what}`)
    await sleep(2)
  }
}

/** The code of the error `p` rejects (or `f` throws) with, or 'no error'. */
export async function codeOf(p: Promise<unknown> | (() => unknown)): Promise<string> {
  try {
    await (typeof p === 'function' ? p() : p)
  } catch (e) {
    return (e as { code?: string }).code ?? `not coded: ${e}`
  }
  return 'no error'
}

/** A disk-backed parent directory for rigs. */
export function rigParent(prefix: string): string {
  return diskTempDir(prefix)
}
