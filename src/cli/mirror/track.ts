/**
 * `md-bitmap mirror track|checkpoint|untrack --name NAME`: changed-block tracking
 * from the shell ({@link Mirror.track}, {@link Mirror.checkpoint},
 * {@link Mirror.untrack}), live through the control socket of a running mirror or on
 * a mirror opened here.
 *
 * @internal
 * @module
 */
import { resolve } from 'node:path'
import type { CheckpointResult } from '../../control/operations'
import type { TrackedBitmapInfo, TrackingRecord } from '../../mirror/tracking'
import { parseSize, type Parsed } from '../args'
import { usage } from '../errors'
import { bytes, table } from '../format'
import type { Io } from '../io'
import { act, metadataPathOf, parseMirror, report, TARGET_HELP } from './target'

export const TRACK_HELP = `Usage: md-bitmap mirror track --bitmap FILE --name NAME [--path TRACKFILE] [--chunk-size SIZE] [--json]
       md-bitmap mirror track --bitmap FILE --list [--json]

Starts changed-block tracking under NAME: a second bitmap file, in md's format, that
records every chunk written, discarded or zeroed from now on (each bit on stable
storage before the write is acknowledged), cleared only by \`mirror checkpoint\`. It
is kept across restarts of the mirror, and \`md-bitmap serve\` offers it as the NBD
meta context qemu:dirty-bitmap:NAME (qemu-img map --image-opts …,x-dirty-bitmap=…,
nbdinfo --map=…). \`md-bitmap dirty TRACKFILE\` lists its ranges from the file.
An existing TRACKFILE of this mirror is adopted (all set if it missed writes).

JSON: { name, path, chunkSize, dirtyChunks }   (--list: a list of them)

Options:
  --name NAME         the tracking bitmap's name (letters, digits, . _ -)
  --path TRACKFILE    its file (default FILE.NAME.track beside the bitmap)
  --chunk-size SIZE   bytes per bit: the mirror's chunk size (default) or a
                      power-of-two multiple of it (K, M, G suffixes)
  --list              list the tracking bitmaps instead
${TARGET_HELP}`

export const CHECKPOINT_HELP = `Usage: md-bitmap mirror checkpoint --bitmap FILE --name NAME [--json]

Takes a checkpoint of tracking bitmap NAME: clears, at one instant and durably, the
bits of every chunk with no write in flight, and prints the ranges it cleared: what
changed since the previous checkpoint, which an incremental backup copies now
(writes in flight keep their bits and are copied next time too). Keep the list until
the copy is done: the bitmap no longer has it. If this command fails, the checkpoint
may have been taken without its list reaching you: take the next backup in full.

JSON: { name, bytes, ranges: [{ offset, length }] }

Options:
  --name NAME         the tracking bitmap's name
${TARGET_HELP}`

export const UNTRACK_HELP = `Usage: md-bitmap mirror untrack --bitmap FILE --name NAME [--json]

Stops tracking NAME: the mirror forgets it and closes its file, which is kept (tracked
again later, it comes back with every bit set: it missed writes).

JSON: { name, path }

Options:
  --name NAME         the tracking bitmap's name
${TARGET_HELP}`

/** The `--name NAME` option: required. */
function nameOption(values: Parsed['values'], sub: string): string {
  if (typeof values.name !== 'string' || !values.name) throw usage(`mirror ${sub} needs --name NAME`, `mirror ${sub}`)
  return values.name
}

/** Lines listing `ranges` as a table under a summary. */
function rangeLines(summary: string, ranges: { offset: number; length: number }[]): string {
  const rows = [['offset', 'length', 'end'], ...ranges.map((r) => [String(r.offset), String(r.length), String(r.offset + r.length)])]
  return [summary, ...(ranges.length ? table(rows) : [])].join('\n')
}

export async function track(argv: string[], io: Io): Promise<number> {
  const values = parseMirror('track', TRACK_HELP, argv, { name: { type: 'string' }, path: { type: 'string' }, 'chunk-size': { type: 'string' }, list: { type: 'boolean' } }, io)
  if (!values) return 0
  if (values.list) {
    const list = (await act(values, { op: 'tracked' }, io, 'track:')) as TrackedBitmapInfo[]
    report(values, io, list, () => (list.length ? list.map((i) => `${i.name}: ${i.path}, ${i.dirtyChunks} chunks changed (${bytes(i.chunkSize)} each)`).join('\n') : 'no tracking bitmap'))
    return 0
  }
  const name = nameOption(values, 'track')
  const base = values.bitmap ? resolve(values.bitmap as string) : metadataPathOf(values)
  const path = resolve((values.path as string | undefined) ?? `${base}.${name}.track`)
  const chunkSize = values['chunk-size'] === undefined ? undefined : parseSize(values['chunk-size'] as string, '--chunk-size', 'mirror track')
  const r = (await act(values, { op: 'track', name, path, chunkSize }, io, 'track:')) as TrackedBitmapInfo
  report(values, io, r, () => `tracking "${r.name}" in ${r.path} (${bytes(r.chunkSize)} per bit, ${r.dirtyChunks} chunks set); NBD context qemu:dirty-bitmap:${r.name}`)
  return 0
}

export async function checkpoint(argv: string[], io: Io): Promise<number> {
  const values = parseMirror('checkpoint', CHECKPOINT_HELP, argv, { name: { type: 'string' } }, io)
  if (!values) return 0
  const name = nameOption(values, 'checkpoint')
  const r = (await act(values, { op: 'checkpoint', name }, io, 'checkpoint:')) as CheckpointResult
  report(values, io, r, () => rangeLines(`checkpoint "${r.name}": ${r.ranges.length} range${r.ranges.length === 1 ? '' : 's'} changed, ${r.bytes} bytes (${bytes(r.bytes)})`, r.ranges))
  return 0
}

export async function untrack(argv: string[], io: Io): Promise<number> {
  const values = parseMirror('untrack', UNTRACK_HELP, argv, { name: { type: 'string' } }, io)
  if (!values) return 0
  const name = nameOption(values, 'untrack')
  const r = (await act(values, { op: 'untrack', name }, io, 'untrack:')) as TrackingRecord
  report(values, io, r, () => `no longer tracking "${r.name}"; ${r.path} is kept`)
  return 0
}
