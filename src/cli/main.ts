/**
 * The `md-bitmap` command: argument dispatch, help, and the one-line failures with
 * documented exit statuses (see `errors.ts` for the table).
 *
 *   md-bitmap create FILE --size 10G --chunk 64M [--delay 5] [--write-behind 256] [--uuid U] [--device-mode]
 *   md-bitmap examine FILE... [--json]
 *   md-bitmap extents FILE [--json]
 *   md-bitmap dirty FILE [--json]
 *   md-bitmap resync --bitmap FILE [--json]
 *   md-bitmap mirror create|detail|fail|remove|re-add|add|check|track|checkpoint|untrack --bitmap FILE ...
 *   md-bitmap serve --bitmap FILE (--port N [--host ADDR] | --socket PATH) [--export NAME]
 *   md-bitmap demo
 *
 * @internal
 * @module
 */
import { create, HELP as CREATE_HELP } from './create'
import { demo, HELP as DEMO_HELP } from './demo'
import { dirty, HELP as DIRTY_HELP } from './dirty'
import { describe, errorLine, EXIT_TABLE, usage } from './errors'
import { examine, HELP as EXAMINE_HELP } from './examine'
import { extents, HELP as EXTENTS_HELP } from './extents'
import { processIo, type Io } from './io'
import { mirror, HELP as MIRROR_HELP } from './mirror'
import { resync, HELP as RESYNC_HELP } from './resync'
import { serve, HELP as SERVE_HELP } from './serve'

type Command = (argv: string[], io: Io) => Promise<number>

const COMMANDS: Record<string, { run: Command; help: string; summary: string }> = {
  create: { run: create, help: CREATE_HELP, summary: 'create a bitmap file (--size, --chunk, ...)' },
  examine: { run: examine, help: EXAMINE_HELP, summary: 'print what mdadm --examine-bitmap prints for a bitmap file' },
  extents: { run: extents, help: EXTENTS_HELP, summary: "a file's extent map, and whether file and device mode can use it" },
  dirty: { run: dirty, help: DIRTY_HELP, summary: 'the dirty byte ranges of a bitmap file (for incremental backups)' },
  mirror: { run: mirror, help: MIRROR_HELP, summary: 'create a mirror, see its state, fail/remove/re-add/add members, check (mdadm-style)' },
  resync: { run: resync, help: RESYNC_HELP, summary: 'resync a mirror after a crash: copy the dirty chunks' },
  serve: { run: serve, help: SERVE_HELP, summary: 'serve a mirror as an NBD export (--port N or --socket PATH)' },
  demo: { run: demo, help: DEMO_HELP, summary: 'crash a mirror under load, resync the dirty chunks, verify (~10 s)' },
}

export const HELP = `Usage: md-bitmap COMMAND [options]

Write-intent bitmaps compatible with Linux md, and write-behind mirrors.

Commands:
${Object.entries(COMMANDS)
  .map(([name, c]) => `  ${name.padEnd(9)} ${c.summary}`)
  .join('\n')}

Run \`md-bitmap COMMAND --help\` for a command's options, \`md-bitmap --version\` for
the version. Sizes take K, M, G, T suffixes (powers of 1024). Reports go to stdout,
progress and warnings to stderr.

${EXIT_TABLE}`

/** Runs the command line `argv` (without node and the script); resolves to the exit status. */
export async function main(argv: string[], io: Io = processIo()): Promise<number> {
  try {
    const [name, ...rest] = argv
    if (name === undefined || name === '--help' || name === '-h' || name === 'help') {
      if (name === 'help' && rest[0]) {
        if (!COMMANDS[rest[0]]) throw usage(`no help for "${rest[0]}": not a command (commands: ${Object.keys(COMMANDS).join(', ')})`)
        io.out(COMMANDS[rest[0]].help + '\n')
        return 0
      }
      if (name === undefined) {
        io.err(HELP + '\n')
        return 2
      }
      io.out(HELP + '\n')
      return 0
    }
    if (name === '--version' || name === '-V') {
      // eslint-disable-next-line @typescript-eslint/no-require-imports
      io.out(`md-bitmap ${(require('../../package.json') as { version: string }).version}\n`)
      return 0
    }
    const command = COMMANDS[name]
    if (!command) throw usage(`unknown command "${name}" (commands: ${Object.keys(COMMANDS).join(', ')})`)
    return await command.run(rest, io)
  } catch (e) {
    io.err(errorLine(e) + '\n')
    return describe(e).exitCode
  }
}

/** The bin entry: runs `process.argv` and exits with the command's status. */
export function run(): void {
  let settled = false
  process.on('exit', (code) => {
    // The event loop drained with the command still waiting: a bug, never a success.
    if (!settled && code === 0) {
      process.stderr.write('md-bitmap: EINTERNAL: the command stopped before finishing (nothing left to wait for); please report this\n')
      process.exitCode = 1
    }
  })
  main(process.argv.slice(2)).then(
    (code) => {
      settled = true
      process.exitCode = code
      // Nothing should keep the process alive past the command (timers are unref'd,
      // but a stray handle must not hang a script).
      setTimeout(() => process.exit(code), 2000).unref()
    },
    (e) => {
      settled = true
      process.stderr.write(errorLine(e) + '\n')
      process.exit(1)
    },
  )
}
