/**
 * `md-bitmap mirror detail`: what `mdadm --detail` and /proc/mdstat show of an array.
 *
 * @internal
 * @module
 */
import type { MirrorDetail } from '../../control/detail'
import { bytes, percent, rate, table } from '../format'
import type { Io } from '../io'
import { resolve } from 'node:path'
import { storedDetail } from './stored'
import { act, metadataPathOf, parseMirror, report, TARGET_HELP } from './target'

export const HELP = `Usage: md-bitmap mirror detail --bitmap FILE [--json]

Shows the mirror whose bitmap is FILE as \`mdadm --detail\` shows an array: uuid, size,
chunk size, event count, state (clean, active, degraded, resyncing, recovering), dirty
chunks, the progress of a recovery or check with its rate and ETA, and each member's
index, state, write-mostly flag, event count and path. A mirror held open by
\`md-bitmap serve\` (or an application with a control socket) is asked live; one that
nobody holds is read from its metadata and bitmap files, changing nothing.

JSON: { uuid, size, chunkSize, events, state, dirtyChunks,
        members: [{ index, path, state, writeMostly, events }], progress?,
        tracking?: [{ name, path, chunkSize?, dirtyChunks? }] }
(tracking: the changed-block tracking bitmaps, with the chunks changed since each one's
last checkpoint; a file that cannot be read is listed without its counts)

Options:
${TARGET_HELP}`

export async function detail(argv: string[], io: Io): Promise<number> {
  const values = parseMirror('detail', HELP, argv, {}, io)
  if (!values) return 0
  const metadataPath = metadataPathOf(values)
  const bitmap = values.bitmap === undefined ? undefined : resolve(values.bitmap as string)
  const d = (await act(values, { op: 'detail' }, io, 'detail:', () => storedDetail(metadataPath, bitmap))) as MirrorDetail
  report(values, io, d, () => formatDetail(metadataPath, d))
  return 0
}

/** The text report. */
export function formatDetail(metadataPath: string, d: MirrorDetail): string {
  const chunks = Math.ceil(d.size / d.chunkSize)
  const lines = [
    `${metadataPath}:`,
    `          UUID : ${d.uuid}`,
    `          Size : ${bytes(d.size)} (${d.size} bytes)`,
    `    Chunk Size : ${bytes(d.chunkSize)}`,
    `        Events : ${d.events}`,
    `         State : ${d.state}`,
    `  Dirty Chunks : ${d.dirtyChunks} of ${chunks} (${percent(d.dirtyChunks, chunks)})`,
  ]
  if (d.engine) lines.push(`    I/O Engine : ${d.engine.name}${d.engine.reason ? ` (${d.engine.reason})` : ''}`)
  const p = d.progress
  if (p) {
    const eta = p.etaSeconds === null ? 'ETA unknown' : `ETA ${p.etaSeconds} s`
    lines.push(`${(p.action[0].toUpperCase() + p.action.slice(1) + ' Status').padStart(14)} : ${percent(p.bytesDone, p.bytesTotal)} (${p.chunksDone}/${p.chunksTotal} chunks) at ${rate(p.rate)}, ${eta}`)
  }
  for (const t of d.tracking ?? []) {
    const counts = t.chunkSize === undefined || t.dirtyChunks === undefined ? 'file not readable' : `${t.dirtyChunks} of ${Math.ceil(d.size / t.chunkSize)} chunks (${bytes(t.chunkSize)} each) changed since its checkpoint`
    lines.push(`      Tracking : ${t.name}: ${counts}, ${t.path}`)
  }
  lines.push('', ...table([['Number', 'State', 'Write-mostly', 'Events', 'Path'], ...d.members.map((m) => [String(m.index), m.state, m.writeMostly ? 'yes' : 'no', String(m.events), m.path])]).map((l) => `  ${l}`))
  return lines.join('\n')
}
