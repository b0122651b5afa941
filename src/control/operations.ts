/**
 * The operations of `md-bitmap mirror detail|fail|remove|re-add|add|check|track|checkpoint|untrack` on an open
 * mirror: one implementation, run by a mirror's control server for a running mirror,
 * and by the command itself on a mirror it opened. Each resolves to the JSON the
 * command prints with `--json`.
 *
 * @internal
 * @module
 */
import { MdBitmapError } from '../errors'
import type { Mirror } from '../mirror/mirror'
import { describeMirror, operationProgress, type OperationProgress } from './detail'
import { CONTROL_OPS, type ControlRequest } from './protocol'

/** `mirror re-add --json`, `mirror add --json`. */
export interface RecoveryResult {
  index: number
  recovery: 'bitmap' | 'full'
  chunksCopied: number
  bytesCopied: number
}

/** `mirror fail --json`, `mirror remove --json`: the member after the change. */
export interface MemberResult {
  index: number
  path: string
  state: string
  forgotten?: boolean
}

/** `mirror checkpoint --json`: the ranges the checkpoint cleared, which the backup copies now. */
export interface CheckpointResult {
  name: string
  /** Bytes in `ranges`. */
  bytes: number
  ranges: { offset: number; length: number }[]
}

/** Checks a request read from a socket or built from a command line; throws `EINVAL` if malformed. */
export function checkRequest(r: unknown): ControlRequest {
  const req = r as ControlRequest
  if (typeof req !== 'object' || req === null || !CONTROL_OPS.includes(req.op)) {
    throw new MdBitmapError('EINVAL', `not a control request: op must be one of ${CONTROL_OPS.join(', ')}`)
  }
  if (req.member !== undefined && (!Number.isSafeInteger(req.member) || req.member < 0)) throw new MdBitmapError('EINVAL', `member must be a slot number, got ${JSON.stringify(req.member)}`)
  if ((req.op === 'fail' || req.op === 'remove' || req.op === 're-add') && req.member === undefined) throw new MdBitmapError('EINVAL', `${req.op} needs a member`)
  if (req.path !== undefined && (typeof req.path !== 'string' || !req.path)) throw new MdBitmapError('EINVAL', 'path must be a non-empty string')
  if (req.op === 'add' && req.path === undefined) throw new MdBitmapError('EINVAL', 'add needs a path')
  if ((req.op === 'track' || req.op === 'checkpoint' || req.op === 'untrack') && (typeof req.name !== 'string' || !req.name)) throw new MdBitmapError('EINVAL', `${req.op} needs the tracking bitmap's name`)
  if (req.op === 'track' && req.path === undefined) throw new MdBitmapError('EINVAL', 'track needs a path')
  if (req.chunkSize !== undefined && !Number.isSafeInteger(req.chunkSize)) throw new MdBitmapError('EINVAL', `chunkSize must be an integer, got ${JSON.stringify(req.chunkSize)}`)
  if (req.maxRate !== undefined && (typeof req.maxRate !== 'number' || !(req.maxRate > 0))) throw new MdBitmapError('EINVAL', `maxRate must be a positive number of bytes per second, got ${JSON.stringify(req.maxRate)}`)
  return req
}

/**
 * Runs `req` on `mirror`; `onProgress` hears the progress of a recovery or check,
 * `running` is the long operation already in progress (for `detail`).
 */
export async function perform(mirror: Mirror, req: ControlRequest, onProgress: (p: OperationProgress) => void, running?: OperationProgress): Promise<unknown> {
  switch (req.op) {
    case 'detail':
      return describeMirror(mirror, running)
    case 'fail': {
      await mirror.failMember(req.member!)
      return memberResult(mirror, req.member!)
    }
    case 'remove': {
      const { path } = memberResult(mirror, req.member!)
      await mirror.removeMember(req.member!, { forget: req.forget === true })
      return req.forget ? { index: req.member!, path, state: 'removed', forgotten: true } : memberResult(mirror, req.member!)
    }
    case 're-add': {
      const r = await mirror.reAdd(req.member!, { path: req.path, onProgress: (p) => onProgress(operationProgress('recovery', { ...p })) })
      return { index: req.member!, recovery: r.recovery ?? 'full', chunksCopied: r.chunksCopied, bytesCopied: r.bytesCopied } satisfies RecoveryResult
    }
    case 'add': {
      const index = mirror.members.length
      const r = await mirror.addMember({ path: req.path!, writeMostly: req.writeMostly === true }, { onProgress: (p) => onProgress(operationProgress('recovery', { ...p })) })
      return { index, recovery: 'full', chunksCopied: r.chunksCopied, bytesCopied: r.bytesCopied } satisfies RecoveryResult
    }
    case 'check': {
      const action = req.repair ? 'repair' : 'check'
      return mirror.check({ repair: req.repair === true, maxRate: req.maxRate, onProgress: (p) => onProgress(operationProgress(action, { ...p })) })
    }
    case 'track':
      return mirror.track(req.name!, { path: req.path!, chunkSize: req.chunkSize })
    case 'checkpoint': {
      const ranges = await mirror.checkpoint(req.name!)
      return { name: req.name!, bytes: ranges.reduce((n, r) => n + r.length, 0), ranges } satisfies CheckpointResult
    }
    case 'untrack':
      return mirror.untrack(req.name!)
    case 'tracked':
      return mirror.tracked()
  }
}

function memberResult(mirror: Mirror, index: number): MemberResult {
  const m = mirror.members[index]
  if (!m) throw new MdBitmapError('EINVAL', `no member ${index}: the mirror has ${mirror.members.length}`)
  return { index, path: m.path, state: m.state }
}
