/**
 * Incremental parsers of the transmission phase, one per direction: fed the bytes of
 * a socket in any chunking, they return the replies (client side) or requests (server
 * side) completed. After a throw a parser is dead and throws the same error again:
 * an {@link NbdError} (`ENBD_PROTOCOL`) for bytes that break the protocol.
 *
 * @internal
 * @module
 */
import { Cmd, DEFAULT_MAX_PAYLOAD, REQUEST_HEADER_LENGTH, SIMPLE_REPLY_LENGTH } from './constants'
import { ByteQueue } from './byte-queue'
import { MdBitmapError, toMdBitmapError } from '../../errors'
import { protocolError } from './errors'
import { decodeReplyHeader, decodeRequestHeader, type RequestHeader } from './transmission'

/** A reply decoded by {@link ReplyParser}. */
export interface Reply {
  cookie: bigint
  error: number
}

/**
 * What the client expects for a cookie: `undefined` (no such request in flight: the
 * server broke the protocol), `null` (a reply without payload), or the buffer a
 * successful read's payload goes into.
 */
export type ReplyLookup = (cookie: bigint) => Uint8Array | null | undefined

/**
 * The client's side of the transmission phase: fed the bytes from the server in any
 * chunking, returns the replies completed, with read payloads written straight into
 * the buffers the lookup gives. Throws ENBD_PROTOCOL on anything else; it is unusable
 * after a throw.
 */
export class ReplyParser {
  private readonly q = new ByteQueue()
  private current: { cookie: bigint; error: number; target: Uint8Array; got: number } | null = null
  private dead: MdBitmapError | null = null

  constructor(private readonly lookup: ReplyLookup) {}

  feed(chunk: Uint8Array): Reply[] {
    if (this.dead) throw this.dead
    this.q.push(chunk)
    const out: Reply[] = []
    try {
      for (;;) {
        const cur = this.current
        if (cur) {
          const k = Math.min(this.q.length, cur.target.length - cur.got)
          this.q.copyTo(cur.target, cur.got, k)
          cur.got += k
          if (cur.got < cur.target.length) break
          out.push({ cookie: cur.cookie, error: cur.error })
          this.current = null
          continue
        }
        if (this.q.length < SIMPLE_REPLY_LENGTH) break
        const { error, cookie } = decodeReplyHeader(this.q.take(SIMPLE_REPLY_LENGTH))
        const target = this.lookup(cookie)
        if (target === undefined) throw protocolError(`the server replied to handle 0x${cookie.toString(16)}, which no request in flight has`)
        if (error === 0 && target !== null && target.length > 0) this.current = { cookie, error, target, got: 0 }
        else out.push({ cookie, error })
      }
    } catch (e) {
      this.dead = toMdBitmapError(e, { fallback: 'ENBD_PROTOCOL' })
      throw this.dead
    }
    return out
  }
}

/** A request decoded by {@link RequestParser}. */
export interface Request extends RequestHeader {
  /** A write's payload. */
  data?: Uint8Array
  /** A write whose payload was larger than the parser's limit: it was read and dropped. */
  tooBig?: boolean
}

/**
 * The server's side of the transmission phase: fed the bytes from the client in any
 * chunking, returns the requests completed (a write with its payload, in a buffer from
 * `alloc`). Payloads above `maxPayload` are consumed and dropped (the request comes
 * out with `tooBig`), so a hostile length cannot make the server allocate. Throws
 * ENBD_PROTOCOL on a bad magic; it is unusable after a throw. Fed a `transient` chunk
 * (memory the caller reuses), it keeps a copy of the few bytes it holds back (a
 * header's start), never a view.
 *
 * A reader may receive the rest of a large payload in place: {@link directTarget} lends
 * the part of the payload's buffer still to come, and a chunk fed back that is (a
 * prefix of) that very view counts as received where it lies, with no copy.
 */
export class RequestParser {
  private readonly q = new ByteQueue()
  private current: { req: Request; data: Uint8Array | null; left: number } | null = null
  private dead: MdBitmapError | null = null
  /** The view {@link directTarget} lent last. */
  private lent: Uint8Array | null = null

  constructor(
    private readonly maxPayload: number = DEFAULT_MAX_PAYLOAD,
    private readonly alloc: (n: number) => Uint8Array = (n) => new Uint8Array(n),
  ) {}

  feed(chunk: Uint8Array, transient = false): Request[] {
    if (this.dead) throw this.dead
    const out: Request[] = []
    const lent = this.lent
    this.lent = null
    const cur = this.current
    if (lent && cur && cur.data && chunk.buffer === lent.buffer && chunk.byteOffset === lent.byteOffset && chunk.length <= lent.length) {
      // Received in place (see directTarget).
      cur.left -= chunk.length
      if (cur.left === 0) {
        cur.req.data = cur.data
        this.current = null
        out.push(cur.req)
      }
      return out
    }
    this.q.push(chunk)
    try {
      for (;;) {
        const cur = this.current
        if (cur) {
          const k = Math.min(this.q.length, cur.left)
          if (cur.data) this.q.copyTo(cur.data, cur.data.length - cur.left, k)
          else this.q.skip(k)
          cur.left -= k
          if (cur.left > 0) break
          if (cur.data) cur.req.data = cur.data
          else cur.req.tooBig = true
          out.push(cur.req)
          this.current = null
          continue
        }
        if (this.q.length < REQUEST_HEADER_LENGTH) break
        const req: Request = decodeRequestHeader(this.q.take(REQUEST_HEADER_LENGTH))
        if (req.type === Cmd.WRITE && req.length > 0) {
          this.current = { req, data: req.length <= this.maxPayload ? this.alloc(req.length) : null, left: req.length }
        } else {
          out.push(req)
        }
      }
    } catch (e) {
      this.dead = toMdBitmapError(e, { fallback: 'ENBD_PROTOCOL' })
      throw this.dead
    }
    if (transient) this.q.own()
    return out
  }

  /**
   * The rest of the payload being received, as a view to read into (then {@link feed}
   * it back), when at least `min` bytes of it are still to come and nothing is queued
   * before them; else null.
   */
  directTarget(min: number): Uint8Array | null {
    const cur = this.current
    if (this.dead || !cur || !cur.data || cur.left < min || this.q.length) return null
    this.lent = cur.data.subarray(cur.data.length - cur.left)
    return this.lent
  }

  /** The connection ended: the buffer of a payload received in part, if any (from `alloc`), now unused. */
  abandon(): Uint8Array | null {
    const data = this.current?.data ?? null
    this.current = null
    return data
  }
}
