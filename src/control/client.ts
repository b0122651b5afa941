/**
 * The client side of a mirror's control socket: sends one request, hands progress
 * lines to a callback, and resolves with the result (or rejects with the error the
 * server sent, as an `MdBitmapError` with its code).
 *
 * @internal
 * @module
 */
import { connect } from 'node:net'
import { MdBitmapError, toMdBitmapError, type MdBitmapErrorCode } from '../errors'
import { LineSplitter, type ControlReply, type ControlRequest } from './protocol'

/**
 * Sends `req` to the control socket at `path`. Rejects with the connection's error
 * (`ENOENT`, `ECONNREFUSED`: nobody listens) before anything was sent, so the caller
 * can open the mirror itself instead.
 */
export function requestControl(path: string, req: ControlRequest, onProgress: (p: Record<string, unknown>) => void): Promise<unknown> {
  return new Promise((resolve, reject) => {
    let settled = false
    const done = (f: () => void) => {
      if (settled) return
      settled = true
      f()
    }
    const socket = connect(path)
    const splitter = new LineSplitter((line) => {
      let reply: ControlReply
      try {
        reply = JSON.parse(line) as ControlReply
      } catch {
        return done(() => reject(new MdBitmapError('EINTERNAL', `the control socket ${path} sent a line that is not JSON`)))
      }
      if (reply.type === 'progress') onProgress(reply.progress)
      else if (reply.type === 'result') done(() => resolve(reply.result))
      else if (reply.type === 'error') done(() => reject(new MdBitmapError(reply.error.code as MdBitmapErrorCode, reply.error.message)))
    })
    socket.on('connect', () => socket.write(JSON.stringify(req) + '\n'))
    socket.on('data', (chunk) => splitter.push(chunk))
    socket.on('error', (e) => done(() => reject(toMdBitmapError(e, { context: `control socket ${path}` }))))
    socket.on('close', () => done(() => reject(new MdBitmapError('ECONNRESET', `the control socket ${path} closed without an answer (the mirror's holder stopped?)`))))
  })
}
