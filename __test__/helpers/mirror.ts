/**
 * Test rigs for the Mirror: a mirror in a fresh directory whose members are wrapped in
 * a ProbeMember (helpers/members.ts) with one control object per member slot, and the
 * data and comparisons the mirror specs use.
 */
import type { ExecutionContext } from 'ava'
import { mkdtempSync } from 'node:fs'
import { join } from 'node:path'
import { FileMember, Mirror, allocAligned, type MemberSpec, type MirrorCreateOptions, type OpenMember } from '../../src'
import { Prng } from '../../src/cli/demo/prng'
import { MemberControl, ProbeMember } from './members'
import { diskTempDir } from './tmp'
import { PAGE, readDirect } from './io'

export const KiB = 1024
export const MiB = 1024 * KiB
/** daemonSleep for tests: the timer never fires, passes run only when a test asks. */
export const IDLE = 86400

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
  const prng = new Prng((seed * 2654435761 + 12345) >>> 0)
  const dv = new DataView(b.buffer, b.byteOffset, size)
  for (let i = 0; i < size; i += 4) dv.setUint32(i, prng.next(), true)
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
