/**
 * NBD URLs: `nbd://host[:port][/export]` and `nbd+unix:///export?socket=/path`, read
 * into an {@link NbdAddress} and written back.
 *
 * @module
 */
import { DEFAULT_PORT } from './constants'
import { NbdError } from './errors'

/** Where an NBD export is: a TCP host and port, or a Unix socket; and the export's name. */
export type NbdAddress =
  | {
      /** A TCP connection. */
      kind: 'tcp'
      /** The server's host name or address. */
      host: string
      /** The server's TCP port. */
      port: number
      /** The export's name ('' for the default export). */
      exportName: string
    }
  | {
      /** A Unix socket connection. */
      kind: 'unix'
      /** The socket's path. */
      socket: string
      /** The export's name ('' for the default export). */
      exportName: string
    }

/** Whether `s` is an NBD URL (`nbd://`, `nbd+unix://`, or the TLS forms `nbds://`, `nbds+unix://`). */
export function isNbdUrl(s: string): boolean {
  return /^nbds?(\+(tcp|unix))?:\/\//i.test(s)
}

/**
 * Parses the standard NBD URI forms: `nbd://host[:port][/export]` (port 10809 by
 * default; `[v6]` hosts allowed) and `nbd+unix:///export?socket=/path`. The export
 * name is the path after the first slash, percent-decoded (empty = the default export).
 */
export function parseNbdUrl(url: string): NbdAddress {
  const bad = (why: string) => new NbdError('ENBD_URL', `${url}: ${why}; NBD URLs look like nbd://HOST:PORT/EXPORT or nbd+unix:///EXPORT?socket=PATH`)
  const m = /^([a-z+]+):\/\/([^/?#]*)(\/[^?#]*)?(\?[^#]*)?$/i.exec(url)
  if (!m) throw bad('not a URL')
  const scheme = m[1].toLowerCase()
  if (scheme === 'nbds' || scheme === 'nbds+unix' || scheme === 'nbds+tcp') throw bad('a TLS URL; NbdMember.open and listNbdExports take it (parseNbdUrlTls reads it)')
  let exportName: string
  try {
    exportName = decodeURIComponent((m[3] ?? '').slice(1))
  } catch {
    throw bad('the export name is not valid percent-encoding')
  }
  const query = new URLSearchParams((m[4] ?? '').slice(1))
  if (scheme === 'nbd+unix') {
    if (m[2] !== '') throw bad('a Unix socket URL has no host')
    const socket = query.get('socket')
    if (!socket) throw bad('a Unix socket URL needs ?socket=PATH')
    return { kind: 'unix', socket, exportName }
  }
  if (scheme !== 'nbd' && scheme !== 'nbd+tcp') throw bad(`unknown scheme ${scheme}`)
  const hp = /^(?:\[([0-9a-f:.]+)\]|([^:[\]]+))(?::(\d{1,5}))?$/i.exec(m[2])
  if (!hp) throw bad('no host')
  const port = hp[3] === undefined ? DEFAULT_PORT : Number(hp[3])
  if (port < 1 || port > 65535) throw bad(`port ${hp[3]} is out of range`)
  return { kind: 'tcp', host: hp[1] ?? hp[2], port, exportName }
}

/** The URL of an address, in the standard form (what {@link parseNbdUrl} reads back). */
export function formatNbdUrl(a: NbdAddress): string {
  const name = encodeURIComponent(a.exportName).replace(/%2F/gi, '/')
  if (a.kind === 'unix') return `nbd+unix:///${name}?socket=${encodeURIComponent(a.socket).replace(/%2F/gi, '/')}`
  const host = a.host.includes(':') ? `[${a.host}]` : a.host
  return `nbd://${host}:${a.port}/${name}`
}
