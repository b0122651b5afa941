/**
 * A raw fixed-newstyle NBD client for the specs that check bytes no tool shows: it
 * reads the greeting, sends the client flags (fixed newstyle, no zeroes), then reads
 * exact byte counts, option replies and structured reply chunks.
 *
 *   const c = await RawNbdClient.open({ port })
 *   c.s.write(encodeOption(Opt.STRUCTURED_REPLY)); (await c.optionReply()).type === Rep.ACK
 */
import { connect, type Socket } from 'node:net'
import { encodeClientFlags } from '../../src/nbd/protocol'

/** A raw fixed-newstyle client: reads exact byte counts from the socket. */
export class RawNbdClient {
  private buf = Buffer.alloc(0)
  private wake: (() => void) | null = null
  private ended = false
  /** Resolves when the server closed the connection. */
  readonly closed: Promise<void>
  private constructor(readonly s: Socket) {
    s.on('data', (b) => {
      this.buf = Buffer.concat([this.buf, b])
      this.wake?.()
    })
    s.on('error', () => {})
    this.closed = new Promise((r) =>
      s.once('close', () => {
        this.ended = true
        this.wake?.()
        r()
      }),
    )
  }
  static async open(where: { port: number } | { socket: string }): Promise<RawNbdClient> {
    const s = 'port' in where ? connect({ host: '127.0.0.1', port: where.port }) : connect({ path: where.socket })
    await new Promise((r) => s.once('connect', r))
    const raw = new RawNbdClient(s)
    await raw.read(18)
    s.write(encodeClientFlags(3))
    return raw
  }
  /** Exactly `n` bytes; rejects if the server closes first. */
  async read(n: number): Promise<Buffer> {
    while (this.buf.length < n) {
      if (this.ended) throw new Error(`the server closed the connection (${this.buf.length} of ${n} bytes read)`)
      await new Promise<void>((r) => (this.wake = r))
    }
    const out = this.buf.subarray(0, n)
    this.buf = this.buf.subarray(n)
    return out
  }
  /** One option reply: type and data. */
  async optionReply(): Promise<{ type: number; data: Buffer }> {
    const h = await this.read(20)
    return { type: h.readUInt32BE(12), data: await this.read(h.readUInt32BE(16)) }
  }
  /** One structured chunk: flags, type, payload. */
  async chunk(): Promise<{ flags: number; type: number; payload: Buffer }> {
    const h = await this.read(20)
    if (h.readUInt32BE(0) !== 0x668e33ef) throw new Error(`not a structured reply: magic 0x${h.readUInt32BE(0).toString(16)}`)
    return { flags: h.readUInt16BE(4), type: h.readUInt16BE(6), payload: await this.read(h.readUInt32BE(16)) }
  }
  /** Chunks up to the one flagged DONE. */
  async reply(): Promise<{ flags: number; type: number; payload: Buffer }[]> {
    const out = []
    for (;;) {
      const c = await this.chunk()
      out.push(c)
      if (c.flags & 1) return out
    }
  }
}
