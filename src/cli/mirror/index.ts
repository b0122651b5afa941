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
import { checkpoint, CHECKPOINT_HELP, track, TRACK_HELP, untrack, UNTRACK_HELP } from './track'

const SUBCOMMANDS: Record<string, { run: (argv: string[], io: Io) => Promise<number>; help: string; summary: string }> = {
  create: { run: create, help: CREATE_HELP, summary: 'create a mirror: bitmap, metadata, member files' },
  detail: { run: detail, help: DETAIL_HELP, summary: 'state, dirty chunks, progress and members (as mdadm --detail)' },
  fail: { run: fail, help: FAIL_HELP, summary: 'mark a member faulty' },
  remove: { run: remove, help: REMOVE_HELP, summary: 'take a member out (--forget: drop its slot)' },
  're-add': { run: reAdd, help: RE_ADD_HELP, summary: 'bring a member back; copies only the dirty chunks when it can' },
  add: { run: add, help: ADD_HELP, summary: 'add a member and copy everything to it' },
  check: { run: check, help: CHECK_HELP, summary: 'compare the members (scrub); --repair fixes differences' },
  track: { run: track, help: TRACK_HELP, summary: 'start changed-block tracking under a name (--list: list them)' },
  checkpoint: { run: checkpoint, help: CHECKPOINT_HELP, summary: 'clear a tracking bitmap; prints the ranges changed since the last one' },
  untrack: { run: untrack, help: UNTRACK_HELP, summary: 'stop changed-block tracking under a name' },
}

export const HELP = `Usage: md-bitmap mirror SUBCOMMAND --bitmap FILE [options]

A mirror's life cycle, as mdadm runs arrays. When a process holds the mirror open
(\`md-bitmap serve\`, or an application that opened it with a control socket),
every subcommand but create acts on it live through its control
socket (FILE.mirror.sock, owner-only); otherwise they open the mirror themselves.

Subcommands:
${Object.entries(SUBCOMMANDS)
  .map(([name, c]) => `  ${name.padEnd(10)} ${c.summary}`)
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
