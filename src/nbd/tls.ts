/**
 * NBD over TLS: `NBD_OPT_STARTTLS` as qemu-nbd, nbd-server and libnbd do it. The TLS
 * itself is Node's `tls` module on the socket once both sides agreed to start it; this
 * file holds the two upgrades (server and client side) and the typed errors.
 *
 * The negotiation, server side (with credentials configured, TLS is required):
 *
 * ```text
 *            greeting, client flags
 *   PLAIN ───────────────────────────────────────────────────────────────────────┐
 *     │ NBD_OPT_STARTTLS  → NBD_REP_ACK, then the TLS handshake on the socket      │
 *     │ NBD_OPT_ABORT     → NBD_REP_ACK, close                                     │
 *     │ NBD_OPT_EXPORT_NAME → hang up (it has no error reply; never served in the clear)
 *     │ any other option  → NBD_REP_ERR_TLS_REQD (nothing is listed or served)     │
 *     ▼ handshake ok (client certificate verified with verifyPeer; PSK identity known)
 *   SECURE ─ options as usual over TLS; NBD_OPT_STARTTLS again → NBD_REP_ERR_INVALID
 *     │ NBD_OPT_GO / NBD_OPT_EXPORT_NAME
 *     ▼
 *   TRANSMISSION (over TLS)
 *   handshake fails (wrong CA, no client certificate, unknown PSK identity) → closed;
 *   the server goes on serving the others.
 * ```
 *
 * Without credentials, NBD_OPT_STARTTLS is answered NBD_REP_ERR_UNSUP and the server
 * stays PLAIN.
 *
 * Client side (`nbds://`, `nbds+unix://`): greeting (must be fixed newstyle), client
 * flags, NBD_OPT_STARTTLS; an ACK starts the TLS handshake (the server's certificate is
 * verified against the CA and the host name, or the pre-shared key is used), then
 * NBD_OPT_GO as over plain text. A server that answers STARTTLS with an error is
 * `ENBD_TLS_REFUSED`, and the connection is dropped: nothing goes in the clear.
 *
 * TLS versions and suites: TLS 1.2 and 1.3. X.509 uses Node's defaults. PSK uses TLS 1.3's
 * external PSK (gnutls, i.e. qemu and libnbd, negotiate it) and, for TLS 1.2 peers,
 * the (EC)DHE-PSK and PSK suites, which OpenSSL leaves out of its defaults.
 *
 * Errors (see `MdBitmapErrorCode`): `ENBD_TLS` (the handshake failed),
 * `ENBD_TLS_CERTIFICATE` (the peer's certificate does not verify), `ENBD_TLS_REFUSED`
 * (the server will not start TLS), and `ENBD_TLS_REQUIRED` (the server wants TLS and the
 * client did not start it).
 *
 * @module
 */
import type { Socket } from 'node:net'
import { DEFAULT_CIPHERS, connect as tlsConnect, createServer as createTlsServer, type TLSSocket } from 'node:tls'
import type { NbdClientTlsOptions, NbdServerTlsCredentials } from './tls-credentials'
import { NbdError } from './protocol'

/**
 * TLS 1.3 suites first when PSK is on: OpenSSL uses a pre-shared key in TLS 1.3 only
 * with a SHA-256 suite, and a server that also has a certificate would otherwise pick
 * TLS_AES_256_GCM_SHA384 and a certificate handshake, which a PSK-only client (qemu's
 * tls-creds-psk) cannot finish.
 */
const PSK_TLS13 = 'TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256'
const DEFAULT_TLS12 = DEFAULT_CIPHERS.split(':').filter((c) => !c.startsWith('TLS_')).join(':')

/** OpenSSL's suites for TLS 1.2 PSK (left out of Node's defaults). */
const PSK_CIPHERS = 'ECDHE-PSK-AES256-CBC-SHA384:ECDHE-PSK-AES128-CBC-SHA256:ECDHE-PSK-CHACHA20-POLY1305:DHE-PSK-AES256-GCM-SHA384:DHE-PSK-AES128-GCM-SHA256:DHE-PSK-CHACHA20-POLY1305:PSK-AES256-GCM-SHA384:PSK-AES128-GCM-SHA256:PSK-CHACHA20-POLY1305'

/** OpenSSL's verification failures, by the `code` Node gives them. */
const CERTIFICATE_ERRORS = /CERT|SELF_SIGNED|UNABLE_TO_(GET|VERIFY)|ALTNAME|HOSTNAME|PEER_DID_NOT_RETURN|NO_CERTIFICATE|UNKNOWN_CA|BAD_CERTIFICATE|CERTIFICATE_REQUIRED/

/** The typed error for a failed TLS handshake. */
function tlsError(e: unknown, who: string): NbdError {
  if (e instanceof NbdError) return e
  const err = e as { code?: string; reason?: string; message?: string }
  const text = `${err?.code ?? ''} ${err?.reason ?? ''} ${err?.message ?? ''}`
  const certificate = CERTIFICATE_ERRORS.test(text.toUpperCase().replace(/ /g, '_'))
  return new NbdError(certificate ? 'ENBD_TLS_CERTIFICATE' : 'ENBD_TLS', `${who}: TLS handshake failed: ${err?.message ?? String(e)}${err?.code ? ` (${err.code})` : ''}`, { cause: e })
}

/** Whether the credentials name anything to serve TLS with. */
function hasServerTls(c: NbdServerTlsCredentials | undefined): c is NbdServerTlsCredentials {
  return c !== undefined && ((c.cert !== undefined && c.key !== undefined) || (c.psk !== undefined && c.psk.size > 0))
}

/** Checks server credentials once, at start, so a bad set fails `serveNbd` rather than every client. */
export function checkServerTls(c: NbdServerTlsCredentials): void {
  if ((c.cert === undefined) !== (c.key === undefined)) throw new NbdError('EINVAL', 'TLS: a server certificate needs its key, and a key its certificate')
  if (!hasServerTls(c)) throw new NbdError('EINVAL', 'TLS: give a server certificate and key, or pre-shared keys')
  if (c.verifyPeer && (c.ca === undefined || c.cert === undefined)) throw new NbdError('EINVAL', 'TLS: verifying client certificates needs a CA certificate and a server certificate')
  // Parses the PEM now: a broken file is an error at start.
  try {
    createTlsServer(serverOptions(c)).close()
  } catch (e) {
    throw new NbdError('EINVAL', `TLS: the server credentials are not usable: ${(e as Error).message}`, { cause: e })
  }
}

/**
 * Node's server options for `c`. With pre-shared keys and verified peers both on, a
 * client that proved a key has no certificate to show, and Node 24 refuses it when it
 * rejects unauthorized peers itself (Node 20 lets it through): then Node only asks for
 * certificates, `pskPeers` gets each socket whose client proved a key, and
 * {@link acceptTls} refuses the others that show no verified certificate.
 */
function serverOptions(c: NbdServerTlsCredentials, pskPeers?: WeakSet<TLSSocket>) {
  const psk = c.psk
  return {
    ...(c.cert !== undefined ? { cert: c.cert, key: c.key } : {}),
    ...(c.ca !== undefined ? { ca: c.ca } : {}),
    requestCert: c.verifyPeer === true,
    rejectUnauthorized: c.verifyPeer === true && !psk,
    minVersion: 'TLSv1.2' as const,
    ...(psk
      ? {
          ciphers: `${PSK_TLS13}:${c.cert !== undefined ? `${DEFAULT_TLS12}:` : ''}${PSK_CIPHERS}`,
          pskCallback: (s: TLSSocket, identity: string) => {
            const key = psk.get(identity)
            if (key) pskPeers?.add(s)
            return key ?? null
          },
        }
      : {}),
  }
}

/**
 * The server's side of STARTTLS, after it sent NBD_REP_ACK: the TLS handshake on
 * `raw`. Resolves with the TLS socket, or rejects with `ENBD_TLS`/`ENBD_TLS_CERTIFICATE`
 * (the socket is destroyed then).
 */
export function acceptTls(raw: Socket, c: NbdServerTlsCredentials, timeoutMs: number, peer: string): Promise<TLSSocket> {
  return new Promise((resolve, reject) => {
    // A server object that never listens: it runs Node's server-side handshake
    // (client certificate checks included) on the socket handed to it.
    const pskPeers = new WeakSet<TLSSocket>()
    const server = createTlsServer({ ...serverOptions(c, pskPeers), handshakeTimeout: timeoutMs })
    let done = false
    const finish = (e: NbdError | null, s?: TLSSocket) => {
      if (done) return
      done = true
      raw.removeListener('close', onClose)
      if (e) {
        raw.destroy()
        reject(e)
      } else resolve(s!)
    }
    const onClose = () => finish(new NbdError('ENBD_TLS_CERTIFICATE', `${peer}: the TLS handshake ended without a verified peer (the client certificate is missing or does not verify)`))
    server.once('secureConnection', (s: TLSSocket) => {
      if (c.verifyPeer && !s.authorized && !pskPeers.has(s)) {
        s.destroy()
        finish(new NbdError('ENBD_TLS_CERTIFICATE', `${peer}: the client's certificate does not verify (${String(s.authorizationError ?? 'none given')})`))
      } else finish(null, s)
    })
    server.once('tlsClientError', (e: Error) => finish(tlsError(e, peer)))
    raw.once('close', onClose)
    server.emit('connection', raw)
  })
}

/**
 * What a client makes of losing the connection right after its TLS handshake, before
 * the server answered an option: in TLS 1.3 a server checks the client's certificate
 * after the client's side of the handshake is done, and refuses it by an alert (the
 * cause names it) or by hanging up.
 */
export function refusedAfterHandshake(e: NbdError, url: string): NbdError {
  const cause = e.cause as { code?: string } | undefined
  if (cause?.code && /^ERR_SSL/.test(cause.code)) return tlsError(cause, url)
  return new NbdError('ENBD_TLS', `${url}: the server hung up right after the TLS handshake (it may have refused the client certificate, or lack of one): ${e.message}`, { cause: e })
}

/**
 * The client's side of STARTTLS, after the server's NBD_REP_ACK: the TLS handshake on
 * `raw`, verifying the server (CA and host name) unless told not to. `host` is the
 * URL's host (undefined for a Unix socket).
 */
export function connectTls(raw: Socket, o: NbdClientTlsOptions, host: string | undefined, timeoutMs: number, url: string): Promise<TLSSocket> {
  return new Promise((resolve, reject) => {
    const name = o.hostname ?? host
    const isIp = name !== undefined && /^[0-9.]+$|:/.test(name)
    const psk = o.psk
    const s = tlsConnect({
      socket: raw,
      ...(o.ca !== undefined ? { ca: o.ca } : {}),
      ...(o.cert !== undefined ? { cert: o.cert, key: o.key } : {}),
      ...(name !== undefined && !isIp ? { servername: name } : {}),
      ...(name !== undefined ? { host: name } : {}),
      // No name to check (a Unix socket without `hostname`): the chain alone.
      ...(name === undefined ? { checkServerIdentity: () => undefined } : {}),
      rejectUnauthorized: o.verifyPeer !== false,
      minVersion: 'TLSv1.2',
      ...(psk ? { ciphers: `${PSK_TLS13}:${PSK_CIPHERS}`, pskCallback: () => ({ psk: psk.key, identity: psk.identity }) } : {}),
    })
    const timer = setTimeout(() => fail(new NbdError('ENBD_TIMEOUT', `${url}: no TLS handshake within ${timeoutMs} ms`)), timeoutMs)
    let done = false
    const fail = (e: NbdError) => {
      if (done) return
      done = true
      clearTimeout(timer)
      s.destroy()
      reject(e)
    }
    const onError = (e: Error) => fail(tlsError(e, url))
    const onClose = () => fail(new NbdError('ENBD_TLS', `${url}: the server closed the connection during the TLS handshake`))
    s.once('error', onError)
    s.once('close', onClose)
    s.once('secureConnect', () => {
      if (done) return
      done = true
      clearTimeout(timer)
      s.removeListener('error', onError)
      s.removeListener('close', onClose)
      s.setNoDelay(true)
      resolve(s)
    })
  })
}
