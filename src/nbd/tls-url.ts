/**
 * TLS in NBD URLs: the schemes `nbds://` and `nbds+unix://` (the same addresses as
 * `nbd://` and `nbd+unix://`, with TLS required), and the TLS settings a URL's query
 * may carry, with libnbd's names.
 *
 * @module
 */
import { formatNbdUrl, NbdError, parseNbdUrl, type NbdAddress } from './protocol'
import { readClientTlsCredentials, readPskFile, type NbdClientTlsOptions } from './tls-credentials'

/** An NBD URL parsed by {@link parseNbdUrlTls}. */
export interface NbdUrlTls {
  /** Where the export is. */
  address: NbdAddress
  /** Whether the scheme asks for TLS (`nbds://`, `nbds+unix://`). */
  tls: boolean
}

/** Parses an NBD URL, TLS forms included: `tls` tells whether the scheme asks for TLS. */
export function parseNbdUrlTls(url: string): NbdUrlTls {
  const m = /^nbds(\+(tcp|unix))?:\/\//i.exec(url)
  if (!m) return { address: parseNbdUrl(url), tls: false }
  // A user name (libnbd's PSK identity: nbds://alice@host/) is no part of the address.
  const rest = url.slice(m[0].length).replace(/^[^@/?#]+@/, '')
  try {
    return { address: parseNbdUrl(`nbd${m[1] ?? ''}://${rest}`), tls: true }
  } catch (e) {
    throw new NbdError('ENBD_URL', (e as Error).message.replace(/^nbd/, 'nbds'), { cause: e })
  }
}

/** The URL of an address, `nbds` when `tls`. */
export function formatNbdUrlTls(a: NbdAddress, tls: boolean): string {
  const url = formatNbdUrl(a)
  return tls ? url.replace(/^nbd/, 'nbds') : url
}

/**
 * The TLS settings an `nbds://` URL carries in its query, with libnbd's names:
 * `tls-certificates=DIR` (qemu's layout), `tls-psk-file=FILE` with the
 * identity `nbds://IDENTITY@HOST/…` or `tls-username=IDENTITY` (default: the file's first), `tls-hostname=NAME`,
 * `tls-verify-peer=false`. Returns undefined when the URL has none of them.
 */
export async function readUrlTlsOptions(url: string): Promise<NbdClientTlsOptions | undefined> {
  const q = /\?([^#]*)/.exec(url)
  if (!q) return undefined
  const query = new URLSearchParams(q[1])
  const dir = query.get('tls-certificates')
  const pskFile = query.get('tls-psk-file')
  const hostname = query.get('tls-hostname')
  const verify = query.get('tls-verify-peer')
  if (dir === null && pskFile === null && hostname === null && verify === null) return undefined
  const out: NbdClientTlsOptions = dir !== null ? await readClientTlsCredentials(dir) : {}
  if (pskFile !== null) {
    const keys = await readPskFile(pskFile)
    const user = /^[a-z+]+:\/\/([^@/?#]+)@/i.exec(url)?.[1]
    const identity = query.get('tls-username') ?? (user !== undefined ? decodeURIComponent(user) : [...keys.keys()][0])
    const key = keys.get(identity)
    if (!key) throw new NbdError('EINVAL', `${pskFile} has no key for identity "${identity}"`)
    out.psk = { identity, key }
  }
  if (hostname !== null) out.hostname = hostname
  if (verify !== null) out.verifyPeer = !/^(false|0|no|off)$/i.test(verify)
  return out
}
