/**
 * `md-bitmap dirty FILE`: the byte ranges of the data whose chunks are dirty, read from
 * the bitmap file as it is on disk (a write-intent bitmap, or a changed-block tracking
 * bitmap: the same format): what an incremental backup must copy.
 *
 * @internal
 * @module
 */
import { STATE_STALE, mdadmUuid } from '../bitmap/superblock'
import { dirtyRanges, readBitmapFile, type ByteRange } from './bitmap-file'
import { parse } from './args'
import { bytes, percent, table } from './format'
import type { Io } from './io'

export const HELP = `Usage: md-bitmap dirty FILE [--json]

Lists the byte ranges of the data whose chunks are dirty in the bitmap file FILE
(adjacent chunks merged, the last chunk cut at the end of the data): the ranges that
may differ between members, or have changed since the bits were last cleared — what
an incremental backup or a resync must copy. The file is only read.

FILE is a mirror's write-intent bitmap, or one of its changed-block tracking
bitmaps (\`md-bitmap mirror track\`): then the ranges are those changed since its
last checkpoint, and a running mirror may hold it open meanwhile.

A STALE bitmap (out of date) cannot tell which chunks changed: then the whole data is
reported dirty, and "stale" is true in --json.

Options:
  --json      {"ranges": [{"offset", "length"}], "dirtyChunks", "bytes", ...}
  -h, --help  this help`

export async function dirty(argv: string[], io: Io): Promise<number> {
  const { values, positionals } = parse('dirty', argv, { json: { type: 'boolean' } }, { min: 1, max: 1, names: 'a bitmap FILE' })
  if (values.help) {
    io.out(HELP + '\n')
    return 0
  }
  const path = positionals[0]
  const f = await readBitmapFile(path)
  const size = f.sb.syncSize * 512
  const stale = (f.rawState & STATE_STALE) !== 0
  const found = dirtyRanges(f)
  const ranges: ByteRange[] = stale ? [{ offset: 0, length: size }] : found.ranges
  const dirtyChunks = stale ? f.chunks : found.chunks.length
  const total = ranges.reduce((n, r) => n + r.length, 0)
  if (values.json) {
    io.out(
      JSON.stringify(
        {
          file: path,
          uuid: mdadmUuid(f.sb.uuid),
          events: f.sb.events.toString(),
          size,
          chunkSize: f.sb.chunkSize,
          chunks: f.chunks,
          stale,
          dirtyChunks,
          bitsSet: found.chunks.length,
          bytes: total,
          ranges,
        },
        null,
        2,
      ) + '\n',
    )
    return 0
  }
  const lines = [
    `${path}: ${dirtyChunks} of ${f.chunks} chunks dirty (${bytes(f.sb.chunkSize)} each), ${ranges.length} range${ranges.length === 1 ? '' : 's'}, ${total} bytes (${bytes(total)}, ${percent(total, size)} of ${bytes(size)})`,
  ]
  if (stale) lines.push('the bitmap is STALE (out of date): every chunk must be treated as dirty')
  if (ranges.length) {
    const rows = [['offset', 'length', 'end']]
    for (const r of ranges) rows.push([String(r.offset), String(r.length), String(r.offset + r.length)])
    lines.push(...table(rows))
  }
  io.out(lines.join('\n') + '\n')
  return 0
}
