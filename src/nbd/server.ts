/**
 * A mirror served over NBD: {@link serveNbd} exposes a {@link Mirror} (or any
 * {@link NbdTarget}: a member works too) as one NBD export on a TCP port or a Unix
 * socket, so real clients (qemu-io, qemu-img, qemu's block layer, nbd-client) use it
 * as a disk.
 *
 * Handshake: fixed newstyle (non-fixed clients are served too), with `NBD_OPT_GO`,
 * `NBD_OPT_INFO`, `NBD_OPT_EXPORT_NAME`, `NBD_OPT_LIST`, `NBD_OPT_ABORT`,
 * `NBD_OPT_STARTTLS` (with `tls` credentials TLS is required: see `tls.ts`),
 * `NBD_OPT_STRUCTURED_REPLY` and `NBD_OPT_LIST_META_CONTEXT`/`SET_META_CONTEXT` (see
 * `meta-context.ts`, `block-status.ts`); extended headers are answered
 * `NBD_REP_ERR_UNSUP`. The export advertises
 * `NBD_INFO_BLOCK_SIZE` with the minimum set to the target's alignment, so clients do
 * their own read-modify-write for smaller I/O; the empty name selects the export too.
 *
 * Transmission: flags HAS_FLAGS, SEND_FLUSH, SEND_FUA, SEND_TRIM, SEND_WRITE_ZEROES,
 * CAN_MULTI_CONN (unless `multiConn: false`), SEND_DF with structured replies (and
 * READ_ONLY when asked). With structured replies, reads answer with OFFSET_DATA and
 * OFFSET_HOLE chunks (see `structured-reply.ts`), errors with ERROR chunks, and
 * BLOCK_STATUS with one chunk per selected context. Requests are served
 * concurrently, replies go out as each completes, matched by handle (those completed
 * in one tick in one socket write). A plain-text connection is read into a buffer of
 * its own, the rest of a large write payload straight into the payload's buffer
 * (`user-buffer-socket.ts`); payload and read buffers come from a pool the
 * connections share, reused once the target or the socket is done with them. FLUSH → `target.flush()`; FUA → the write, then a
 * flush; TRIM → `target.discard` (a mirror's punches holes in its members and reads
 * back zeroes), else `target.trim`, else accepted and ignored (the protocol lets a
 * server ignore it); WRITE_ZEROES → `target.writeZeroes` unless the client set
 * NO_HOLE, else zeroes written. Bad requests get error
 * replies: unaligned or out of range → EINVAL (writes past the end → ENOSPC, as the
 * protocol asks), unknown commands or flags → EINVAL, writes on a read-only export →
 * EPERM, a failed read or write → EIO (or the errno the target reported). A client
 * that breaks the framing (bad magic) is disconnected; nothing a client sends can
 * bring the server down.
 *
 * ```ts
 * const server = await serveNbd(mirror, { port: 10809, host: '127.0.0.1', exportName: 'disk' })
 * console.log(server.url) // nbd://127.0.0.1:10809/disk
 * // qemu-img convert -n -O raw image.raw nbd://127.0.0.1:10809/disk
 * await server.close()     // stops listening, lets requests in flight finish, disconnects
 * ```
 *
 * @module
 */
import { lstat, unlink } from 'node:fs/promises'
import { connect, createServer, type AddressInfo, type Server, type Socket } from 'node:net'
import { MdBitmapError, toMdBitmapError } from '../errors'
import { allocAligned } from '../io/aligned'
import { BufferPool } from '../io/buffer-pool'
import {
  Cmd,
  CmdFlag,
  DEFAULT_MAX_PAYLOAD,
  FLAG_C_FIXED_NEWSTYLE,
  FLAG_C_NO_ZEROES,
  FLAG_FIXED_NEWSTYLE,
  FLAG_NO_ZEROES,
  Info,
  NbdErrno,
  NbdError,
  OPTION_HEADER_LENGTH,
  Opt,
  Rep,
  RequestParser,
  TxFlag,
  decodeClientFlags,
  decodeInfoRequest,
  decodeOptionHeader,
  decodeString,
  encodeExportNameReply,
  encodeGreeting,
  encodeInfoBlockSize,
  encodeInfoExport,
  encodeInfoString,
  encodeOptionReply,
  encodeServerReply,
  encodeSimpleReply,
  encodeString,
  errnoName,
  errnoValue,
  type NbdAddress,
  type Request,
} from './protocol'
import { SocketReader } from './socket-reader'
import { readIntoUserBuffer } from './user-buffer-socket'
import { isBlockStatusMirror, mirrorMetaContexts } from './block-status'
import { decodeMetaContextRequest, encodeMetaContextReply, selectContexts, type MetaContext, type SelectedContext } from './meta-context'
import { encodeBlockStatusChunk, encodeErrorChunk, readChunks } from './protocol/structured-reply'
import { acceptTls, checkServerTls } from './tls'
import type { NbdServerTlsCredentials } from './tls-credentials'
import { formatNbdUrlTls } from './tls-url'

/** What an export serves: a {@link Mirror}, a member, anything with these. */
export interface NbdTarget {
  /** The export's size in bytes. */
  readonly size: number
  /** Offsets and lengths must be multiples of this: the export's minimum block size. */
  readonly alignment: number
  /**
   * Reads `target.length` bytes at `offset` into `target`, all of them (or rejects):
   * the server lends a reused buffer, and sends all of it.
   */
  read(target: Uint8Array, offset: number): Promise<void>
  /**
   * Writes `data` at `offset`; resolves once it is acknowledged. The server reuses
   * `data`'s memory once this settles (resolved or rejected), so nothing may read it
   * after that.
   */
  write(data: Uint8Array, offset: number): Promise<void>
  /** Makes completed writes durable (NBD_CMD_FLUSH). */
  flush(): Promise<void>
  /** Optional: discard a range (NBD_CMD_TRIM); without it trims are accepted and ignored. */
  trim?(offset: number, length: number): Promise<void>
  /** Optional: discard a range so that it reads as zeroes (NBD_CMD_TRIM); preferred to {@link NbdTarget.trim}. */
  discard?(offset: number, length: number): Promise<void>
  /** Optional: zero a range cheaply (NBD_CMD_WRITE_ZEROES without NO_HOLE); without it zeroes are written. */
  writeZeroes?(offset: number, length: number): Promise<void>
}

/** Options of {@link serveNbd}: a TCP `port` (0 = any free one) or a Unix `socket`. */
export interface ServeNbdOptions {
  /** TCP port; 0 picks a free one (see {@link NbdServer.address}). */
  port?: number
  /** TCP address to listen on. Default 127.0.0.1. */
  host?: string
  /** A Unix socket path (instead of a port). A stale socket file left by a dead server is replaced. */
  socket?: string
  /** The export's name. Default '' (the default export). The empty name always selects it too. */
  exportName?: string
  /** Shown by NBD_OPT_LIST and NBD_INFO_DESCRIPTION. */
  description?: string
  /** Refuse writes and trims (EPERM). Default false. */
  readOnly?: boolean
  /** Largest READ/WRITE payload (the advertised maximum block size). Default 32 MiB. */
  maxPayload?: number
  /** Requests served at once per connection; past it the server stops reading. Default 64. */
  maxInFlight?: number
  /** Milliseconds a client may take over its handshake. Default 30 000. */
  handshakeTimeoutMs?: number
  /** Called with connection-level events worth a log line (disconnects for protocol errors, …). */
  log?: (message: string) => void
  /**
   * Require TLS (NBD_OPT_STARTTLS) with these credentials: X.509, pre-shared keys, or
   * both (see `readServerTlsCredentials`). Clients that do not start TLS are answered
   * NBD_REP_ERR_TLS_REQD and never see the export.
   */
  tls?: NbdServerTlsCredentials
  /**
   * The metadata contexts NBD_CMD_BLOCK_STATUS answers (after NBD_OPT_STRUCTURED_REPLY
   * and NBD_OPT_SET_META_CONTEXT). Default: for a mirror, `base:allocation`,
   * `md-bitmap:write-intent` and `qemu:dirty-bitmap:NAME` per tracking bitmap (see
   * `mirrorMetaContexts`); for other targets, none.
   */
  metaContexts?: MetaContext[]
  /**
   * Advertise NBD_FLAG_CAN_MULTI_CONN: every connection reaches the same target and a
   * flush on one makes the writes completed on all durable, so clients may open
   * several. Default true (a mirror's flush is the mirror's, not a connection's).
   */
  multiConn?: boolean
}

/** A running NBD server, from {@link serveNbd}. */
export interface NbdServer {
  /** Where it listens: host and (bound) port, or the socket path; with the export name. */
  readonly address: NbdAddress
  /** The export's URL: `nbd://127.0.0.1:PORT/NAME` or `nbd+unix:///NAME?socket=PATH` (`nbds…` with TLS). */
  readonly url: string
  /** Clients connected now. */
  readonly connections: number
  /** Requests served since start. */
  readonly requests: number
  /**
   * Stops listening, answers requests already received (later ones get ESHUTDOWN),
   * then disconnects every client. Does not close the target.
   */
  close(): Promise<void>
}

const OPTION_DATA_LIMIT = 64 * 1024
/**
 * Bytes of request buffers (write payloads, read data) a server keeps for reuse across
 * its connections, instead of allocating and zero-filling one per request (which the
 * garbage collector then has to reclaim): enough for 4 connections × 64 requests of
 * 256 KiB, or 32 requests of 2 MiB.
 */
const POOL_BYTES = 64 * 2 ** 20
/** The buffer a plain-text connection reads into (see user-buffer-socket.ts). */
const READ_BUFFER_BYTES = 256 * 1024
/** A write payload with at least this much still to come is read in place, not through that buffer. */
const DIRECT_READ_MIN = 16 * 1024
const MAX_OPTIONS = 1000
const ZERO_PIECE = 2 ** 20
const KNOWN_FLAGS = CmdFlag.FUA | CmdFlag.NO_HOLE | CmdFlag.DF | CmdFlag.FAST_ZERO | CmdFlag.REQ_ONE

/** The contexts `target` offers: `given`, else a mirror's as they are at each query. */
function metaContextsOf(target: NbdTarget, given: MetaContext[] | undefined): () => MetaContext[] {
  if (given) return () => given
  return isBlockStatusMirror(target) ? () => mirrorMetaContexts(target) : () => []
}

/** Serves `target` as an NBD export. See the module comment. */
export async function serveNbd(target: NbdTarget, options: ServeNbdOptions): Promise<NbdServer> {
  const exportName = options.exportName ?? ''
  encodeString(exportName, 'export name')
  if (options.description !== undefined) encodeString(options.description, 'description')
  if ((options.port === undefined) === (options.socket === undefined)) {
    throw new MdBitmapError('EINVAL', 'serveNbd needs either a TCP port or a Unix socket path (one of them)')
  }
  if (options.tls !== undefined) checkServerTls(options.tls)
  const maxPayload = options.maxPayload ?? DEFAULT_MAX_PAYLOAD
  if (!Number.isSafeInteger(maxPayload) || maxPayload < 4096 || maxPayload > 2 ** 31) throw new MdBitmapError('EINVAL', `maxPayload must be 4 KiB to 2 GiB, got ${maxPayload}`)
  const ctx: Context = {
    target,
    exportName,
    description: options.description ?? '',
    readOnly: options.readOnly === true,
    maxPayload,
    maxInFlight: Math.max(1, options.maxInFlight ?? 64),
    handshakeTimeoutMs: options.handshakeTimeoutMs ?? 30_000,
    log: options.log ?? (() => {}),
    shuttingDown: false,
    requests: 0,
    tls: options.tls,
    metaContexts: metaContextsOf(target, options.metaContexts),
    multiConn: options.multiConn ?? true,
    pool: new BufferPool(POOL_BYTES),
    bufferAlign: Math.max(4096, target.alignment),
    zeroes: null,
  }
  const conns = new Set<Connection>()
  // Without TLS, connections are read into a buffer of their own (see Connection), so they start paused.
  const server = createServer({ noDelay: true, pauseOnConnect: ctx.tls === undefined }, (socket) => {
    if (ctx.shuttingDown) {
      socket.destroy()
      return
    }
    const c = new Connection(socket, ctx)
    conns.add(c)
    void c.done.then(() => conns.delete(c))
  })
  server.on('error', (e) => ctx.log(`server error: ${e.message}`))

  let address: NbdAddress
  if (options.socket !== undefined) {
    const path = options.socket
    await listenUnix(server, path)
    address = { kind: 'unix', socket: path, exportName }
  } else {
    const host = options.host ?? '127.0.0.1'
    await listen(server, () => server.listen(options.port, host))
    address = { kind: 'tcp', host, port: (server.address() as AddressInfo).port, exportName }
  }
  const url = formatNbdUrlTls(address, options.tls !== undefined)
  let closing: Promise<void> | undefined
  return {
    address,
    url,
    get connections() {
      return conns.size
    },
    get requests() {
      return ctx.requests
    },
    close() {
      closing ??= (async () => {
        ctx.shuttingDown = true
        const stopped = new Promise<void>((r) => server.close(() => r()))
        await Promise.all([...conns].map((c) => c.shutdown()))
        await stopped
        if (address.kind === 'unix') await unlink(address.socket).catch(() => {})
      })()
      return closing
    },
  }
}

function listen(server: Server, start: () => void): Promise<void> {
  return new Promise((resolve, reject) => {
    const onError = (e: Error) => reject(toMdBitmapError(e))
    server.once('error', onError)
    server.once('listening', () => {
      server.removeListener('error', onError)
      resolve()
    })
    start()
  })
}

/** Listens on a Unix socket, replacing a socket file nobody listens on any more. */
async function listenUnix(server: Server, path: string): Promise<void> {
  try {
    await listen(server, () => server.listen(path))
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EADDRINUSE') throw e
    const st = await lstat(path).catch(() => undefined)
    const alive = st?.isSocket()
      ? await new Promise<boolean>((r) => {
          const s = connect({ path }, () => {
            s.destroy()
            r(true)
          })
          s.on('error', () => r(false))
        })
      : true
    if (alive) throw new MdBitmapError('EADDRINUSE', `${path} is in use (a live socket, or not a socket at all)`, { cause: e })
    await unlink(path).catch((e) => {
      throw toMdBitmapError(e, { context: `cannot remove the stale socket ${path}` })
    })
    await listen(server, () => server.listen(path))
  }
}

interface Context {
  target: NbdTarget
  exportName: string
  description: string
  readOnly: boolean
  maxPayload: number
  maxInFlight: number
  handshakeTimeoutMs: number
  log: (m: string) => void
  shuttingDown: boolean
  requests: number
  /** TLS credentials: TLS is required. */
  tls: NbdServerTlsCredentials | undefined
  /** The contexts offered now (a mirror's follow its tracking bitmaps). */
  metaContexts: () => MetaContext[]
  multiConn: boolean
  /** Request buffers: a write's payload until the target has it, a read's data until the socket has it. */
  pool: BufferPool
  /** Their alignment: the target's, at least 4 KiB. */
  bufferAlign: number
  /** Zeroes for WRITE_ZEROES the target cannot do itself (made once, only read from). */
  zeroes: Uint8Array | null
}

/** One client: its handshake, then its requests. */
class Connection {
  readonly done: Promise<void>
  private resolveDone!: () => void
  private readonly peer: string
  private reader: SocketReader | null
  private transmitting = false
  private disconnecting = false
  private readonly inFlight = new Set<Promise<void>>()
  private paused = false
  /** TLS is on (after NBD_OPT_STARTTLS). */
  private secure = false
  /** Structured replies were negotiated (NBD_OPT_STRUCTURED_REPLY). */
  private structured = false
  /** The metadata contexts chosen by NBD_OPT_SET_META_CONTEXT. */
  private selected: SelectedContext[] = []
  /** Replies are being gathered into one socket write until the current tick's work is done. */
  private gathering = false
  /** Where the bytes of a socket read into our buffer go: the handshake's reader (a copy), then the request parser. */
  private sink: (bytes: Uint8Array) => void = (b) => this.reader?.push(b.slice())
  private parser: RequestParser | null = null
  private socket: Socket
  private scratch: Uint8Array | null = null
  /** Where the next socket read goes: the rest of a large write's payload straight into its buffer, else this connection's scratch buffer. */
  private readonly nextReadBuffer = (): Uint8Array => this.parser?.directTarget(DIRECT_READ_MIN) ?? (this.scratch ??= new Uint8Array(READ_BUFFER_BYTES))

  constructor(
    socket: Socket,
    private readonly ctx: Context,
  ) {
    // Plain text (no TLS to start): reads go into one buffer of this connection's, not a new one per read.
    if (ctx.tls === undefined) {
      readIntoUserBuffer(socket, this.nextReadBuffer, (b) => this.sink(b))
      socket.resume()
    }
    this.socket = socket
    this.done = new Promise((r) => (this.resolveDone = r))
    this.peer = socket.remoteAddress ? `${socket.remoteAddress}:${socket.remotePort}` : 'unix client'
    socket.on('error', () => {})
    socket.on('close', this.closed)
    this.reader = new SocketReader(socket, this.peer)
    void this.handshake().catch((e) => {
      if (!(e instanceof NbdError && e.code === 'ENBD_DISCONNECTED')) ctx.log(`${this.peer}: handshake ended: ${(e as Error).message}`)
      socket.destroy()
    })
  }

  private readonly closed = () => {
    // A write received in part is never served: its buffer goes back.
    const partial = this.parser?.abandon()
    if (partial) this.ctx.pool.give(partial)
    this.resolveDone()
  }

  /** Server shutdown: answer what was received, then hang up. */
  async shutdown(): Promise<void> {
    if (!this.transmitting) {
      this.socket.destroy()
      return this.done
    }
    // Requests still arriving are answered ESHUTDOWN (see serve) while the others finish.
    this.resume()
    const timer = setTimeout(() => this.socket.destroy(), 10_000)
    // A client that went away needs no answers: do not wait on a target that hangs.
    await Promise.race([this.drained(), this.done])
    this.socket.end()
    setTimeout(() => this.socket.destroy(), 1000).unref()
    await this.done
    clearTimeout(timer)
  }

  // -- handshake ----------------------------------------------------------------------

  private async handshake(): Promise<void> {
    let reader = this.reader!
    const ctx = this.ctx
    const deadline = Date.now() + ctx.handshakeTimeoutMs
    const t = () => Math.max(1, deadline - Date.now())
    let s = this.socket
    s.write(encodeGreeting(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES))
    const cflags = decodeClientFlags(await reader.read(4, t(), 'client flags'))
    if (cflags & ~(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES)) throw new NbdError('ENBD_PROTOCOL', `unknown client flags 0x${cflags.toString(16)}`)
    const noZeroes = (cflags & FLAG_C_NO_ZEROES) !== 0
    for (let n = 0; n < MAX_OPTIONS; n++) {
      const { option, length } = decodeOptionHeader(await reader.read(OPTION_HEADER_LENGTH, t(), 'an option'))
      if (length > OPTION_DATA_LIMIT) throw new NbdError('ENBD_PROTOCOL', `an option with ${length} bytes of data`)
      const data = length ? await reader.read(length, t(), 'option data') : new Uint8Array(0)
      const reply = (type: number, payload?: Uint8Array) => s.write(encodeOptionReply(option, type, payload))
      const error = (type: number, message: string) => reply(type, new TextEncoder().encode(message))
      if (ctx.shuttingDown && option !== Opt.ABORT) {
        error(Rep.ERR_SHUTDOWN, 'the server is shutting down')
        continue
      }
      if (ctx.tls && !this.secure && option !== Opt.STARTTLS && option !== Opt.ABORT) {
        // Nothing in the clear; NBD_OPT_EXPORT_NAME has no error reply.
        if (option === Opt.EXPORT_NAME) throw new NbdError('ENBD_TLS_REQUIRED', 'NBD_OPT_EXPORT_NAME before NBD_OPT_STARTTLS; TLS is required')
        error(Rep.ERR_TLS_REQD, 'TLS is required: start it with NBD_OPT_STARTTLS')
        continue
      }
      switch (option) {
        case Opt.EXPORT_NAME: {
          let name: string
          try {
            name = decodeString(data, 'export name')
          } catch {
            throw new NbdError('ENBD_PROTOCOL', 'NBD_OPT_EXPORT_NAME with a malformed name')
          }
          // No way to refuse but hanging up.
          if (!this.matches(name)) throw new NbdError('ENBD_UNKNOWN_EXPORT', `NBD_OPT_EXPORT_NAME for unknown export "${name}"`)
          s.write(encodeExportNameReply(ctx.target.size, this.txFlags(), noZeroes))
          return this.startTransmission()
        }
        case Opt.ABORT:
          reply(Rep.ACK)
          s.end()
          return
        case Opt.STARTTLS:
          if (!ctx.tls) error(Rep.ERR_UNSUP, 'this server has no TLS credentials')
          else if (this.secure) error(Rep.ERR_INVALID, 'TLS is already on')
          else if (length !== 0) error(Rep.ERR_INVALID, 'NBD_OPT_STARTTLS takes no data')
          else {
            await this.startTls(ctx.tls, () => reply(Rep.ACK), t())
            reader = this.reader!
            s = this.socket
          }
          break
        case Opt.LIST:
          if (length !== 0) {
            error(Rep.ERR_INVALID, 'NBD_OPT_LIST takes no data')
            break
          }
          reply(Rep.SERVER, encodeServerReply(ctx.exportName, ctx.description))
          reply(Rep.ACK)
          break
        case Opt.INFO:
        case Opt.GO: {
          let req: { name: string; infos: number[] }
          try {
            req = decodeInfoRequest(data)
          } catch (e) {
            error(Rep.ERR_INVALID, (e as Error).message)
            break
          }
          if (!this.matches(req.name)) {
            error(Rep.ERR_UNKNOWN, `no export named "${req.name}" (this server has "${ctx.exportName}")`)
            break
          }
          reply(Rep.INFO, encodeInfoExport(ctx.target.size, this.txFlags()))
          // Sent whether asked or not: the minimum is what clients must align to.
          const min = Math.max(1, ctx.target.alignment)
          reply(Rep.INFO, encodeInfoBlockSize(min, Math.max(4096, min), ctx.maxPayload - (ctx.maxPayload % min)))
          if (req.infos.includes(Info.NAME)) reply(Rep.INFO, encodeInfoString(Info.NAME, ctx.exportName))
          if (req.infos.includes(Info.DESCRIPTION) && ctx.description) reply(Rep.INFO, encodeInfoString(Info.DESCRIPTION, ctx.description))
          reply(Rep.ACK)
          if (option === Opt.GO) return this.startTransmission()
          break
        }
        case Opt.STRUCTURED_REPLY:
          if (length !== 0) error(Rep.ERR_INVALID, 'NBD_OPT_STRUCTURED_REPLY takes no data')
          else {
            this.structured = true
            reply(Rep.ACK)
          }
          break
        case Opt.LIST_META_CONTEXT:
        case Opt.SET_META_CONTEXT: {
          const set = option === Opt.SET_META_CONTEXT
          let req: { exportName: string; queries: string[] }
          try {
            req = decodeMetaContextRequest(data)
          } catch (e) {
            error(Rep.ERR_INVALID, (e as Error).message)
            break
          }
          if (set && !this.structured) {
            error(Rep.ERR_INVALID, 'NBD_OPT_SET_META_CONTEXT needs NBD_OPT_STRUCTURED_REPLY first')
            break
          }
          if (!this.matches(req.exportName)) {
            error(Rep.ERR_UNKNOWN, `no export named "${req.exportName}"`)
            break
          }
          const chosen = selectContexts(ctx.metaContexts(), req.queries, !set)
          if (set) this.selected = chosen
          for (const c of chosen) reply(Rep.META_CONTEXT, encodeMetaContextReply(c.id, c.context.name))
          reply(Rep.ACK)
          break
        }
        default:
          // Extended headers, …: not here.
          error(Rep.ERR_UNSUP, `option ${option} is not supported by this server`)
      }
    }
    throw new NbdError('ENBD_PROTOCOL', `more than ${MAX_OPTIONS} options`)
  }

  /** NBD_OPT_STARTTLS: ACK, then the TLS handshake; the options go on over TLS. */
  private async startTls(creds: NbdServerTlsCredentials, ack: () => void, timeoutMs: number): Promise<void> {
    // Nothing may follow STARTTLS before the client has our ACK.
    if (this.reader!.detach().length) throw new NbdError('ENBD_PROTOCOL', 'the client sent data after NBD_OPT_STARTTLS before its TLS handshake')
    this.reader = null
    ack()
    const secure = await acceptTls(this.socket, creds, timeoutMs, this.peer)
    secure.on('error', () => {})
    secure.on('close', this.closed)
    this.socket = secure
    this.reader = new SocketReader(secure, this.peer)
    // Decrypted bytes into our buffers too (else `data` events, as the reader listens for).
    if (readIntoUserBuffer(secure, this.nextReadBuffer, (b) => this.sink(b))) secure.resume()
    this.secure = true
  }

  private matches(name: string): boolean {
    return name === '' || name === this.ctx.exportName
  }

  private txFlags(): number {
    let f = TxFlag.HAS_FLAGS | TxFlag.SEND_FLUSH | TxFlag.SEND_FUA | TxFlag.SEND_TRIM | TxFlag.SEND_WRITE_ZEROES
    if (this.ctx.readOnly) f |= TxFlag.READ_ONLY
    if (this.structured) f |= TxFlag.SEND_DF
    if (this.ctx.multiConn) f |= TxFlag.CAN_MULTI_CONN
    return f
  }

  // -- transmission -------------------------------------------------------------------

  private startTransmission(): void {
    const leftover = this.reader!.detach()
    this.reader = null
    this.transmitting = true
    const { pool, bufferAlign } = this.ctx
    const parser = new RequestParser(this.ctx.maxPayload, (n) => pool.take(n, bufferAlign))
    this.parser = parser
    const onData = (chunk: Uint8Array, transient = false) => {
      if (this.disconnecting) return
      let requests: Request[]
      try {
        requests = parser.feed(chunk, transient)
      } catch (e) {
        this.ctx.log(`${this.peer}: disconnected: ${(e as Error).message}`)
        this.socket.destroy()
        return
      }
      for (const r of requests) {
        if (r.type === Cmd.DISC) {
          // Answer what came before, then close; nothing after DISC is read.
          void this.disconnect()
          return
        }
        this.dispatch(r)
      }
      if (this.inFlight.size >= this.ctx.maxInFlight && !this.paused) {
        this.paused = true
        this.socket.pause()
      }
    }
    this.socket.on('data', (b: Uint8Array) => onData(b))
    this.sink = (b) => onData(b, true)
    for (const b of leftover) onData(b)
  }

  private resume(): void {
    if (this.paused) {
      this.paused = false
      this.socket.resume()
    }
  }

  private async disconnect(): Promise<void> {
    if (this.disconnecting) return
    this.disconnecting = true
    this.resume()
    await Promise.race([this.drained(), this.done])
    this.socket.end()
    setTimeout(() => this.socket.destroy(), 2000).unref()
  }

  private async drained(): Promise<void> {
    while (this.inFlight.size) await Promise.allSettled([...this.inFlight])
  }

  private dispatch(r: Request): void {
    this.ctx.requests++
    const p = this.serve(r)
      .finally(() => {
        // The target is done with a write's payload once the write settled (see NbdTarget.write).
        if (r.data) this.ctx.pool.give(r.data)
      })
      .then(
        (data) => this.reply(r, 0, data),
        (e) =>
          this.reply(
            r,
            typeof e === 'number' ? e : errnoValue((e as { code?: string })?.code, r.type === Cmd.WRITE || r.type === Cmd.WRITE_ZEROES),
            undefined,
            typeof e === 'number' ? undefined : (e as Error)?.message,
          ),
      )
      .finally(() => {
        this.inFlight.delete(p)
        if (this.inFlight.size < this.ctx.maxInFlight) this.resume()
      })
    this.inFlight.add(p)
  }

  /**
   * Answers `r`: a simple reply, or with structured replies a read's data/hole chunks,
   * block status chunks (`data` is then the chunks), an error chunk with `message`.
   * A read's buffer goes back to the pool once the socket is done with it.
   */
  private reply(r: Request, error: number, data?: Uint8Array | Uint8Array[], message?: string): void {
    const s = this.socket
    const pool = this.ctx.pool
    const lent = r.type === Cmd.READ && data instanceof Uint8Array ? data : undefined
    if (s.destroyed || !s.writable) {
      if (lent) pool.give(lent)
      return
    }
    const cookie = r.cookie
    let out: Uint8Array[]
    if (this.structured && error !== 0) out = [encodeErrorChunk(cookie, error, message ?? errnoName(error))]
    else if (Array.isArray(data)) out = data
    else if (this.structured && r.type === Cmd.READ && data) out = readChunks(cookie, Number(r.offset), data, (r.flags & CmdFlag.DF) !== 0)
    else out = error === 0 && data ? [encodeSimpleReply(0, cookie), data] : [encodeSimpleReply(error, cookie)]
    // Every reply of the requests completed together (one reap of the target's completions) goes out in one write.
    if (!this.gathering) {
      this.gathering = true
      s.cork()
      process.nextTick(() => {
        this.gathering = false
        s.uncork()
      })
    }
    for (let i = 0; i < out.length - 1; i++) s.write(out[i])
    // The last write's callback comes once the socket is done with it (sent, or dropped with the socket).
    s.write(out[out.length - 1], lent ? () => pool.give(lent) : undefined)
  }

  /** NBD_CMD_BLOCK_STATUS: one chunk per selected context, the last one DONE. */
  private async blockStatus(r: Request): Promise<Uint8Array[]> {
    const t = this.ctx.target
    if (!this.structured || this.selected.length === 0 || r.length === 0) throw NbdErrno.EINVAL
    const a = Math.max(1, t.alignment)
    if (r.offset >= BigInt(t.size) || r.offset % BigInt(a) !== 0n) throw NbdErrno.EINVAL
    const offset = Number(r.offset)
    // Whole blocks of the minimum size, never past the end.
    const length = Math.min(Math.ceil(r.length / a) * a, t.size - offset)
    const all = await Promise.all(this.selected.map((c) => c.context.extents(offset, length)))
    return all.map((extents, i) =>
      encodeBlockStatusChunk(r.cookie, this.selected[i].id, (r.flags & CmdFlag.REQ_ONE) !== 0 ? extents.slice(0, 1) : extents, i === all.length - 1),
    )
  }

  /** Serves one request; resolves with a read's data, or rejects with an NBD error value or an error. */
  private async serve(r: Request): Promise<Uint8Array | Uint8Array[] | undefined> {
    const ctx = this.ctx
    const t = ctx.target
    if (ctx.shuttingDown) throw NbdErrno.ESHUTDOWN
    if (r.flags & ~KNOWN_FLAGS) throw NbdErrno.EINVAL
    const fua = (r.flags & CmdFlag.FUA) !== 0
    const writes = r.type === Cmd.WRITE || r.type === Cmd.WRITE_ZEROES || r.type === Cmd.TRIM
    const check = (): number => {
      if (r.length === 0) throw NbdErrno.EINVAL
      if (r.offset + BigInt(r.length) > BigInt(t.size)) throw r.type === Cmd.WRITE || r.type === Cmd.WRITE_ZEROES ? NbdErrno.ENOSPC : NbdErrno.EINVAL
      const offset = Number(r.offset)
      const a = Math.max(1, t.alignment)
      if (offset % a !== 0 || r.length % a !== 0) throw NbdErrno.EINVAL
      if (writes && ctx.readOnly) throw NbdErrno.EPERM
      return offset
    }
    switch (r.type) {
      case Cmd.READ: {
        if (r.length > ctx.maxPayload) throw NbdErrno.EINVAL
        const offset = check()
        const buf = ctx.pool.take(r.length, ctx.bufferAlign)
        try {
          await t.read(buf, offset)
        } catch (e) {
          ctx.pool.give(buf)
          throw e
        }
        return buf
      }
      case Cmd.WRITE: {
        if (r.tooBig) throw NbdErrno.EINVAL
        const offset = check()
        await t.write(r.data!, offset)
        if (fua) await t.flush()
        return undefined
      }
      case Cmd.WRITE_ZEROES: {
        const offset = check()
        if (t.writeZeroes && (r.flags & CmdFlag.NO_HOLE) === 0) {
          await t.writeZeroes(offset, r.length)
          if (fua) await t.flush()
          return undefined
        }
        const piece = Math.min(ZERO_PIECE - (ZERO_PIECE % Math.max(1, t.alignment)), r.length)
        if (!ctx.zeroes || ctx.zeroes.length < piece) ctx.zeroes = allocAligned(piece, ctx.bufferAlign)
        const zeroes = ctx.zeroes
        const all: Promise<void>[] = []
        for (let o = 0; o < r.length; o += piece) all.push(t.write(zeroes.subarray(0, Math.min(piece, r.length - o)), offset + o))
        const results = await Promise.allSettled(all)
        const bad = results.find((x) => x.status === 'rejected') as PromiseRejectedResult | undefined
        if (bad) throw bad.reason
        if (fua) await t.flush()
        return undefined
      }
      case Cmd.TRIM: {
        const offset = check()
        if (t.discard) await t.discard(offset, r.length)
        else if (t.trim) await t.trim(offset, r.length)
        if (fua) await t.flush()
        return undefined
      }
      case Cmd.FLUSH:
        await t.flush()
        return undefined
      case Cmd.BLOCK_STATUS:
        return this.blockStatus(r)
      default:
        throw NbdErrno.EINVAL
    }
  }
}
