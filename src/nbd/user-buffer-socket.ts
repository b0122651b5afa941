/**
 * A served connection read into buffers of ours: what Node's `onread` option gives a
 * socket it makes (the socket reads into a buffer the caller chooses before each read,
 * and hands over the byte count; no new buffer per read, so nothing for the garbage
 * collector, reads as large as that buffer instead of 64 KiB, and a payload can be read
 * straight where it belongs). Node offers it neither to the sockets `net.Server`
 * accepts nor to a TLS socket made over an existing one (after STARTTLS).
 *
 * {@link readIntoUserBuffer} switches such a socket, already made, to that mode: it
 * sets the three fields the `onread` option would have set (found by their
 * descriptions on a probe socket made with `onread`) and hands the socket's handle the
 * first buffer. Everything else — writes, `pause()`/`resume()`, `end`, `close`,
 * `error`, addresses — stays an ordinary socket's. On a plain socket the kernel copies
 * into our buffers; on a TLS socket OpenSSL's output does, up to one TLS record
 * (16 KiB) per read. Where Node's internals do not look as expected it answers false
 * and the caller reads `data` events as before.
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
 * Switches `socket` (accepted with `pauseOnConnect`, or a TLS socket just past its
 * handshake; before its first `data` listener or with the ones that should get what it
 * already holds) to reading into the buffers `next()` gives, each read handed to
 * `sink`; false (nothing changed) where Node's internals do not allow it. Bytes the
 * socket had already read and buffered are emitted as `data` events first, to the
 * listeners it has then. The caller resumes the socket.
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
