/**
 * `md-bitmap mirror remove --member N [--forget]`: takes a member out, as `mdadm --remove`.
 *
 * @internal
 * @module
 */
import type { MemberResult } from '../../control/operations'
import type { Io } from '../io'
import { act, memberOption, parseMirror, report, TARGET_HELP } from './target'

export const HELP = `Usage: md-bitmap mirror remove --bitmap FILE --member N [--forget] [--json]

Takes member N out of the mirror (Mirror.removeMember). Its slot stays, marked
removed, so \`mirror re-add\` can bring it back copying only the chunks written
meanwhile; --forget drops the slot for good (the members after it move up one). The
last member in sync cannot be removed, nor any member while a recovery runs.

JSON: { index, path, state, forgotten? }

Options:
  --member N          the member's slot (as \`mirror detail\` numbers them)
  --forget            drop the slot for good
${TARGET_HELP}`

export async function remove(argv: string[], io: Io): Promise<number> {
  const values = parseMirror('remove', HELP, argv, { member: { type: 'string' }, forget: { type: 'boolean' } }, io)
  if (!values) return 0
  const member = memberOption(values, 'remove')
  const r = (await act(values, { op: 'remove', member, forget: values.forget === true }, io, 'remove:')) as MemberResult
  report(values, io, r, () => (r.forgotten ? `member ${r.index} (${r.path}) removed and its slot dropped` : `member ${r.index} (${r.path}) is ${r.state}; \`mirror re-add --member ${r.index}\` brings it back`))
  return 0
}
