/**
 * `md-bitmap mirror SUBCOMMAND`: a mirror's life cycle from the shell, the way mdadm
 * runs arrays. One file per subcommand; `target.ts` holds what they share (naming the
 * mirror, acting on it live through its control socket or by opening it).
 *
 * @internal
 * @module
 */
import { usage } from '../errors'
import type { Io } from '../io'
import { add, HELP as ADD_HELP } from './add'
import { check, HELP as CHECK_HELP } from './check'
import { create, HELP as CREATE_HELP } from './create'
import { detail, HELP as DETAIL_HELP } from './detail'
import { fail, HELP as FAIL_HELP } from './fail'
import { reAdd, HELP as RE_ADD_HELP } from './re-add'
import { remove, HELP as REMOVE_HELP } from './remove'

const SUBCOMMANDS: Record<string, { run: (argv: string[], io: Io) => Promise<number>; help: string; summary: string }> = {
  create: { run: create, help: CREATE_HELP, summary: 'create a mirror: bitmap, metadata, member files' },
  detail: { run: detail, help: DETAIL_HELP, summary: 'state, dirty chunks, progress and members (as mdadm --detail)' },
  fail: { run: fail, help: FAIL_HELP, summary: 'mark a member faulty' },
  remove: { run: remove, help: REMOVE_HELP, summary: 'take a member out (--forget: drop its slot)' },
  're-add': { run: reAdd, help: RE_ADD_HELP, summary: 'bring a member back; copies only the dirty chunks when it can' },
  add: { run: add, help: ADD_HELP, summary: 'add a member and copy everything to it' },
  check: { run: check, help: CHECK_HELP, summary: 'compare the members (scrub); --repair fixes differences' },
}

export const HELP = `Usage: md-bitmap mirror SUBCOMMAND --bitmap FILE [options]

A mirror's life cycle, as mdadm runs arrays. When a process holds the mirror open
(\`md-bitmap serve\`, or an application that opened it with a control socket),
detail, fail, remove, re-add, add and check act on it live through its control
socket (FILE.mirror.sock, owner-only); otherwise they open the mirror themselves.

Subcommands:
${Object.entries(SUBCOMMANDS)
  .map(([name, c]) => `  ${name.padEnd(8)} ${c.summary}`)
  .join('\n')}

Run \`md-bitmap mirror SUBCOMMAND --help\` for a subcommand's options.`

export async function mirror(argv: string[], io: Io): Promise<number> {
  const [name, ...rest] = argv
  if (name === undefined || name === '--help' || name === '-h') {
    io.out(HELP + '\n')
    return name === undefined ? 2 : 0
  }
  const sub = SUBCOMMANDS[name]
  if (!sub) throw usage(`unknown mirror subcommand "${name}" (subcommands: ${Object.keys(SUBCOMMANDS).join(', ')})`, 'mirror')
  return sub.run(rest, io)
}
