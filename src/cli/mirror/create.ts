/**
 * `md-bitmap mirror create`: creates a mirror (its bitmap, metadata and missing member
 * files), as `mdadm --create`.
 *
 * @internal
 * @module
 */
import { Mirror } from '../../mirror/mirror'
import { openNbdOrFileMember } from '../../nbd/client'
import { parseInteger, parseSize } from '../args'
import { usage } from '../errors'
import { bytes } from '../format'
import type { Io } from '../io'
import { formatDetail } from './detail'
import { describeMirror } from '../../control/detail'
import { parseMirror, report, TARGET_HELP } from './target'

export const HELP = `Usage: md-bitmap mirror create --bitmap FILE --size SIZE --chunk SIZE --member PATH... [options]

Creates a mirror: the bitmap FILE, its metadata FILE.mirror.json, and every member
file that does not exist yet (sparse, all zeros). The slots are the --member paths in
order, then the --write-mostly ones. Unless every member was created here or
--assume-clean is given, every chunk is marked for the first \`md-bitmap resync\`.
Prints the new mirror's detail (as \`mirror detail\`).

Options:
  --size SIZE         bytes mirrored (K, M, G, T suffixes; a multiple of 512)
  --chunk SIZE        bytes per bitmap bit (a power of two, at least 4K)
  --member PATH       a member (repeatable): a file, a block device or an NBD URL
  --write-mostly PATH a write-mostly member (repeatable): read only when no other
                      member can serve, written behind with --write-behind
  --write-behind N    most write-behind writes in flight (0 to 16383; default 0: off)
  --delay S           seconds between bitmap daemon passes (default 5)
  --assume-clean      take existing members as identical (no first resync)
  --force             replace an existing bitmap and metadata
${TARGET_HELP}`

export async function create(argv: string[], io: Io): Promise<number> {
  const values = parseMirror(
    'create',
    HELP,
    argv,
    {
      size: { type: 'string' },
      chunk: { type: 'string' },
      member: { type: 'string', multiple: true },
      'write-mostly': { type: 'string', multiple: true },
      'write-behind': { type: 'string' },
      delay: { type: 'string' },
      'assume-clean': { type: 'boolean' },
      force: { type: 'boolean' },
    },
    io,
  )
  if (!values) return 0
  const cmd = 'mirror create'
  if (values.size === undefined) throw usage('mirror create needs --size SIZE', cmd)
  if (values.chunk === undefined) throw usage('mirror create needs --chunk SIZE', cmd)
  const fast = (values.member as unknown as string[] | undefined) ?? []
  const slow = (values['write-mostly'] as unknown as string[] | undefined) ?? []
  if (fast.length + slow.length === 0) throw usage('mirror create needs at least one --member PATH', cmd)
  const mirror = await Mirror.create({
    bitmap: (values.bitmap as string | undefined) ?? null,
    metadata: values.metadata as string | undefined,
    size: parseSize(values.size as string, '--size', cmd),
    chunkSize: parseSize(values.chunk as string, '--chunk', cmd),
    members: [...fast.map((path) => ({ path })), ...slow.map((path) => ({ path, writeMostly: true }))],
    writeBehind: values['write-behind'] === undefined ? undefined : parseInteger(values['write-behind'] as string, '--write-behind', cmd, 0, 16383),
    daemonSleep: values.delay === undefined ? undefined : parseInteger(values.delay as string, '--delay', cmd, 1, 86400),
    assumeClean: values['assume-clean'] === true,
    overwrite: values.force === true,
    openMember: openNbdOrFileMember,
    bitmapMode: values['device-mode'] ? 'device' : 'file',
    allowVolatile: values['allow-volatile'] === true,
  })
  let detail
  try {
    detail = describeMirror(mirror)
  } finally {
    await mirror.close()
  }
  const needsResync = detail.dirtyChunks > 0
  report(values, io, detail, () =>
    [
      `created a mirror of ${bytes(detail.size)} over ${detail.members.length} member${detail.members.length === 1 ? '' : 's'}`,
      formatDetail(mirror.metadataPath, detail),
      ...(needsResync ? ['', 'the members held data: run `md-bitmap resync --bitmap FILE` to make them identical'] : []),
    ].join('\n'),
  )
  return 0
}
