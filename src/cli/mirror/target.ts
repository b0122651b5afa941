/**
 * What the `md-bitmap mirror` subcommands share: the options that name a mirror, and
 * acting on it, live through the control socket of the process that holds it open, or
 * by opening it here when nobody does (then closing it cleanly).
 *
 * @internal
 * @module
 */
import { resolve } from 'node:path'
import { requestControl } from '../../control/client'
import type { OperationProgress } from '../../control/detail'
import { perform } from '../../control/operations'
import type { ControlRequest } from '../../control/protocol'
import type { MdBitmapError } from '../../errors'
import { metadataPathFor } from '../../mirror/metadata'
import { Mirror } from '../../mirror/mirror'
import { controlSocketPathFor } from '../../mirror/owner'
import { openNbdOrFileMember } from '../../nbd/client'
import { parse, parseInteger, type OptionSpec, type Parsed } from '../args'
import { usage } from '../errors'
import type { Io } from '../io'
import { progressReporter } from '../progress'

/** The options every `mirror` subcommand takes. */
export const TARGET_OPTIONS: Record<string, OptionSpec> = {
  bitmap: { type: 'string' },
  metadata: { type: 'string' },
  json: { type: 'boolean' },
  'device-mode': { type: 'boolean' },
  'allow-volatile': { type: 'boolean' },
}

/** Their help lines. */
export const TARGET_HELP = `  --bitmap FILE       the mirror's bitmap file (required unless --metadata is given)
  --metadata FILE     the mirror's metadata file, when not FILE.mirror.json (or for
                      a mirror without a bitmap)
  --json              print the report as JSON
  --device-mode       when opening the mirror here: the bitmap in device mode (root)
  --allow-volatile    when opening the mirror here: allow a bitmap on tmpfs
  -h, --help          this help`

/** Parses a subcommand's options; null when `--help` was given (and printed). */
export function parseMirror(sub: string, help: string, argv: string[], options: Record<string, OptionSpec>, io: Io): Parsed['values'] | null {
  const command = `mirror ${sub}`
  const { values } = parse(command, argv, { ...TARGET_OPTIONS, ...options }, { min: 0, max: 0, names: '' })
  if (values.help) {
    io.out(help + '\n')
    return null
  }
  if (!values.bitmap && !values.metadata) throw usage(`${command} needs --bitmap FILE (or --metadata FILE)`, command)
  return values
}

/** The `--member N` option of `mirror SUB`: required, a slot number. */
export function memberOption(values: Parsed['values'], sub: string): number {
  if (values.member === undefined) throw usage(`mirror ${sub} needs --member N`, `mirror ${sub}`)
  return parseInteger(values.member as string, '--member', `mirror ${sub}`, 0, 1_000_000)
}

/** The metadata path the options name. */
export function metadataPathOf(values: Parsed['values']): string {
  return resolve((values.metadata as string | undefined) ?? metadataPathFor(values.bitmap as string))
}

/**
 * Runs `req` on the mirror: through its control socket when a process holds it open
 * and listens there, else by `unheld` if given, else on the mirror opened here.
 * Progress goes to stderr unless `--json`. Resolves with the operation's result.
 */
export async function act(values: Parsed['values'], req: ControlRequest, io: Io, label: string, unheld?: () => Promise<unknown>): Promise<unknown> {
  const metadataPath = metadataPathOf(values)
  const reporter = values.json ? undefined : progressReporter(io, label)
  const onProgress = (p: OperationProgress) =>
    reporter?.update({ chunksDone: p.chunksDone, chunksTotal: p.chunksTotal, bytesCopied: p.bytesDone, bytesTotal: p.bytesTotal, rate: p.rate, elapsedMs: 0 })
  try {
    try {
      return await requestControl(controlSocketPathFor(metadataPath), req, (p) => onProgress(p as unknown as OperationProgress))
    } catch (e) {
      const code = (e as MdBitmapError).code
      // Nobody listens (no holder, or one killed): open the mirror here.
      if (code !== 'ENOENT' && code !== 'ECONNREFUSED') throw e
    }
    if (unheld) return await unheld()
    const mirror = await Mirror.open({
      bitmap: values.bitmap as string | undefined,
      metadata: values.metadata as string | undefined,
      openMember: openNbdOrFileMember,
      bitmapMode: values['device-mode'] ? 'device' : 'file',
      allowVolatile: values['allow-volatile'] === true,
    })
    try {
      return await perform(mirror, req, onProgress)
    } finally {
      await mirror.close()
    }
  } finally {
    reporter?.done()
  }
}

/** Prints `json` with `--json`, else `text`. */
export function report(values: Parsed['values'], io: Io, json: unknown, text: () => string): void {
  io.out(values.json ? JSON.stringify(json, null, 2) + '\n' : text() + '\n')
}
