/**
 * Small helpers every codec shares: views over bytes with a length check, NBD strings
 * (UTF-8, no NUL, at most 4096 bytes) and 64-bit numbers that must fit a JavaScript
 * number. A short or malformed input is an `ENBD_PROTOCOL` error.
 *
 * @internal
 * @module
 */
import { MAX_STRING } from './constants'
import { NbdError, protocolError } from './errors'

/** A DataView over exactly the bytes of `b`. */
export function view(b: Uint8Array): DataView {
  return new DataView(b.buffer, b.byteOffset, b.byteLength)
}

/** A view over `b`, which must hold at least `n` bytes (`ENBD_PROTOCOL` otherwise). */
export function need(b: Uint8Array, n: number, what: string): DataView {
  if (!(b instanceof Uint8Array) || b.length < n) throw protocolError(`${what}: expected ${n} bytes, got ${b?.length ?? 0}`)
  return view(b)
}

const utf8 = new TextEncoder()

/** Encodes an NBD string, checking its length. */
export function encodeString(s: string, what = 'name'): Uint8Array {
  const b = utf8.encode(s)
  if (b.length > MAX_STRING) throw new NbdError('EINVAL', `${what} is ${b.length} bytes long; NBD strings may be at most ${MAX_STRING}`)
  if (b.includes(0)) throw new NbdError('EINVAL', `${what} contains a NUL character, which NBD strings may not`)
  return b
}

/** Decodes an NBD string: valid UTF-8, no NUL, at most 4096 bytes. */
export function decodeString(b: Uint8Array, what = 'name'): string {
  if (b.length > MAX_STRING) throw protocolError(`${what} is ${b.length} bytes long; NBD strings may be at most ${MAX_STRING}`)
  if (b.includes(0)) throw protocolError(`${what} contains a NUL byte`)
  try {
    return new TextDecoder('utf-8', { fatal: true }).decode(b)
  } catch {
    throw protocolError(`${what} is not valid UTF-8`)
  }
}

/** A 64-bit value as a number; `ENBD_PROTOCOL` beyond 2^53. */
export function u64ToSafe(v: bigint, what: string): number {
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw protocolError(`${what} ${v} is beyond 2^53`)
  return Number(v)
}
