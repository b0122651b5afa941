/**
 * A served connection read into one buffer of ours: Node's `onread` (the socket reads
 * into a buffer the caller gives and hands over the byte count; no new buffer per
 * read, so nothing for the garbage collector, and reads as large as that buffer
 * instead of 64 KiB), which `net.Server` does not offer for the sockets it accepts.
 *
 * {@link adoptWithUserBuffer} moves an accepted socket's handle, before anything was
 * read from it (the server listens with `pauseOnConnect`), to a new `net.Socket` made
 * with `onread`; the accepted socket is left without a handle and destroyed (which
 * only tells the server it is gone). Everything else — writes, `pause()`/`resume()`,
 * `end`, `close`, `error`, addresses — is an ordinary socket's. Where the handle
 * cannot be had (a Node without `_handle` on its sockets), it answers null and the
 * caller reads the socket as usual.
 *
 * The bytes a callback gets are valid only during the call: the next read overwrites
 * them.
 *
 * @internal
 * @module
 */
import { Socket } from 'node:net'

/** Called with each read's bytes (a view of the reused buffer, valid during the call only). */
export type UserBufferSink = (bytes: Uint8Array) => void

/**
 * The socket `raw` (accepted with `pauseOnConnect`, nothing read yet) as a new socket
 * that reads into `buffer` and hands each read to `sink`; null where that cannot be done.
 */
export function adoptWithUserBuffer(raw: Socket, buffer: Uint8Array, sink: UserBufferSink): Socket | null {
  const r = raw as Socket & { _handle?: unknown }
  const handle = r._handle
  if (handle === null || typeof handle !== 'object' || raw.destroyed) return null
  r._handle = null
  const adopted = new Socket({
    handle,
    onread: {
      buffer,
      callback: (n: number, b: Uint8Array) => {
        sink(b.subarray(0, n))
      },
    },
  } as ConstructorParameters<typeof Socket>[0])
  raw.destroy()
  return adopted
}
