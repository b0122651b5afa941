/**
 * `md-bitmap mirror add --path PATH [--write-mostly]`: adds a member and recovers it
 * fully, as `mdadm --add`.
 *
 * @internal
 * @module
 */
import type { RecoveryResult } from '../../control/operations'
import { usage } from '../errors'
import type { Io } from '../io'
import { memberPath } from '../../mirror/membership'
import { recoveryLine } from './re-add'
import { act, parseMirror, report, TARGET_HELP } from './target'

export const HELP = `Usage: md-bitmap mirror add --bitmap FILE --path PATH [--write-mostly] [--json]

Adds PATH as a new member (created sparse if it does not exist; an NBD URL is
reached over the network) and copies every chunk to it (Mirror.addMember). Progress
goes to stderr. The command returns once the member is in sync.

JSON: { index, recovery: 'full', chunksCopied, bytesCopied }

Options:
  --path PATH         the new member: a file, a block device or an NBD URL
  --write-mostly      read it only when no other member can serve
${TARGET_HELP}`

export async function add(argv: string[], io: Io): Promise<number> {
  const values = parseMirror('add', HELP, argv, { path: { type: 'string' }, 'write-mostly': { type: 'boolean' } }, io)
  if (!values) return 0
  if (values.path === undefined) throw usage('mirror add needs --path PATH', 'mirror add')
  const r = (await act(values, { op: 'add', path: memberPath(values.path as string), writeMostly: values['write-mostly'] === true }, io, 'add:')) as RecoveryResult
  report(values, io, r, () => recoveryLine(r))
  return 0
}
