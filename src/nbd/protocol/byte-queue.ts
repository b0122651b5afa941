/**
 * A FIFO of received chunks, read in exact sizes: what the parsers and the handshake
 * reader keep their bytes in.
 *
 * @internal
 * @module
 */
import { MdBitmapError } from '../../errors'

/** Taking more bytes than are queued is a bug of the caller, never the peer's doing. */
function overrun(what: string, n: number, queued: number): MdBitmapError {
  return new MdBitmapError('EINTERNAL', `ByteQueue.${what}(${n}) with ${queued} bytes queued`)
}

/** A FIFO of received chunks, taken from in exact sizes without needless copies. */
export class ByteQueue {
  private chunks: Uint8Array[] = []
  private head = 0
  /** Bytes queued. */
  length = 0

  push(chunk: Uint8Array): void {
    if (chunk.length === 0) return
    this.chunks.push(chunk)
    this.length += chunk.length
  }

  /** Removes and returns the first `n` bytes (a view when they lie in one chunk, else a copy). */
  take(n: number): Uint8Array {
    if (n > this.length) throw overrun('take', n, this.length)
    if (n === 0) return new Uint8Array(0)
    const first = this.chunks[0]
    if (first.length - this.head >= n) {
      const out = first.subarray(this.head, this.head + n)
      this.advance(n)
      return out
    }
    const out = new Uint8Array(n)
    this.copyTo(out, 0, n)
    return out
  }

  /** Moves the first `n` bytes into `target` at `at`. */
  copyTo(target: Uint8Array, at: number, n: number): void {
    if (n > this.length) throw overrun('copyTo', n, this.length)
    let done = 0
    while (done < n) {
      const c = this.chunks[0]
      const k = Math.min(n - done, c.length - this.head)
      target.set(c.subarray(this.head, this.head + k), at + done)
      done += k
      this.advance(k)
    }
  }

  /** Drops the first `n` bytes. */
  skip(n: number): void {
    if (n > this.length) throw overrun('skip', n, this.length)
    let left = n
    while (left > 0) {
      const k = Math.min(left, this.chunks[0].length - this.head)
      left -= k
      this.advance(k)
    }
  }

  /**
   * Copies the bytes queued into memory of the queue's own: for chunks whose memory is
   * reused once the caller returns (a socket's read buffer).
   */
  own(): void {
    if (this.length === 0) return
    const all = new Uint8Array(this.length)
    this.copyTo(all, 0, this.length)
    this.chunks = [all]
    this.head = 0
    this.length = all.length
  }

  /** Removes and returns everything queued. */
  drain(): Uint8Array[] {
    const out = this.chunks.map((c, i) => (i === 0 ? c.subarray(this.head) : c))
    this.chunks = []
    this.head = 0
    this.length = 0
    return out
  }

  private advance(k: number): void {
    this.head += k
    this.length -= k
    if (this.head === this.chunks[0].length) {
      this.chunks.shift()
      this.head = 0
    }
  }
}
