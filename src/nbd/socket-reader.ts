/**
 * Exact-size reads from a socket, for the handshakes: `read(n)` resolves with exactly
 * `n` bytes, or rejects with `ENBD_DISCONNECTED` when the peer goes away first, or
 * `ENBD_TIMEOUT`. The transmission phase then takes the socket over with
 * {@link SocketReader.detach}, which hands back the bytes already received.
 *
 * @internal
 * @module
 */
import type { Socket } from 'node:net'
import { ByteQueue, NbdError } from './protocol'

export class SocketReader {
  private readonly q = new ByteQueue()
  private waiter: { n: number; resolve: (b: Uint8Array) => void; reject: (e: NbdError) => void; timer?: NodeJS.Timeout } | null = null
  private ended: NbdError | null = null
  private detached = false

  constructor(
    private readonly socket: Socket,
    /** Who the peer is, for messages. */
    private readonly peer: string,
  ) {
    socket.on('data', this.onData)
    socket.on('end', this.onEnd)
    socket.on('close', this.onEnd)
    socket.on('error', this.onError)
  }

  /** Exactly `n` bytes; `timeoutMs` 0 waits for ever. One read at a time. */
  read(n: number, timeoutMs: number, what: string): Promise<Uint8Array> {
    if (this.waiter) return Promise.reject(new NbdError('EINTERNAL', `${this.peer}: a read of ${what} while another is waiting; SocketReader reads one at a time`))
    if (this.q.length >= n) return Promise.resolve(this.q.take(n))
    if (this.ended) return Promise.reject(this.disconnected(what, this.ended))
    return new Promise((resolve, reject) => {
      const w: NonNullable<SocketReader['waiter']> = { n, resolve, reject }
      if (timeoutMs > 0) {
        w.timer = setTimeout(() => {
          this.waiter = null
          reject(new NbdError('ENBD_TIMEOUT', `${this.peer}: no ${what} within ${timeoutMs} ms`))
        }, timeoutMs)
      }
      // Rejections carry what was awaited.
      w.reject = (e: NbdError) => reject(e.code === 'ENBD_DISCONNECTED' ? this.disconnected(what, e) : e)
      this.waiter = w
    })
  }

  /** Stops listening; returns the bytes received and not read. */
  detach(): Uint8Array[] {
    this.detached = true
    this.socket.off('data', this.onData)
    this.socket.off('end', this.onEnd)
    this.socket.off('close', this.onEnd)
    this.socket.off('error', this.onError)
    if (this.waiter?.timer) clearTimeout(this.waiter.timer)
    this.waiter = null
    return this.q.drain()
  }

  private disconnected(what: string, cause: NbdError): NbdError {
    return new NbdError('ENBD_DISCONNECTED', `${this.peer}: the connection closed while waiting for ${what}${cause.cause ? ` (${(cause.cause as Error).message})` : ''}`, { cause: cause.cause ?? cause })
  }

  /** Takes bytes read by other means than `data` events (a socket read into a buffer of the caller's: copy them first). */
  push(chunk: Uint8Array): void {
    this.onData(chunk)
  }

  private readonly onData = (chunk: Uint8Array) => {
    if (this.detached) return
    this.q.push(chunk)
    const w = this.waiter
    if (w && this.q.length >= w.n) {
      this.waiter = null
      if (w.timer) clearTimeout(w.timer)
      w.resolve(this.q.take(w.n))
    }
  }

  private readonly onEnd = () => this.finish(new NbdError('ENBD_DISCONNECTED', `${this.peer}: connection closed`))

  private readonly onError = (e: Error) => this.finish(new NbdError('ENBD_DISCONNECTED', `${this.peer}: ${e.message}`, { cause: e }))

  private finish(e: NbdError): void {
    if (this.ended) return
    this.ended = e
    const w = this.waiter
    if (w) {
      this.waiter = null
      if (w.timer) clearTimeout(w.timer)
      w.reject(e)
    }
  }
}
