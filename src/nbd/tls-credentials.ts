/**
 * TLS credentials of the NBD server and client, and the files they are read from, in
 * the layouts the NBD tools use:
 *
 * - X.509, qemu's directory layout (`--object tls-creds-x509,dir=DIR`): `ca-cert.pem`
 *   (the CA that signs the peers' certificates), `server-cert.pem` + `server-key.pem`
 *   (a server's own), `client-cert.pem` + `client-key.pem` (a client's own). libnbd's
 *   `tls-certificates=DIR` reads the same names.
 * - Pre-shared keys, `psktool`'s file format (qemu's `keys.psk`, libnbd's
 *   `tls-psk-file`): one `identity:hexkey` per line.
 *
 * @module
 */
import { join } from 'node:path'
import { MdBitmapError } from '../errors'
import { readWholeFile } from '../io/files'
import { NbdError } from './protocol'

/** What an NBD server needs for TLS: X.509 (certificate and key), pre-shared keys, or both. */
export interface NbdServerTlsCredentials {
  /** The server's certificate chain, PEM. Needed with `key` for X.509. */
  cert?: string | Buffer
  /** The server's private key, PEM. */
  key?: string | Buffer
  /** The CA certificates client certificates must be signed by, PEM (needed by `verifyPeer`). */
  ca?: string | Buffer
  /** Require a client certificate signed by `ca` (X.509 only; PSK clients are authenticated by their key). Default false. */
  verifyPeer?: boolean
  /** Pre-shared keys by identity (what `psktool` writes; see {@link parsePskFile}). */
  psk?: ReadonlyMap<string, Buffer>
}

/** What an NBD client needs for TLS: a CA to verify the server (and maybe its own certificate), or a pre-shared key. */
export interface NbdClientTlsOptions {
  /** The CA certificates the server's certificate must be signed by, PEM. Default: the system's CAs. */
  ca?: string | Buffer
  /** The client's certificate, PEM, for servers that verify their peers. */
  cert?: string | Buffer
  /** The client's private key, PEM. */
  key?: string | Buffer
  /** A pre-shared key instead of certificates. */
  psk?: {
    /** The identity the server knows the key by (psktool's user name). */
    identity: string
    /** The key's bytes. */
    key: Buffer
  }
  /**
   * The name the server's certificate must carry. Default: the URL's host for TCP; for
   * Unix sockets, no name is checked unless given (the chain is still verified).
   */
  hostname?: string
  /** Verify the server's certificate. Default true; false is for tests only. */
  verifyPeer?: boolean
}

/** Parses a `psktool` key file: `identity:hexkey` lines. Throws `EINVAL` on anything else. */
export function parsePskFile(text: string, file = 'the PSK file'): Map<string, Buffer> {
  const keys = new Map<string, Buffer>()
  text.split('\n').forEach((raw, i) => {
    const line = raw.trim()
    if (line === '') return
    const m = /^([^:]+):([0-9a-fA-F]+)$/.exec(line)
    if (!m || m[2].length % 2 !== 0) throw new NbdError('EINVAL', `${file}, line ${i + 1}: expected IDENTITY:HEXKEY (as psktool writes it)`)
    keys.set(m[1], Buffer.from(m[2], 'hex'))
  })
  if (keys.size === 0) throw new NbdError('EINVAL', `${file} holds no key; make one with: psktool -u NAME -p ${file}`)
  return keys
}

async function readCredential(file: string, what: string, optional: boolean): Promise<Buffer | undefined> {
  try {
    return await readWholeFile(file)
  } catch (e) {
    if (optional && (e as MdBitmapError).code === 'ENOENT') return undefined
    throw new MdBitmapError((e as MdBitmapError).code, `${what}: ${(e as MdBitmapError).message}`, { cause: e })
  }
}

/** Reads a `psktool` key file. */
export async function readPskFile(file: string): Promise<Map<string, Buffer>> {
  return parsePskFile((await readCredential(file, 'the PSK file', false))!.toString('utf8'), file)
}

/**
 * Reads a server's credentials: X.509 from `dir` in qemu's layout (`server-cert.pem`,
 * `server-key.pem`, and `ca-cert.pem`, which `verifyPeer` needs), keys from `pskFile`.
 */
export async function readServerTlsCredentials(o: { dir?: string; pskFile?: string; verifyPeer?: boolean }): Promise<NbdServerTlsCredentials> {
  if (o.dir === undefined && o.pskFile === undefined) throw new NbdError('EINVAL', 'TLS needs a credentials directory or a PSK file')
  const creds: NbdServerTlsCredentials = { verifyPeer: o.verifyPeer === true }
  if (o.dir !== undefined) {
    creds.cert = await readCredential(join(o.dir, 'server-cert.pem'), 'the server certificate', false)
    creds.key = await readCredential(join(o.dir, 'server-key.pem'), 'the server key', false)
    creds.ca = await readCredential(join(o.dir, 'ca-cert.pem'), 'the CA certificate', !o.verifyPeer)
  } else if (o.verifyPeer) {
    throw new NbdError('EINVAL', 'verifying client certificates needs a credentials directory holding ca-cert.pem')
  }
  if (o.pskFile !== undefined) creds.psk = await readPskFile(o.pskFile)
  return creds
}

/**
 * A client's credentials from `dir` in qemu's layout: `ca-cert.pem`, and
 * `client-cert.pem` + `client-key.pem` when present.
 */
export async function readClientTlsCredentials(dir: string): Promise<NbdClientTlsOptions> {
  const ca = await readCredential(join(dir, 'ca-cert.pem'), 'the CA certificate', false)
  const cert = await readCredential(join(dir, 'client-cert.pem'), 'the client certificate', true)
  const key = cert ? await readCredential(join(dir, 'client-key.pem'), 'the client key', false) : undefined
  return { ca, ...(cert ? { cert, key } : {}) }
}
