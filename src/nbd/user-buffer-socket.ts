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
 * `next()` gives the buffer for each read (called once at the start and after each
 * read); `sink` gets the bytes read, a view of the buffer `next()` gave. The caller
 * owns what it reuses: bytes in a buffer it hands out again are overwritten.
 *
 * @internal
 * @module
 */
import { Socket } from 'node:net'

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
