/**
 * A served connection read into buffers of ours: Node's `onread` (the socket reads
 * into a buffer the caller chooses before each read, and hands over the byte count; no
 * new buffer per read, so nothing for the garbage collector, reads as large as that
 * buffer instead of 64 KiB, and a payload can be read straight where it belongs),
 * which `net.Server` does not offer for the sockets it accepts.
 *
 * {@link adoptWithUserBuffer} moves an accepted socket's handle, before anything was
 * read from it (the server listens with `pauseOnConnect`), to a new `net.Socket` made
 * with `onread`; the accepted socket is left without a handle and destroyed (which
 * only tells the server it is gone). Everything else — writes, `pause()`/`resume()`,
 * `end`, `close`, `error`, addresses — is an ordinary socket's. Where the handle
 * cannot be had (a Node without `_handle` on its sockets), it answers null and the
 * caller reads the socket as usual.
 *
 * A TLS connection cannot be adopted that way (its socket wraps the plain one, and Node
 * offers `onread` only to a TLS socket that makes its own connection).
 * {@link readIntoUserBuffer} switches such a socket, already made, to the same mode: it
 * sets the three fields Node's `onread` option would have set (found by their
 * descriptions on a probe socket made with `onread`) and hands the socket's handle the
 * first buffer. The decrypted bytes then go from OpenSSL's output straight into our
 * buffers, up to one TLS record (16 KiB) per read, instead of a new buffer per record
 * pushed through the stream. Where Node's internals do not look as expected it answers
 * false and the caller reads `data` events as before.
 *
 * `next()` gives the buffer for each read (called once at the start and after each
 * read); `sink` gets the bytes read, a view of the buffer `next()` gave. The caller
 * owns what it reuses: bytes in a buffer it hands out again are overwritten.
 *
 * @internal
 * @module
 */
import { Socket } from 'node:net'

/** Node's private fields behind `onread`, by their descriptions; null where a probe does not show them. */
const onreadFields = ((): { buffer: symbol; callback: symbol; generator: symbol } | null => {
  try {
    const probe = new Socket({ onread: { buffer: () => new Uint8Array(1), callback: () => {} } } as ConstructorParameters<typeof Socket>[0])
    const byName = new Map(Object.getOwnPropertySymbols(probe).map((s) => [s.description, s]))
    probe.destroy()
    const [buffer, callback, generator] = ['kBuffer', 'kBufferCb', 'kBufferGen'].map((n) => byName.get(n))
    return buffer && callback && generator ? { buffer, callback, generator } : null
  } catch {
    return null
  }
})()

/** Called with each read's bytes: a view of the start of the buffer the read went into. */
export type UserBufferSink = (bytes: Uint8Array) => void

/**
 * The socket `raw` (accepted with `pauseOnConnect`, nothing read yet) as a new socket
 * that reads into the buffers `next()` gives and hands each read to `sink`; null where
 * that cannot be done.
 */
export function adoptWithUserBuffer(raw: Socket, next: () => Uint8Array, sink: UserBufferSink): Socket | null {
  const r = raw as Socket & { _handle?: unknown }
  const handle = r._handle
  if (handle === null || typeof handle !== 'object' || raw.destroyed) return null
  r._handle = null
  const adopted = new Socket({
    handle,
    onread: {
      buffer: next,
      callback: (n: number, b: Uint8Array) => {
        sink(b.subarray(0, n))
      },
    },
  } as ConstructorParameters<typeof Socket>[0])
  raw.destroy()
  return adopted
}

/**
 * Switches `socket` (a TLS socket just past its handshake, before its first `data`
 * listener) to reading into the buffers `next()` gives, each read handed to `sink`;
 * false (nothing changed) where Node's internals do not allow it. Bytes the socket had
 * already decrypted and buffered are emitted as `data` events first, to the listeners
 * it has then.
 */
export function readIntoUserBuffer(socket: Socket, next: () => Uint8Array, sink: UserBufferSink): boolean {
  const handle = (socket as Socket & { _handle?: { useUserBuffer?: unknown } })._handle
  const f = onreadFields
  if (!f || handle === null || typeof handle !== 'object' || typeof handle.useUserBuffer !== 'function' || socket.destroyed) return false
  while (socket.read() !== null);
  const s = socket as unknown as Record<symbol, unknown>
  s[f.generator] = next
  s[f.callback] = (n: number, b: Uint8Array) => {
    sink(b.subarray(0, n))
  }
  const first = next()
  s[f.buffer] = first
  ;(handle.useUserBuffer as (b: Uint8Array) => void).call(handle, first)
  return true
}
