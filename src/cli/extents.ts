/**
 * `md-bitmap extents FILE`: where a file's blocks are (FIEMAP, or FIBMAP), and whether
 * a bitmap could live there in file mode and in device mode, each problem named by its
 * code.
 *
 * @internal
 * @module
 */
import { check } from '../io/file-check'
import { parse } from './args'
import { table } from './format'
import type { Io } from './io'

export const HELP = `Usage: md-bitmap extents FILE [--json]

Lists the extents of FILE (logical offset, physical offset on the device, length,
flags) from FIEMAP (FIBMAP where FIEMAP is missing) and gives the verdict for keeping
a bitmap in it:
  file mode    the file is written in place through its filesystem (the default)
  device mode  its blocks are written directly on the block device under it
Each problem found is named by its code, e.g. EEXTENT_HOLE (blocks never allocated),
EEXTENT_UNWRITTEN, EEXTENT_SHARED (reflink), EDEVICE_NOT_PHYSICAL (btrfs),
EFIEMAP_UNSUPPORTED (tmpfs). Works on any regular file, not only bitmaps.

The exit status is 0 whenever the report is printed, whatever the verdict; scripts
read fileModeOk / deviceModeOk from --json.

Options:
  --json      the extent map, the verdicts and the problems as JSON
  -h, --help  this help`

export async function extents(argv: string[], io: Io): Promise<number> {
  const { values, positionals } = parse('extents', argv, { json: { type: 'boolean' } }, { min: 1, max: 1, names: 'a FILE' })
  if (values.help) {
    io.out(HELP + '\n')
    return 0
  }
  const path = positionals[0]
  const info = await check(path)
  if (values.json) {
    io.out(JSON.stringify({ file: path, ...info }, null, 2) + '\n')
    return 0
  }
  const lines: string[] = []
  const where = info.device ? ` on ${info.device}` : ''
  lines.push(`${path}: ${info.fileSize} bytes, ${info.fsType}${where}`)
  const map = info.map
  if (map) {
    lines.push(`extents (${map.source}, block size ${map.blockSize}): ${map.extents.length}`)
    const rows = [['logical', 'physical', 'length', 'flags']]
    for (const e of map.extents) rows.push([String(e.logical), String(e.physical), String(e.length), e.flags.join(',') || '-'])
    if (map.extents.length) lines.push(...table(rows).map((l) => '  ' + l))
  } else {
    lines.push('extents: unknown (the filesystem cannot map its blocks)')
  }
  const blockers = (mode: 'file' | 'device') =>
    info.problems.filter((p) => (mode === 'file' ? p.blocksFileMode : p.blocksDeviceMode)).map((p) => p.code)
  const verdict = (ok: boolean, mode: 'file' | 'device') => (ok ? 'ok' : `refused (${[...new Set(blockers(mode))].join(', ') || 'unknown reason'})`)
  lines.push(`file mode:   ${verdict(info.fileModeOk, 'file')}`)
  lines.push(`device mode: ${verdict(info.deviceModeOk, 'device')}`)
  if (info.problems.length) {
    lines.push(`problems: ${info.problems.length}`)
    for (const p of info.problems) {
      const blocks = [p.blocksFileMode ? 'file mode' : '', p.blocksDeviceMode ? 'device mode' : ''].filter(Boolean).join(' and ')
      lines.push(`  ${p.code}: ${p.message}${blocks ? ` [blocks ${blocks}]` : ' [warning only]'}`)
    }
  } else {
    lines.push('problems: none')
  }
  io.out(lines.join('\n') + '\n')
  return 0
}
