/**
 * Asserting errors: that a promise rejects (or a call throws) with an MdBitmapError of
 * one documented code, and the error itself for further checks.
 */
import type { ExecutionContext } from 'ava'
import { MdBitmapError, type MdBitmapErrorCode } from '../../src'

/** Awaits `p`, asserts it rejects with an MdBitmapError whose code is `code`, returns it. */
export async function rejectsWith(t: ExecutionContext, p: Promise<unknown>, code: MdBitmapErrorCode): Promise<MdBitmapError> {
  const e = await t.throwsAsync(p, { instanceOf: MdBitmapError })
  t.is(e?.code, code, `expected ${code}, got ${e?.code}: ${e?.message}`)
  t.is(e?.name, 'MdBitmapError')
  return e as MdBitmapError
}

/** Calls `f`, asserts it throws an MdBitmapError whose code is `code`, returns it. */
export function throwsWith(t: ExecutionContext, f: () => unknown, code: MdBitmapErrorCode): MdBitmapError {
  const e = t.throws(f, { instanceOf: MdBitmapError })
  t.is(e?.code, code, `expected ${code}, got ${e?.code}: ${e?.message}`)
  t.is(e?.name, 'MdBitmapError')
  return e as MdBitmapError
}
