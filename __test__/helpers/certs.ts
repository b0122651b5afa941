/**
 * TLS credentials for the NBD tests, made in the test with gnutls' `certtool` and
 * `psktool` (Debian's gnutls-bin), laid out as qemu's `tls-creds-x509` and
 * `tls-creds-psk` objects want them:
 *
 *   const pki = await makePki(join(dir, 'pki'))
 *   pki.server     // ca-cert.pem, server-cert.pem, server-key.pem (CN localhost, IP 127.0.0.1)
 *   pki.client     // ca-cert.pem, client-cert.pem, client-key.pem
 *   pki.anonymous  // ca-cert.pem only: a client without a certificate
 *   const other = await makePki(join(dir, 'other'))  // another CA: its clients do not verify
 *   const psk = await makePsk(join(dir, 'psk'), 'alice')  // psk.dir/keys.psk
 *
 * Used by bench/nbd.ts too, so it depends on nothing of the test framework.
 */
import { execFile } from 'node:child_process'
import { copyFileSync, mkdirSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'

/** Runs certtool or psktool (no test framework here: bench/nbd.ts makes its credentials with this file too). */
function run(tool: string, args: string[]): Promise<void> {
  return new Promise((resolve, reject) => execFile(tool, args, (e, _out, err) => (e ? reject(new Error(`${tool} ${args.join(' ')}: ${err || e.message}`)) : resolve())))
}

/** certtool, psktool. */
export const TLS_TOOLS = ['certtool', 'psktool']

/** Directories of one CA's credentials, in qemu's layout. */
export interface Pki {
  /** The CA's certificate. */
  caCert: string
  /** For a server: ca-cert.pem, server-cert.pem, server-key.pem. */
  server: string
  /** For a client with a certificate: ca-cert.pem, client-cert.pem, client-key.pem. */
  client: string
  /** For a client without a certificate: ca-cert.pem. */
  anonymous: string
}

async function key(file: string): Promise<void> {
  await run('certtool', ['--generate-privkey', '--key-type=ecdsa', '--outfile', file])
}

/** A CA, a server certificate for localhost/127.0.0.1 and a client certificate, under `dir`. */
export async function makePki(dir: string, cn = 'md-bitmap test CA'): Promise<Pki> {
  const pki: Pki = { caCert: join(dir, 'ca-cert.pem'), server: join(dir, 'server'), client: join(dir, 'client'), anonymous: join(dir, 'anonymous') }
  for (const d of [dir, pki.server, pki.client, pki.anonymous]) mkdirSync(d, { recursive: true })
  const caKey = join(dir, 'ca-key.pem')
  await key(caKey)
  writeFileSync(join(dir, 'ca.info'), `cn = "${cn}"\nca\ncert_signing_key\nexpiration_days = 30\n`)
  await run('certtool', ['--generate-self-signed', '--load-privkey', caKey, '--template', join(dir, 'ca.info'), '--outfile', pki.caCert])
  const sign = async (who: 'server' | 'client', template: string) => {
    const d = who === 'server' ? pki.server : pki.client
    await key(join(d, `${who}-key.pem`))
    writeFileSync(join(dir, `${who}.info`), template)
    await run('certtool', [
      '--generate-certificate',
      '--load-privkey',
      join(d, `${who}-key.pem`),
      '--load-ca-certificate',
      pki.caCert,
      '--load-ca-privkey',
      caKey,
      '--template',
      join(dir, `${who}.info`),
      '--outfile',
      join(d, `${who}-cert.pem`),
    ])
    copyFileSync(pki.caCert, join(d, 'ca-cert.pem'))
  }
  await sign('server', 'cn = "localhost"\ndns_name = "localhost"\nip_address = "127.0.0.1"\ntls_www_server\nsigning_key\nencryption_key\nexpiration_days = 30\n')
  await sign('client', 'cn = "md-bitmap test client"\ntls_www_client\nsigning_key\nencryption_key\nexpiration_days = 30\n')
  copyFileSync(pki.caCert, join(pki.anonymous, 'ca-cert.pem'))
  return pki
}

/** A pre-shared key for `identity` in `dir/keys.psk` (qemu's tls-creds-psk layout). */
export async function makePsk(dir: string, identity: string): Promise<{ dir: string; file: string; identity: string }> {
  mkdirSync(dir, { recursive: true })
  const file = join(dir, 'keys.psk')
  await run('psktool', ['-u', identity, '-p', file])
  return { dir, file, identity }
}
