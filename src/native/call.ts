/**
 * Calling the addon: every native promise goes through {@link native}, so every
 * rejection reaches callers as an {@link MdBitmapError} with the core's code.
 *
 * @internal
 * @module
 */
import { toMdBitmapError } from '../errors'

/** Awaits a native promise, rethrowing its rejection as an {@link MdBitmapError}. */
export async function native<T>(p: Promise<T> | (() => Promise<T>)): Promise<T> {
  try {
    return await (typeof p === 'function' ? p() : p)
  } catch (e) {
    throw toMdBitmapError(e, { fallback: 'EINTERNAL' })
  }
}
