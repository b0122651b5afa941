/**
 * `md-bitmap mirror fail --member N`: marks a member faulty, as `mdadm --fail`.
 *
 * @internal
 * @module
 */
import type { MemberResult } from '../../control/operations'
import type { Io } from '../io'
import { act, memberOption, parseMirror, report, TARGET_HELP } from './target'

export const HELP = `Usage: md-bitmap mirror fail --bitmap FILE --member N [--json]

Marks member N faulty, as \`mdadm --fail\` does: the mirror goes on degraded, nothing
is written to that member any more, and no bit is cleared, so \`mirror re-add\` later
copies only the chunks written meanwhile. The last member in sync cannot be failed.

JSON: { index, path, state }

Options:
  --member N          the member's slot (as \`mirror detail\` numbers them)
${TARGET_HELP}`

export async function fail(argv: string[], io: Io): Promise<number> {
  const values = parseMirror('fail', HELP, argv, { member: { type: 'string' } }, io)
  if (!values) return 0
  const member = memberOption(values, 'fail')
  const r = (await act(values, { op: 'fail', member }, io, 'fail:')) as MemberResult
  report(values, io, r, () => `member ${r.index} (${r.path}) is ${r.state}; the mirror is degraded`)
  return 0
}
