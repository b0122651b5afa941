/**
 * `md-bitmap resync --bitmap FILE`: reassembles a mirror from its bitmap and metadata,
 * copies the chunks that need it, and reports what was copied. SIGINT/SIGTERM abort it
 * cleanly (the chunks not yet copied stay marked; running it again resumes).
 *
 * @internal
 * @module
 */
import { Mirror } from '../mirror/mirror'
import type { ResyncReport } from '../mirror/types'
import { lockWaitOf, parse } from './args'
import { CliError, EXIT_INTERRUPTED, usage } from './errors'
import { bytes, ms, percent, rate } from './format'
import type { Io } from './io'
import { progressReporter } from './progress'

export const HELP = `Usage: md-bitmap resync --bitmap FILE [options]

Opens the mirror whose bitmap is FILE (its metadata is FILE.mirror.json), copies
every chunk that needs it from an in-sync member to the others (after a crash: only
the chunks dirty in the bitmap), completes recovering members, closes the mirror
cleanly, and prints what was copied.

Progress goes to stderr: a bar redrawn in place on a terminal, plain lines otherwise.
Ctrl-C (SIGINT) or SIGTERM stops the resync cleanly; the chunks not yet copied stay
marked, and running resync again resumes (exit status 130).

Options:
  --bitmap FILE       the mirror's bitmap file (required unless --metadata is given)
  --metadata FILE     the mirror's metadata file, when not FILE.mirror.json (or for
                      a mirror without a bitmap)
  --device-mode       write the bitmap in device mode (needs root)
  --allow-volatile    allow a bitmap on tmpfs
  --lock-wait MS      how long to wait for the locks of an owner that was killed
                      while its last writes land (default 2000); a live owner is
                      refused at once (ELOCKED)
  --quiet             no progress
  --json              print the report as JSON
  -h, --help          this help`

export async function resync(argv: string[], io: Io): Promise<number> {
  const { values } = parse(
    'resync',
    argv,
    {
      bitmap: { type: 'string' },
      metadata: { type: 'string' },
      'device-mode': { type: 'boolean' },
      'allow-volatile': { type: 'boolean' },
      'lock-wait': { type: 'string' },
      quiet: { type: 'boolean' },
      json: { type: 'boolean' },
    },
    { min: 0, max: 0, names: '' },
  )
  if (values.help) {
    io.out(HELP + '\n')
    return 0
  }
  if (!values.bitmap && !values.metadata) throw usage('resync needs --bitmap FILE (or --metadata FILE)', 'resync')
  const mirror = await Mirror.open({
    bitmap: values.bitmap as string | undefined,
    metadata: values.metadata as string | undefined,
    bitmapMode: values['device-mode'] ? 'device' : 'file',
    allowVolatile: values['allow-volatile'] === true,
    lockWaitMs: lockWaitOf(values, 'resync'),
  })
  const abort = new AbortController()
  let interrupted: string | undefined
  const onSignal = (sig: NodeJS.Signals) => {
    interrupted = sig
    abort.abort()
  }
  process.on('SIGINT', onSignal)
  process.on('SIGTERM', onSignal)
  const quiet = values.quiet === true || values.json === true
  const progress = progressReporter(io, 'resync:')
  let report: ResyncReport
  const needed = mirror.bitmap ? mirror.bitmap.neededChunks().length : undefined
  try {
    if (!quiet) {
      const members = mirror.members
      io.out(
        [
          `mirror ${mirror.metadataPath}: ${bytes(mirror.size)} in ${Math.ceil(mirror.size / mirror.chunkSize)} chunks of ${bytes(mirror.chunkSize)}, ${members.length} members`,
          ...members.map((m) => `  member ${m.index}  ${m.state.padEnd(10)}  ${m.path}${m.writeMostly ? '  (write-mostly)' : ''}`),
          needed !== undefined ? `chunks marked for resync: ${needed}` : 'no bitmap: a resync copies everything from where it stopped',
        ].join('\n') + '\n',
      )
    }
    try {
      report = await mirror.resync({ signal: abort.signal, onProgress: quiet ? undefined : (p) => progress.update(p), progressIntervalMs: 100 })
    } finally {
      progress.done()
    }
  } catch (e) {
    await mirror.close().catch(() => {})
    if (interrupted) {
      throw new CliError('EINTERRUPTED', `resync stopped by ${interrupted}; the chunks not yet copied stay marked: run resync again to finish`, EXIT_INTERRUPTED)
    }
    throw e
  } finally {
    process.off('SIGINT', onSignal)
    process.off('SIGTERM', onSignal)
  }
  await mirror.close()
  const json = { ...report, size: mirror.size, chunkSize: mirror.chunkSize, chunksMarked: needed ?? null }
  if (values.json) {
    io.out(JSON.stringify(json, null, 2) + '\n')
    return 0
  }
  const lines =
    report.chunksCopied === 0 && report.chunksTotal === 0
      ? ['resync: nothing to copy, the members are in sync']
      : [
          `resynced ${report.chunksCopied} of ${report.chunksTotal} marked chunks: ${bytes(report.bytesCopied)} of ${bytes(mirror.size)} (${percent(report.bytesCopied, mirror.size)}) ` +
            `from member ${report.source} to member${report.targets.length === 1 ? '' : 's'} ${report.targets.join(', ') || '(none)'} in ${ms(report.durationMs)}` +
            (report.durationMs > 0 ? ` (${rate((report.bytesCopied * 1000) / report.durationMs)})` : ''),
        ]
  if (report.recovered.length) lines.push(`recovered member${report.recovered.length === 1 ? '' : 's'} ${report.recovered.join(', ')}: now in sync`)
  io.out(lines.join('\n') + '\n')
  return 0
}
