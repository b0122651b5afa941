/**
 * `md-bitmap mirror check [--repair] [--max-rate RATE]`: scrubs the mirror
 * ({@link Mirror.check}), as md's `check` and `repair` sync actions.
 *
 * @internal
 * @module
 */
import type { CheckReport } from '../../mirror/types'
import { parseSize } from '../args'
import { CliError, EXIT_VERIFY } from '../errors'
import { bytes } from '../format'
import type { Io } from '../io'
import { act, parseMirror, report, TARGET_HELP } from './target'

export const HELP = `Usage: md-bitmap mirror check --bitmap FILE [--repair] [--max-rate RATE] [--json]

Reads every chunk from every in-sync member (write-mostly ones included) while writes
go on, compares them, and reports the sectors (512 bytes, as md's mismatch_cnt) and
chunks that differ. With --repair, each differing chunk is copied from the resync
source to the others. Progress goes to stderr.

Exit status: 0 when the members agree or were repaired, 3 when they differ and
--repair was not given.

JSON: { mismatchSectors, mismatchedChunks, chunksChecked, bytesRead, repaired }

Options:
  --repair            copy differing chunks from the resync source to the others
  --max-rate RATE     read at most RATE bytes per second (K, M, G suffixes), so the
                      check can run under production load
${TARGET_HELP}`

export async function check(argv: string[], io: Io): Promise<number> {
  const values = parseMirror('check', HELP, argv, { repair: { type: 'boolean' }, 'max-rate': { type: 'string' } }, io)
  if (!values) return 0
  const maxRate = values['max-rate'] === undefined ? undefined : parseSize(values['max-rate'] as string, '--max-rate', 'mirror check')
  const r = (await act(values, { op: 'check', repair: values.repair === true, maxRate }, io, values.repair ? 'repair:' : 'check:')) as CheckReport
  const chunks = Array.isArray(r.mismatchedChunks) ? r.mismatchedChunks : []
  report(values, io, r, () =>
    [
      `checked ${r.chunksChecked} chunks (${bytes(r.bytesRead)} read): ${r.mismatchSectors === 1 ? '1 sector differs' : `${r.mismatchSectors} sectors differ`}` +
        (chunks.length ? ` in chunk${chunks.length === 1 ? '' : 's'} ${chunks.join(', ')}` : ''),
      ...(r.repaired && r.mismatchSectors > 0 ? ['repaired: the differing chunks were copied from the resync source'] : []),
    ].join('\n'),
  )
  if (r.mismatchSectors > 0 && !r.repaired) {
    throw new CliError('EVERIFY', `the members differ in ${r.mismatchSectors} sector${r.mismatchSectors === 1 ? '' : 's'}; run \`md-bitmap mirror check --repair\` to copy the resync source over the others`, EXIT_VERIFY)
  }
  return 0
}
