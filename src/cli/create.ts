/**
 * `md-bitmap create FILE --size S --chunk C …`: a new bitmap file, fully written.
 *
 * @internal
 * @module
 */
import { Bitmap } from '../bitmap/bitmap'
import { MdBitmapError } from '../errors'
import { statPath } from '../io/files'
import { MAX_DAEMON_SLEEP, MAX_WRITE_BEHIND, mdadmUuid, parseUuid } from '../bitmap/superblock'
import { parse, parseInteger, parseSize } from './args'
import { usage } from './errors'
import { bytes } from './format'
import type { Io } from './io'

export const HELP = `Usage: md-bitmap create FILE --size SIZE --chunk SIZE [options]

Creates the write-intent bitmap file FILE covering SIZE bytes of data, one bit per
chunk, in the format of Linux md (\`mdadm --examine-bitmap FILE\` reads it). The file
is written in full (no holes) and synced. SIZE values take K, M, G, T suffixes
(powers of 1024): 10G, 64M, 4096.

Options:
  --size SIZE          bytes of data covered: a positive multiple of 512 (required)
  --chunk SIZE         bytes of data per bit: a power of two, 512 to 2G (required)
  --delay SECONDS      seconds between daemon passes that clear bits (default 5)
  --write-behind N     most write-behind writes in flight, 0 to ${MAX_WRITE_BEHIND} (default 0: off)
  --uuid UUID          the array's uuid: 32 hex digits, any ':' '-' '.' separators
                       (default: random)
  --device-mode        check that the file can be written on its block device
                       directly (device mode; needs root)
  --force              replace FILE if it exists
  --allow-volatile     allow a filesystem that does not survive a reboot (tmpfs)
  --json               print what was created as JSON
  -h, --help           this help`

export async function create(argv: string[], io: Io): Promise<number> {
  const { values, positionals } = parse(
    'create',
    argv,
    {
      size: { type: 'string' },
      chunk: { type: 'string' },
      delay: { type: 'string' },
      'write-behind': { type: 'string' },
      uuid: { type: 'string' },
      'device-mode': { type: 'boolean' },
      force: { type: 'boolean' },
      'allow-volatile': { type: 'boolean' },
      json: { type: 'boolean' },
    },
    { min: 1, max: 1, names: 'the bitmap FILE to create' },
  )
  if (values.help) {
    io.out(HELP + '\n')
    return 0
  }
  const path = positionals[0]
  if (values.size === undefined) throw usage('create needs --size (bytes of data the bitmap covers, e.g. --size 10G)', 'create')
  if (values.chunk === undefined) throw usage('create needs --chunk (bytes of data per bit, e.g. --chunk 64M)', 'create')
  const size = parseSize(values.size as string, '--size', 'create')
  if (size <= 0 || size % 512 !== 0) throw usage(`--size ${values.size} is ${size} bytes: it must be a positive multiple of 512`, 'create')
  const chunkSize = parseSize(values.chunk as string, '--chunk', 'create')
  if (chunkSize < 512 || chunkSize > 2 ** 31 || (chunkSize & (chunkSize - 1)) !== 0) {
    throw usage(`--chunk ${values.chunk} is ${chunkSize} bytes: it must be a power of two from 512 to 2G`, 'create')
  }
  const daemonSleep = values.delay === undefined ? 5 : parseInteger(values.delay as string, '--delay', 'create', 1, MAX_DAEMON_SLEEP)
  const writeBehind = values['write-behind'] === undefined ? 0 : parseInteger(values['write-behind'] as string, '--write-behind', 'create', 0, MAX_WRITE_BEHIND)
  let uuid: Uint8Array | undefined
  if (values.uuid !== undefined) {
    try {
      uuid = parseUuid(values.uuid as string)
    } catch {
      throw usage(`--uuid "${values.uuid}" is not a uuid: give 32 hex digits, optionally separated by ':' '-' '.'`, 'create')
    }
  }
  if (values.force) {
    const found = await statPath(path).catch(() => null)
    if (found && found.kind !== 'file') throw new MdBitmapError('ENOT_REGULAR_FILE', `${path} exists and is not a regular file; --force replaces only files`)
  }
  const bitmap = await Bitmap.create(path, {
    size,
    chunkSize,
    daemonSleep,
    writeBehind,
    uuid,
    mode: values['device-mode'] ? 'device' : 'file',
    overwrite: values.force === true,
    allowVolatile: values['allow-volatile'] === true,
  }).catch((e: MdBitmapError) => {
    if (e.code === 'EEXIST') throw new MdBitmapError('EEXIST', `${path} exists; pass --force to replace it, or pick another path`, { cause: e })
    if (e.code === 'EVOLATILE') throw new MdBitmapError('EVOLATILE', `${path} is on a filesystem that does not survive a reboot (tmpfs): after a crash nothing would say which chunks to resync; put it on a disk filesystem, or pass --allow-volatile for tests`, { cause: e })
    throw e
  })
  const st = bitmap.stats()
  const sb = bitmap.superblock
  await bitmap.close()
  const written = await statPath(path)
  if (!written) throw new MdBitmapError('ENOENT', `${path} was removed right after it was created; check what else writes to its folder`)
  const fileSize = written.size
  const info = {
    file: path,
    size,
    chunkSize,
    chunks: st.chunks,
    uuid: mdadmUuid(sb.uuid),
    daemonSleep,
    writeBehind,
    fileSize,
    mode: st.mode,
  }
  if (values.json) {
    io.out(JSON.stringify(info, null, 2) + '\n')
    return 0
  }
  io.out(
    [
      `created ${path}`,
      `  data covered  ${bytes(size)} (${size} bytes, ${size / 512} sectors)`,
      `  chunks        ${st.chunks} of ${bytes(chunkSize)}`,
      `  uuid          ${info.uuid}`,
      `  daemon        every ${daemonSleep}s`,
      `  write-behind  ${writeBehind ? `up to ${writeBehind} writes` : 'off'}`,
      `  file          ${fileSize} bytes, written in ${st.mode} mode`,
    ].join('\n') + '\n',
  )
  return 0
}
