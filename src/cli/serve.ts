/**
 * `md-bitmap serve --bitmap FILE (--port N [--host ADDR] | --socket PATH)`: opens a
 * mirror (whose members may be NBD URLs) and serves it as an NBD export until SIGINT
 * or SIGTERM, then closes the export and the mirror cleanly.
 *
 * @internal
 * @module
 */
import { Mirror } from '../mirror/mirror'
import { nbdOpener } from '../nbd/client'
import { serveNbd } from '../nbd/server'
import { readServerTlsCredentials } from '../nbd/tls-credentials'
import { lockWaitOf, parse, parseInteger } from './args'
import { usage } from './errors'
import { bytes } from './format'
import type { Io } from './io'

export const HELP = `Usage: md-bitmap serve --bitmap FILE (--port N [--host ADDR] | --socket PATH) [options]

Opens the mirror whose bitmap is FILE and serves it as an NBD export, so NBD clients
(qemu-img, qemu-io, QEMU, nbd-client) use it as a disk. Members may be local files or
NBD URLs (nbd://HOST:PORT/EXPORT, nbd+unix:///EXPORT?socket=PATH); a member that
cannot be reached is marked faulty and the mirror is served degraded. The export's
minimum block size is the mirror's alignment: clients read-modify-write smaller I/O.

While it runs, the mirror listens on its control socket (FILE.mirror.sock beside the
metadata, owner-only): \`md-bitmap mirror detail|fail|remove|re-add|add|check\` and
\`track|checkpoint|untrack\` act on the served mirror live through it. A second serve
of the same mirror fails ELOCKED.

The line "serving URL" goes to stdout once the export accepts connections. SIGINT or
SIGTERM stops it: requests in flight are answered, clients are disconnected, and the
mirror is closed cleanly (exit status 0).

Options:
  --bitmap FILE       the mirror's bitmap file (required unless --metadata is given)
  --metadata FILE     the mirror's metadata file, when not FILE.mirror.json
  --port N            listen on TCP port N (0: any free port, printed)
  --host ADDR         the address to listen on with --port (default 127.0.0.1)
  --socket PATH       listen on a Unix socket instead
  --export NAME       the export's name (default: the empty default name, which
                      clients also reach by any URL without a name)
  --read-only         refuse writes (EPERM)
  --timeout MS        per-request timeout of NBD members (default 30000; 0: none)
  --tls-creds DIR     require TLS (NBD_OPT_STARTTLS) with the X.509 files in DIR, in
                      qemu's layout: ca-cert.pem, server-cert.pem, server-key.pem
  --tls-verify-peer   with --tls-creds: require client certificates signed by
                      DIR/ca-cert.pem
  --tls-psk FILE      require TLS with the pre-shared keys in FILE (psktool's
                      IDENTITY:HEXKEY lines); may go with --tls-creds
                      Clients that do not start TLS are refused; the URL printed
                      is nbds://… (qemu: --object tls-creds-x509,…,endpoint=client;
                      nbdinfo: nbds://HOST:PORT/NAME?tls-certificates=DIR)
  --device-mode       write the bitmap in device mode (needs root)
  --allow-volatile    allow a bitmap on tmpfs
  --lock-wait MS      how long to wait for the locks of an owner that was killed
                      while its last writes land (default 2000); a live owner is
                      refused at once (ELOCKED)
  --no-control        no control socket (the mirror commands then fail ELOCKED
                      while it is served)
  -h, --help          this help`

export async function serve(argv: string[], io: Io): Promise<number> {
  const { values } = parse(
    'serve',
    argv,
    {
      bitmap: { type: 'string' },
      metadata: { type: 'string' },
      port: { type: 'string' },
      host: { type: 'string' },
      socket: { type: 'string' },
      export: { type: 'string' },
      'read-only': { type: 'boolean' },
      timeout: { type: 'string' },
      'device-mode': { type: 'boolean' },
      'allow-volatile': { type: 'boolean' },
      'lock-wait': { type: 'string' },
      'tls-creds': { type: 'string' },
      'tls-verify-peer': { type: 'boolean' },
      'tls-psk': { type: 'string' },
      'no-control': { type: 'boolean' },
    },
    { min: 0, max: 0, names: '' },
  )
  if (values.help) {
    io.out(HELP + '\n')
    return 0
  }
  if (!values.bitmap && !values.metadata) throw usage('serve needs --bitmap FILE (or --metadata FILE)', 'serve')
  if ((values.port === undefined) === (values.socket === undefined)) throw usage('serve needs --port N or --socket PATH (one of them)', 'serve')
  if (values.host !== undefined && values.port === undefined) throw usage('--host goes with --port', 'serve')
  const port = values.port === undefined ? undefined : parseInteger(values.port as string, '--port', 'serve', 0, 65535)
  const timeoutMs = values.timeout === undefined ? undefined : parseInteger(values.timeout as string, '--timeout', 'serve', 0, 3_600_000)
  if (values['tls-verify-peer'] && values['tls-creds'] === undefined) throw usage('--tls-verify-peer goes with --tls-creds DIR', 'serve')
  const tls =
    values['tls-creds'] === undefined && values['tls-psk'] === undefined
      ? undefined
      : await readServerTlsCredentials({ dir: values['tls-creds'] as string | undefined, pskFile: values['tls-psk'] as string | undefined, verifyPeer: values['tls-verify-peer'] === true })

  const mirror = await Mirror.open({
    bitmap: values.bitmap as string | undefined,
    metadata: values.metadata as string | undefined,
    openMember: nbdOpener({ timeoutMs }),
    bitmapMode: values['device-mode'] ? 'device' : 'file',
    allowVolatile: values['allow-volatile'] === true,
    lockWaitMs: lockWaitOf(values, 'serve'),
    control: values['no-control'] !== true,
  })
  mirror.on('member-faulty', (e: { index: number; path: string; error: { code: string; message: string } }) => {
    io.err(`serve: member ${e.index} (${e.path}) is faulty: ${e.error.code}: ${e.error.message}; the mirror goes on degraded\n`)
  })
  mirror.on('error', (e: { code: string; message: string }) => io.err(`serve: ${e.code}: ${e.message}\n`))
  let server
  try {
    server = await serveNbd(mirror, {
      port,
      host: port === undefined ? undefined : ((values.host as string | undefined) ?? '127.0.0.1'),
      socket: values.socket as string | undefined,
      exportName: (values.export as string | undefined) ?? '',
      readOnly: values['read-only'] === true,
      tls,
      log: (m) => io.err(`serve: ${m}\n`),
    })
  } catch (e) {
    await mirror.close().catch(() => {})
    throw e
  }
  for (const m of mirror.members) {
    if (m.state !== 'in-sync') io.err(`serve: member ${m.index} (${m.path}) is ${m.state}${m.error ? `: ${m.error.code}` : ''}; serving degraded\n`)
  }
  if (mirror.controlSocket) io.err(`serve: control socket ${mirror.controlSocket}\n`)
  if (mirror.needsResync) io.err('serve: some chunks are marked for resync; run `md-bitmap resync` (reads are served from the in-sync members meanwhile)\n')
  io.out(`serving ${server.url} (${bytes(mirror.size)}, block size ${mirror.alignment}, ${mirror.members.length} members)\n`)

  const signal = await new Promise<NodeJS.Signals>((resolve) => {
    const on = (s: NodeJS.Signals) => {
      process.off('SIGINT', on)
      process.off('SIGTERM', on)
      resolve(s)
    }
    process.on('SIGINT', on)
    process.on('SIGTERM', on)
  })
  io.err(`serve: ${signal}: stopping\n`)
  const errors: unknown[] = []
  await server.close().catch((e) => errors.push(e))
  await mirror.close().catch((e) => errors.push(e))
  if (errors.length) throw errors[0]
  return 0
}
