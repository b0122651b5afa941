/**
 * Metadata contexts (`NBD_OPT_LIST_META_CONTEXT`, `NBD_OPT_SET_META_CONTEXT`): the
 * named kinds of block status an export offers (`base:allocation`, …), the codecs of
 * the two options and their `NBD_REP_META_CONTEXT` replies, and which contexts a
 * client's queries select.
 *
 * Option data: export name (32-bit length, bytes), query count (32 bits), each query
 * (32-bit length, bytes). Reply: context id (32 bits), context name.
 *
 * Selection: with no query, LIST lists every context and SET selects none. A query is
 * a context's full name; for LIST, a query that ends in `:` (a namespace, `base:`, or
 * a prefix such as `qemu:dirty-bitmap:`) lists every context under it. A context's id
 * is its place in the export's list, from 1, when it was selected (the list may
 * grow and shrink with a mirror's tracking bitmaps; a connection keeps the ids it was
 * given).
 *
 * @module
 */
import { decodeString, encodeString, protocolError } from './protocol'
import type { StatusExtent } from './protocol/structured-reply'

/** A metadata context an export offers. */
export interface MetaContext {
  /** Its name, `namespace:leaf`: `base:allocation`, `md-bitmap:write-intent`, … */
  readonly name: string
  /**
   * Status descriptors from `offset` (aligned to the export's minimum block size),
   * covering at least the first byte and at most `length` bytes, adjacent ones with
   * different flags. The flags' meaning is the context's.
   */
  extents(offset: number, length: number): Promise<StatusExtent[]>
}

/** A context chosen by a client, with the id it was given. */
export interface SelectedContext {
  id: number
  context: MetaContext
}

/** Decodes the data of LIST_META_CONTEXT / SET_META_CONTEXT. */
export function decodeMetaContextRequest(b: Uint8Array): { exportName: string; queries: string[] } {
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength)
  const fail = () => protocolError(`meta context request of ${b.length} bytes is malformed`)
  if (b.length < 8) throw fail()
  const nameLength = v.getUint32(0)
  if (4 + nameLength + 4 > b.length) throw fail()
  const exportName = decodeString(b.subarray(4, 4 + nameLength), 'export name')
  let at = 4 + nameLength
  const count = v.getUint32(at)
  at += 4
  const queries: string[] = []
  for (let i = 0; i < count; i++) {
    if (at + 4 > b.length) throw fail()
    const n = v.getUint32(at)
    at += 4
    if (at + n > b.length) throw fail()
    queries.push(decodeString(b.subarray(at, at + n), 'meta context query'))
    at += n
  }
  if (at !== b.length) throw fail()
  return { exportName, queries }
}

/** Encodes the data of LIST_META_CONTEXT / SET_META_CONTEXT (a client's side; tests use it). */
export function encodeMetaContextRequest(exportName: string, queries: string[]): Uint8Array {
  const name = encodeString(exportName, 'export name')
  const qs = queries.map((q) => encodeString(q, 'meta context query'))
  const b = new Uint8Array(8 + name.length + qs.reduce((n, q) => n + 4 + q.length, 0))
  const v = new DataView(b.buffer)
  v.setUint32(0, name.length)
  b.set(name, 4)
  v.setUint32(4 + name.length, qs.length)
  let at = 8 + name.length
  for (const q of qs) {
    v.setUint32(at, q.length)
    b.set(q, at + 4)
    at += 4 + q.length
  }
  return b
}

/** The payload of an `NBD_REP_META_CONTEXT` reply. */
export function encodeMetaContextReply(id: number, name: string): Uint8Array {
  const n = encodeString(name, 'meta context name')
  const b = new Uint8Array(4 + n.length)
  new DataView(b.buffer).setUint32(0, id)
  b.set(n, 4)
  return b
}

/** The contexts `queries` select (see the module comment), with their ids, in the export's order. */
export function selectContexts(offered: readonly MetaContext[], queries: readonly string[], list: boolean): SelectedContext[] {
  const all = offered.map((context, i) => ({ id: i + 1, context }))
  if (queries.length === 0) return list ? all : []
  return all.filter(({ context }) => queries.some((q) => q === context.name || (list && q.endsWith(':') && context.name.startsWith(q))))
}
