/**
 * `md-bitmap mirror re-add --member N [--path PATH]`: brings a faulty or removed member
 * back and recovers it, as `mdadm --re-add`.
 *
 * @internal
 * @module
 */
import type { RecoveryResult } from '../../control/operations'
import { bytes } from '../format'
import type { Io } from '../io'
import { memberPath } from '../../mirror/membership'
import { act, memberOption, parseMirror, report, TARGET_HELP } from './target'

export const HELP = `Usage: md-bitmap mirror re-add --bitmap FILE --member N [--path PATH] [--json]

Brings faulty or removed member N back (at PATH if given) and recovers it
(Mirror.reAdd): only the chunks dirty in the bitmap when nothing it needs was cleared
since it left ('bitmap'), else every chunk ('full'). Progress goes to stderr. The
command returns once the member is in sync.

JSON: { index, recovery: 'bitmap' | 'full', chunksCopied, bytesCopied }

Options:
  --member N          the member's slot (as \`mirror detail\` numbers them)
  --path PATH         the member's new path (a replacement disk)
${TARGET_HELP}`

export async function reAdd(argv: string[], io: Io): Promise<number> {
  const values = parseMirror('re-add', HELP, argv, { member: { type: 'string' }, path: { type: 'string' } }, io)
  if (!values) return 0
  const member = memberOption(values, 're-add')
  const r = (await act(values, { op: 're-add', member, path: values.path === undefined ? undefined : memberPath(values.path as string) }, io, 're-add:')) as RecoveryResult
  report(values, io, r, () => recoveryLine(r))
  return 0
}

/** The text report of a recovery (re-add, add). */
export function recoveryLine(r: RecoveryResult): string {
  return `member ${r.index} is in sync: ${r.recovery} recovery copied ${r.chunksCopied} chunk${r.chunksCopied === 1 ? '' : 's'} (${bytes(r.bytesCopied)})`
}
