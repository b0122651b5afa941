/**
 * A mirror's control server: the Unix socket (owner-only, 0600) through which the
 * `md-bitmap mirror …` commands act on a mirror held open by `serve` or an
 * application (see `protocol.ts` for the wire format).
 *
 * A connection:
 *
 * ```
 *   accepted ── reading (a line, at most MAX_REQUEST_LINE bytes; the client may shut
 *               its side after it) ──┬─ malformed / too long ──► error line ──► ended
 *                                    ├─ nothing before the client's end ──► ended
 *                                    └─ a request ──► running
 *   running ── progress lines (re-add, add, check) ── the result or error line ──► ended
 *   the client goes away while running: the operation goes on (a recovery is not
 *   abandoned halfway because its caller stopped watching); its lines are dropped
 * ```
 *
 * The server: listening from {@link ControlServer.listen} (a stale socket file at the
 * path is replaced: the mirror's lock is held, so no other holder listens there) to
 * {@link ControlServer.close} (stops accepting, ends every connection, removes the
 * socket file). While a recovery or check runs, its progress is kept for `detail`.
 *
 * @internal
 * @module
 */
import { createServer, type Server, type Socket } from 'node:net'
import { toMdBitmapError } from '../errors'
import { listenOwnerOnly, removeSocket } from '../io/unix-socket'
import type { Mirror } from '../mirror/mirror'
import type { OperationProgress } from './detail'
import { checkRequest, perform } from './operations'
import { LineSplitter, MAX_REQUEST_LINE, type ControlReply } from './protocol'

export class ControlServer {
  private readonly connections = new Set<Socket>()
  /** The progress of the recovery or check running through this socket, for `detail`. */
  private running: OperationProgress | undefined

  private constructor(
    private readonly mirror: Mirror,
    /** The socket's path. */
    readonly path: string,
    private readonly server: Server,
  ) {
    server.on('connection', (socket) => this.accept(socket))
  }

  /** Listens on `path` for `mirror`. */
  static async listen(mirror: Mirror, path: string): Promise<ControlServer> {
    removeSocket(path)
    const server = createServer({ allowHalfOpen: true })
    const control = new ControlServer(mirror, path, server)
    await listenOwnerOnly(server, path)
    server.unref()
    return control
  }

  private accept(socket: Socket): void {
    this.connections.add(socket)
    socket.on('close', () => this.connections.delete(socket))
    socket.on('error', () => {})
    let started = false
    const send = (reply: ControlReply) => {
      if (!socket.destroyed && socket.writable) socket.write(JSON.stringify(reply) + '\n')
    }
    const splitter = new LineSplitter((line) => {
      if (started) return
      started = true
      void this.run(line, send).finally(() => socket.end())
    })
    socket.on('data', (chunk) => {
      if (started) return
      if (splitter.push(chunk) > MAX_REQUEST_LINE) {
        started = true
        send({ type: 'error', error: { code: 'EINVAL', message: `a control request is one line of at most ${MAX_REQUEST_LINE} bytes` } })
        socket.end()
      }
    })
    // A client may send its request and shut its side (echo … | nc -U): the answer
    // still goes back (the server allows half-open connections); a request without a
    // line end counts as a line; nothing at all ends the connection.
    socket.on('end', () => {
      if (!started && !splitter.end()) socket.end()
    })
  }

  private async run(line: string, send: (reply: ControlReply) => void): Promise<void> {
    try {
      let parsed: unknown
      try {
        parsed = JSON.parse(line)
      } catch {
        throw toMdBitmapError(new Error('a control request is a line of JSON'), { fallback: 'EINVAL' })
      }
      const req = checkRequest(parsed)
      const long = req.op === 're-add' || req.op === 'add' || req.op === 'check'
      const result = await perform(
        this.mirror,
        req,
        (progress) => {
          if (long) this.running = progress
          send({ type: 'progress', progress: { ...progress } })
        },
        this.running,
      ).finally(() => {
        if (long) this.running = undefined
      })
      send({ type: 'result', result })
    } catch (e) {
      const err = toMdBitmapError(e, { fallback: 'EINTERNAL' })
      send({ type: 'error', error: { code: err.code, message: err.message } })
    }
  }

  /** Stops accepting, ends every connection and removes the socket file. */
  async close(): Promise<void> {
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()))
    for (const s of this.connections) s.destroy()
    await closed
    removeSocket(this.path)
  }
}
