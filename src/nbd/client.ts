/**
 * An NBD client as a mirror member: {@link NbdMember} reaches an export of an NBD
 * server (qemu-nbd, nbd-server, nbdkit, `md-bitmap serve`) over TCP or a Unix socket.
 *
 * Handshake: fixed newstyle, `NBD_OPT_GO` with the export name, asking for the block
 * size constraints (falling back to `NBD_OPT_EXPORT_NAME` where the server does not
 * know `NBD_OPT_GO`). Only simple replies are used: structured replies are never
 * asked for. `nbds://` and `nbds+unix://` URLs start TLS first (`NBD_OPT_STARTTLS`,
 * then Node's `tls` on the socket; see `tls.ts`), with the `tls` option's CA, client
 * certificate or pre-shared key.
 *
 * Transmission: READ, WRITE (FUA on request), FLUSH, TRIM, and DISC on close. Many
 * requests are in flight at once, each matched to its reply by its 64-bit handle;
 * requests larger than the server's maximum block size are split. Each request has a
 * timeout (`timeoutMs`); one that expires fails with `ENBD_TIMEOUT` and takes the
 * connection down with it, since what the server did with it is unknown.
 *
 * A lost connection (the server died, the network broke, a timeout, a protocol
 * violation) fails every pending and every later request with `ENBD_DISCONNECTED`: in
 * a {@link Mirror} the member turns faulty, the mirror runs degraded and the bits of
 * the chunks written meanwhile stay set. A member does not reconnect by itself; to
 * bring it back, re-add it (`mirror.reAdd(index)`), which opens a new connection
 * through the mirror's opener and copies only the dirty chunks.
 *
 * ```ts
 * const mirror = await Mirror.open({ bitmap: '/var/lib/vm/disk.bitmap', openMember: openNbdOrFileMember })
 * // members: [{ path: '/var/lib/vm/disk.img' }, { path: 'nbd://nas:10809/disk', writeMostly: true }]
 * ```
 *
 * @module
 */
import { connect, type Socket } from 'node:net'
import { toMdBitmapError } from '../errors'
import { FileMember, type Member, type MemberSpec, type OpenMember } from '../member'
import {
  Cmd,
  CmdFlag,
  DEFAULT_MAX_PAYLOAD,
  EXPORT_NAME_REPLY_LENGTH,
  FLAG_C_FIXED_NEWSTYLE,
  FLAG_C_NO_ZEROES,
  FLAG_FIXED_NEWSTYLE,
  FLAG_NO_ZEROES,
  GREETING_LENGTH,
  Info,
  NbdError,
  OPTION_REPLY_HEADER_LENGTH,
  Opt,
  Rep,
  ReplyParser,
  TxFlag,
  decodeExportNameReply,
  decodeGreeting,
  decodeInfo,
  decodeOptionReplyHeader,
  decodeServerReply,
  encodeClientFlags,
  encodeInfoRequest,
  encodeOption,
  encodeRequest,
  encodeString,
  isNbdUrl,
  isOptionError,
  optionError,
  protocolError,
  replyError,
  type BlockSize,
  type NbdAddress,
} from './protocol'
import { SocketReader } from './socket-reader'
import { connectTls, refusedAfterHandshake } from './tls'
import type { NbdClientTlsOptions } from './tls-credentials'
import { parseNbdUrlTls, readUrlTlsOptions } from './tls-url'

/** Options of {@link NbdMember.open}. */
export interface NbdMemberOptions {
  /** Milliseconds a request may wait for its reply; 0 = no limit. Default 30 000. */
  timeoutMs?: number
  /** Milliseconds for connecting and the handshake. Default 10 000. */
  connectTimeoutMs?: number
  /** Send every write with FUA (durable when acknowledged). Default false. */
  fua?: boolean
  /** Most requests in flight; more wait in a local queue (their timeout starts when sent). Default 64. */
  maxInFlight?: number
  /**
   * TLS for `nbds://` and `nbds+unix://` URLs (merged over the settings in the URL's
   * query: `tls-certificates`, `tls-psk-file`, `tls-username`, `tls-hostname`).
   * Ignored for plain `nbd://` URLs.
   */
  tls?: NbdClientTlsOptions
}

/** Options of one {@link NbdMember.write}. */
export interface NbdWriteOptions {
  /** Durable when acknowledged (NBD_CMD_FLAG_FUA, or a FLUSH after it where the server has no FUA). */
  fua?: boolean
}

interface Pending {
  cookie: bigint
  type: number
  flags: number
  offset: number
  length: number
  payload?: Uint8Array
  target?: Uint8Array
  replied: boolean
  timer?: NodeJS.Timeout
  resolve: () => void
  reject: (e: Error) => void
  what: string
}

const DEFAULT_TIMEOUT = 30_000
const DEFAULT_CONNECT_TIMEOUT = 10_000
const OPTION_DATA_LIMIT = 64 * 1024

/** What the handshake learnt of the export. */
export interface NbdExportInfo {
  /** The export's size in bytes. */
  size: number
  /** Transmission flags (see `TxFlag` in the protocol module). */
  flags: number
  /** The block size constraints the server sent, if it sent them. */
  blockSize?: BlockSize
  /** The export's description, if the server sent one. */
  description?: string
}

/** A mirror member on an NBD export. See the module comment. */
export class NbdMember implements Member {
  private readonly pending = new Map<bigint, Pending>()
  private readonly queue: Pending[] = []
  private nextCookie = 1n
  private failure: NbdError | null = null
  private closing: Promise<void> | null = null
  private readonly idleWaiters: (() => void)[] = []
  private readonly parser: ReplyParser
  private readonly closed: Promise<void>
  private readonly maxPiece: number

  private constructor(
    /** The URL the member was opened with. */
    readonly path: string,
    /** Where the export is, parsed from the URL. */
    readonly address: NbdAddress,
    private readonly socket: Socket,
    /** What the handshake learnt of the export. */
    readonly info: NbdExportInfo,
    private readonly options: Required<Omit<NbdMemberOptions, 'tls'>>,
    leftover: Uint8Array[],
  ) {
    this.closed = new Promise((r) => socket.once('close', () => r()))
    // Requests are split at the server's maximum block size (32 MiB when it sent none),
    // rounded down to its minimum.
    const max = Math.min(info.blockSize?.max ?? DEFAULT_MAX_PAYLOAD, DEFAULT_MAX_PAYLOAD)
    const min = info.blockSize?.min ?? 1
    this.maxPiece = Math.max(min, max - (max % min))
    this.parser = new ReplyParser((cookie) => {
      const p = this.pending.get(cookie)
      if (!p || p.replied) return undefined
      p.replied = true
      return p.type === Cmd.READ ? p.target! : null
    })
    socket.on('data', this.onData)
    socket.on('error', (e) => this.fail(new NbdError('ENBD_DISCONNECTED', `${this.path}: ${e.message}`, { cause: e })))
    socket.on('end', () => this.fail(new NbdError('ENBD_DISCONNECTED', `${this.path}: the server closed the connection`)))
    socket.on('close', () => this.fail(new NbdError('ENBD_DISCONNECTED', `${this.path}: the connection closed`)))
    for (const b of leftover) this.onData(b)
  }

  /**
   * Connects to `url` (`nbd://host:port/export` or `nbd+unix:///export?socket=/path`)
   * and negotiates the export. Rejects with a typed error: `ENBD_URL`, an OS code
   * (`ECONNREFUSED`, `ENOENT`, …), `ENBD_TIMEOUT`, `ENBD_UNKNOWN_EXPORT` and the other
   * option errors, `ENBD_OLDSTYLE`, `ENBD_PROTOCOL`, `ENBD_DISCONNECTED`.
   */
  static async open(url: string, options: NbdMemberOptions = {}): Promise<NbdMember> {
    const { address, tls } = parseNbdUrlTls(url)
    const tlsOptions = tls ? { ...(await readUrlTlsOptions(url)), ...options.tls } : undefined
    const o: Required<Omit<NbdMemberOptions, 'tls'>> = {
      timeoutMs: options.timeoutMs ?? DEFAULT_TIMEOUT,
      connectTimeoutMs: options.connectTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT,
      fua: options.fua ?? false,
      maxInFlight: Math.max(1, options.maxInFlight ?? 64),
    }
    const deadline = Date.now() + o.connectTimeoutMs
    const conn = { socket: await openSocket(address, url, o.connectTimeoutMs), reader: null as SocketReader | null }
    conn.reader = new SocketReader(conn.socket, url)
    const raw = conn.socket
    try {
      const timeout = () => Math.max(1, deadline - Date.now())
      const startTls = tlsOptions && (() => startTlsOption(conn, tlsOptions, address.kind === 'tcp' ? address.host : undefined, url, timeout))
      const info = await negotiate(conn, address.exportName, url, timeout, startTls)
      const leftover = conn.reader.detach()
      conn.socket.setKeepAlive(true, 10_000)
      return new NbdMember(url, address, conn.socket, info, o, leftover)
    } catch (e) {
      conn.reader?.detach()
      for (const s of [raw, conn.socket]) {
        s.on('error', () => {})
        s.destroy()
      }
      throw conn.socket !== raw && e instanceof NbdError && e.code === 'ENBD_DISCONNECTED' ? refusedAfterHandshake(e, url) : e
    }
  }

  /** The export's size in bytes. */
  get size(): number {
    return this.info.size
  }
  /** The server's minimum block size (1 when it sent none). */
  get alignment(): number {
    return this.info.blockSize?.min ?? 1
  }
  /** Transmission flags of the export. */
  get flags(): number {
    return this.info.flags
  }
  /** Whether the server exports it read-only (writes are refused). */
  get readOnly(): boolean {
    return (this.info.flags & TxFlag.READ_ONLY) !== 0
  }
  /** Whether the connection is up (no failure seen, not closed). */
  get connected(): boolean {
    return this.failure === null && this.closing === null
  }
  /** Why the connection is gone, if it is. */
  get error(): NbdError | null {
    return this.failure
  }
  /** Requests sent and not yet answered, plus those queued. */
  get inFlight(): number {
    return this.pending.size + this.queue.length
  }

  /** NBD_CMD_READ of `target.length` bytes at `offset` (split at the server's maximum block size). */
  async read(target: Uint8Array, offset: number): Promise<void> {
    this.checkRange('read', offset, target.length)
    await this.pieces(target.length, (o, n) => this.request(Cmd.READ, 0, offset + o, n, undefined, target.subarray(o, o + n)))
  }

  /** NBD_CMD_WRITE of `data` at `offset`, with FUA when asked (here or in the member's options). */
  async write(data: Uint8Array, offset: number, options: NbdWriteOptions = {}): Promise<void> {
    this.checkRange('write', offset, data.length)
    if (this.readOnly) throw new NbdError('EROFS', `${this.path}: the export is read-only`)
    const fua = options.fua ?? this.options.fua
    const nativeFua = fua && (this.info.flags & TxFlag.SEND_FUA) !== 0
    await this.pieces(data.length, (o, n) => this.request(Cmd.WRITE, nativeFua ? CmdFlag.FUA : 0, offset + o, n, data.subarray(o, o + n)))
    if (fua && !nativeFua) await this.flush()
  }

  /** NBD_CMD_FLUSH: every write completed before it is durable. A no-op where the server does not take flushes. */
  async flush(): Promise<void> {
    if ((this.info.flags & TxFlag.SEND_FLUSH) === 0) {
      this.checkUsable('flush')
      return
    }
    await this.request(Cmd.FLUSH, 0, 0, 0)
  }

  /** NBD_CMD_TRIM: the server may discard the range. A no-op where the server does not take trims. */
  async trim(offset: number, length: number): Promise<void> {
    this.checkRange('trim', offset, length)
    if (this.readOnly) throw new NbdError('EROFS', `${this.path}: the export is read-only`)
    if ((this.info.flags & TxFlag.SEND_TRIM) === 0) return
    await this.pieces(length, (o, n) => this.request(Cmd.TRIM, 0, offset + o, n), 2 ** 31)
  }

  /**
   * Waits for every request in flight, then disconnects cleanly (NBD_CMD_DISC). Never
   * rejects: a connection already lost is simply released.
   */
  close(): Promise<void> {
    if (this.closing) return this.closing
    this.closing = (async () => {
      while (this.pending.size + this.queue.length > 0) await new Promise<void>((r) => this.idleWaiters.push(r))
      if (!this.failure && !this.socket.destroyed) {
        this.socket.write(encodeRequest({ type: Cmd.DISC, cookie: this.nextCookie++ }))
        this.socket.end()
        const timer = setTimeout(() => this.socket.destroy(), 2000)
        await this.closed
        clearTimeout(timer)
      } else {
        this.socket.destroy()
      }
    })()
    return this.closing
  }

  /** Closes at once: fails what is in flight with ENBD_DISCONNECTED. */
  destroy(): void {
    this.fail(new NbdError('ENBD_DISCONNECTED', `${this.path}: the member was destroyed`))
  }

  // -- requests -------------------------------------------------------------------

  private async pieces(length: number, run: (o: number, n: number) => Promise<void>, max = this.maxPiece): Promise<void> {
    if (length <= max) return run(0, length)
    const all: Promise<void>[] = []
    for (let o = 0; o < length; o += max) all.push(run(o, Math.min(max, length - o)))
    const results = await Promise.allSettled(all)
    const bad = results.find((r) => r.status === 'rejected')
    if (bad) throw (bad as PromiseRejectedResult).reason
  }

  private request(type: number, flags: number, offset: number, length: number, payload?: Uint8Array, target?: Uint8Array): Promise<void> {
    const what = `${CMD_NAMES[type]} of ${length} bytes at ${offset} on ${this.path}`
    try {
      this.checkUsable(what)
    } catch (e) {
      return Promise.reject(e)
    }
    return new Promise<void>((resolve, reject) => {
      const p: Pending = { cookie: this.nextCookie++, type, flags, offset, length, payload, target, replied: false, resolve, reject, what }
      if (this.pending.size >= this.options.maxInFlight) this.queue.push(p)
      else this.send(p)
    })
  }

  private send(p: Pending): void {
    this.pending.set(p.cookie, p)
    const s = this.socket
    s.cork()
    s.write(encodeRequest({ flags: p.flags, type: p.type, cookie: p.cookie, offset: p.offset, length: p.length }))
    if (p.payload) s.write(p.payload)
    s.uncork()
    if (this.options.timeoutMs > 0) {
      p.timer = setTimeout(() => {
        if (!this.pending.has(p.cookie)) return
        const e = new NbdError('ENBD_TIMEOUT', `${p.what}: no reply within ${this.options.timeoutMs} ms; the connection is dropped`)
        this.settle(p, e)
        this.fail(new NbdError('ENBD_DISCONNECTED', `${this.path}: dropped after a request timed out`, { cause: e }))
      }, this.options.timeoutMs)
    }
  }

  private settle(p: Pending, e?: Error): void {
    if (!this.pending.delete(p.cookie)) return
    if (p.timer) clearTimeout(p.timer)
    if (e) p.reject(e)
    else p.resolve()
    while (this.queue.length && this.pending.size < this.options.maxInFlight && !this.failure) this.send(this.queue.shift()!)
    this.checkIdle()
  }

  private checkIdle(): void {
    if (this.pending.size + this.queue.length === 0) for (const w of this.idleWaiters.splice(0)) w()
  }

  private readonly onData = (chunk: Uint8Array) => {
    if (this.failure) return
    let replies
    try {
      replies = this.parser.feed(chunk)
    } catch (e) {
      this.fail(new NbdError('ENBD_DISCONNECTED', `${this.path}: dropped the connection: ${(e as Error).message}`, { cause: e }))
      return
    }
    for (const r of replies) {
      const p = this.pending.get(r.cookie)
      if (!p) continue
      if (r.error === 0) {
        this.settle(p)
        continue
      }
      this.settle(p, replyError(r.error, p.what))
      // The server is going away: a client must disconnect.
      if (r.error === 108) this.fail(new NbdError('ENBD_DISCONNECTED', `${this.path}: the server is shutting down (ESHUTDOWN)`))
    }
  }

  /** The connection is lost: every pending and queued request fails, and every later one. */
  private fail(e: NbdError): void {
    if (this.failure) return
    this.failure = e
    this.socket.destroy()
    const err = () => new NbdError('ENBD_DISCONNECTED', e.message, { cause: e.cause ?? e })
    for (const p of [...this.pending.values()]) this.settle(p, err())
    for (const p of this.queue.splice(0)) p.reject(err())
    this.checkIdle()
  }

  private checkUsable(what: string): void {
    if (this.closing) throw new NbdError('ECLOSED', `${what}: the member is closed`)
    if (this.failure) throw new NbdError('ENBD_DISCONNECTED', `${what}: the connection is lost (${this.failure.message})`, { cause: this.failure })
  }

  private checkRange(what: string, offset: number, length: number): void {
    if (!Number.isSafeInteger(offset) || offset < 0 || !Number.isSafeInteger(length) || length <= 0) {
      throw new NbdError('EINVAL', `${what} on ${this.path}: offset ${offset} and length ${length} must be non-negative integers, length above 0`)
    }
    if (offset + length > this.info.size) {
      throw new NbdError('EOUT_OF_RANGE', `${what} of ${length} bytes at ${offset} goes past the end of ${this.path} (${this.info.size} bytes)`)
    }
    const a = this.alignment
    if (offset % a !== 0 || length % a !== 0) {
      throw new NbdError('EALIGN', `${what} of ${length} bytes at ${offset} on ${this.path}: the server's minimum block size is ${a}`)
    }
  }
}

const CMD_NAMES: Record<number, string> = Object.fromEntries(Object.entries(Cmd).map(([k, v]) => [v, k.toLowerCase().replace('_', ' ')]))

// ---------------------------------------------------------------------------------
// Connecting and the handshake

function openSocket(a: NbdAddress, url: string, timeoutMs: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = a.kind === 'unix' ? connect({ path: a.socket }) : connect({ host: a.host, port: a.port })
    const timer = setTimeout(() => {
      socket.destroy()
      reject(new NbdError('ENBD_TIMEOUT', `${url}: no connection within ${timeoutMs} ms`))
    }, timeoutMs)
    socket.once('connect', () => {
      clearTimeout(timer)
      socket.removeListener('error', onError)
      socket.setNoDelay(true)
      resolve(socket)
    })
    const onError = (e: NodeJS.ErrnoException) => {
      clearTimeout(timer)
      reject(new NbdError(toMdBitmapError(e, { fallback: 'ENBD_DISCONNECTED' }).code, `${url}: cannot connect: ${e.message}`, { cause: e }))
    }
    socket.once('error', onError)
  })
}

/** Reads one option reply (header and data), bounded. */
async function readOptionReply(reader: SocketReader, option: number, timeout: () => number): Promise<{ type: number; data: Uint8Array }> {
  const h = decodeOptionReplyHeader(await reader.read(OPTION_REPLY_HEADER_LENGTH, timeout(), 'an option reply'))
  if (h.option !== option) throw protocolError(`the server replied to option ${h.option} while option ${option} was asked`)
  if (h.length > OPTION_DATA_LIMIT) throw protocolError(`an option reply of ${h.length} bytes is beyond any sane size`)
  const data = h.length ? await reader.read(h.length, timeout(), 'option reply data') : new Uint8Array(0)
  return { type: h.type, data }
}

/** A connection during the handshake: STARTTLS replaces both. */
interface Handshaking {
  socket: Socket
  reader: SocketReader | null
}

/**
 * NBD_OPT_STARTTLS, then the TLS handshake: the connection goes on over TLS. A server
 * that answers with an error is ENBD_TLS_REFUSED (and nothing is sent in the clear).
 */
async function startTlsOption(conn: Handshaking, tls: NbdClientTlsOptions, host: string | undefined, url: string, timeout: () => number): Promise<void> {
  conn.socket.write(encodeOption(Opt.STARTTLS))
  const { type, data } = await readOptionReply(conn.reader!, Opt.STARTTLS, timeout)
  if (type !== Rep.ACK) {
    const why = isOptionError(type) ? optionError(Opt.STARTTLS, type, data).message : `reply type ${type}`
    throw new NbdError('ENBD_TLS_REFUSED', `${url}: the server will not start TLS (${why})`, { optionReply: type })
  }
  if (conn.reader!.detach().length) throw protocolError('the server sent data after its NBD_OPT_STARTTLS reply, before the TLS handshake')
  conn.reader = null
  conn.socket = await connectTls(conn.socket, tls, host, timeout(), url)
  conn.reader = new SocketReader(conn.socket, url)
}

/** The client's fixed newstyle handshake up to transmission (after STARTTLS, when `startTls` is given). */
async function negotiate(conn: Handshaking, exportName: string, url: string, timeout: () => number, startTls?: () => Promise<void>): Promise<NbdExportInfo> {
  const name = encodeString(exportName, 'export name')
  const { flags: hsFlags } = decodeGreeting(await conn.reader!.read(GREETING_LENGTH, timeout(), 'the server greeting'))
  const noZeroes = (hsFlags & FLAG_NO_ZEROES) !== 0
  const fixed = (hsFlags & FLAG_FIXED_NEWSTYLE) !== 0
  conn.socket.write(encodeClientFlags((fixed ? FLAG_C_FIXED_NEWSTYLE : 0) | (noZeroes ? FLAG_C_NO_ZEROES : 0)))
  if (startTls) {
    if (!fixed) throw new NbdError('ENBD_TLS_REFUSED', `${url}: the server does not speak fixed newstyle, so it cannot start TLS`)
    await startTls()
  }
  const socket = conn.socket
  const reader = conn.reader!

  const exportNameOption = async (): Promise<NbdExportInfo> => {
    socket.write(encodeOption(Opt.EXPORT_NAME, name))
    const b = await reader.read(EXPORT_NAME_REPLY_LENGTH, timeout(), 'the NBD_OPT_EXPORT_NAME reply (a server closes here when the export does not exist)')
    const r = decodeExportNameReply(b)
    if (!noZeroes) await reader.read(124, timeout(), 'the reserved zeroes')
    return { size: r.size, flags: r.flags }
  }
  if (!fixed) return exportNameOption()

  socket.write(encodeOption(Opt.GO, encodeInfoRequest(exportName, [Info.BLOCK_SIZE, Info.DESCRIPTION])))
  const info: Partial<NbdExportInfo> = {}
  for (let replies = 0; ; replies++) {
    if (replies > 1000) throw protocolError('the server sent more than 1000 replies to NBD_OPT_GO')
    const { type, data } = await readOptionReply(reader, Opt.GO, timeout)
    if (type === Rep.INFO) {
      const i = decodeInfo(data)
      if (i.type === 'export') {
        info.size = i.size
        info.flags = i.flags
      } else if (i.type === 'block-size') info.blockSize = i.blockSize
      else if (i.type === 'description') info.description = i.description
      continue
    }
    if (type === Rep.ACK) {
      if (info.size === undefined || info.flags === undefined) throw protocolError('the server acknowledged NBD_OPT_GO without sending NBD_INFO_EXPORT')
      if (data.length) throw protocolError('NBD_REP_ACK with data')
      return info as NbdExportInfo
    }
    if (type === Rep.ERR_UNSUP) return exportNameOption() // a server before NBD_OPT_GO
    if (isOptionError(type)) {
      const e = optionError(Opt.GO, type, data)
      // A polite goodbye; the answer does not matter.
      socket.write(encodeOption(Opt.ABORT))
      throw new NbdError(e.code, `${url}: ${e.message}`, { optionReply: type })
    }
    throw protocolError(`unexpected reply type ${type} to NBD_OPT_GO`)
  }
}

/**
 * Lists the exports of a server (NBD_OPT_LIST), then leaves (NBD_OPT_ABORT). `url`
 * names the server; its export part is ignored. `nbds://` URLs list over TLS (`tls`
 * as for {@link NbdMember.open}).
 */
export async function listNbdExports(
  url: string,
  options: { timeoutMs?: number; tls?: NbdClientTlsOptions } = {},
): Promise<
  {
    /** The export's name. */
    name: string
    /** Its description ('' when the server gave none). */
    description: string
  }[]
> {
  const { address, tls } = parseNbdUrlTls(url)
  const tlsOptions = tls ? { ...(await readUrlTlsOptions(url)), ...options.tls } : undefined
  const t = options.timeoutMs ?? DEFAULT_CONNECT_TIMEOUT
  const deadline = Date.now() + t
  const timeout = () => Math.max(1, deadline - Date.now())
  const conn: Handshaking = { socket: await openSocket(address, url, t), reader: null }
  const raw = conn.socket
  conn.reader = new SocketReader(raw, url)
  try {
    const { flags } = decodeGreeting(await conn.reader.read(GREETING_LENGTH, timeout(), 'the server greeting'))
    if ((flags & FLAG_FIXED_NEWSTYLE) === 0) throw new NbdError('ENBD_UNSUP', `${url}: the server does not speak fixed newstyle, so it cannot list exports`)
    raw.write(encodeClientFlags(FLAG_C_FIXED_NEWSTYLE | (flags & FLAG_NO_ZEROES ? FLAG_C_NO_ZEROES : 0)))
    if (tlsOptions) await startTlsOption(conn, tlsOptions, address.kind === 'tcp' ? address.host : undefined, url, timeout)
    const { socket, reader } = { socket: conn.socket, reader: conn.reader! }
    socket.write(encodeOption(Opt.LIST))
    const out: { name: string; description: string }[] = []
    for (;;) {
      const { type, data } = await readOptionReply(reader, Opt.LIST, timeout)
      if (type === Rep.SERVER) out.push(decodeServerReply(data))
      else if (type === Rep.ACK) break
      else if (isOptionError(type)) throw optionError(Opt.LIST, type, data)
      else throw protocolError(`unexpected reply type ${type} to NBD_OPT_LIST`)
      if (out.length > 10000) throw protocolError('more than 10000 exports listed')
    }
    socket.write(encodeOption(Opt.ABORT))
    await readOptionReply(reader, Opt.ABORT, timeout).catch(() => undefined)
    return out
  } finally {
    conn.reader?.detach()
    for (const s of new Set([raw, conn.socket])) {
      s.on('error', () => {})
      s.end()
      setTimeout(() => s.destroy(), 1000).unref()
    }
  }
}

// ---------------------------------------------------------------------------------
// Openers

/** An {@link OpenMember} for NBD URLs with these options; other paths are local files. */
export function nbdOpener(options: NbdMemberOptions = {}): OpenMember {
  return (spec: MemberSpec) => (isNbdUrl(spec.path) ? NbdMember.open(spec.path, options) : FileMember.open(spec.path))
}

/**
 * The opener for mirrors with remote members: {@link NbdMember} for `nbd://` and
 * `nbd+unix://` URLs, {@link FileMember} for everything else.
 */
export const openNbdOrFileMember: OpenMember = nbdOpener()
