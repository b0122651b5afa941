/**
 * Bitmap files that Linux md and mdadm made: 256 bytes of superblock plus the bits, no
 * page padding (e.g. 384 bytes for 1024 chunks). The md driver cannot run here, so the
 * file is built byte for byte as mdadm lays it out (the superblock fields written one by
 * one at their offsets, then the bits); `Bitmap.open` adopts it (extends it to whole
 * pages, written and synced, and says so), `mdadm -X` reads it the same before and
 * after, and the bits set through the library are the ones `mdadm -X` counts.
 * A file the kernel holds for an active array is found in /proc/mdstat's text.
 */
import test from 'ava'
import { readFileSync, statSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'

import { Bitmap, check } from '../src'
import { bitmapFilesInMdstat, mdArrayUsingBitmap } from '../src/io/md-arrays'
import { requires } from './helpers/env'
import { examineBitmap, readDisk } from './helpers/mdadm'
import { diskTempDir, removeDir } from './helpers/tmp'

const dir = diskTempDir('md-bitmap-adopt-')
test.after.always(() => removeDir(dir))

const withMdadm = requires(['mdadm'])

const CHUNK = 64 * 1024
const CHUNKS = 1024

/** A bitmap file as mdadm writes it: superblock, then ⌈chunks/8⌉ bytes of bits, nothing after. */
function mdadmLayout(path: string, dirty: number[]): void {
  const bitBytes = Math.ceil(CHUNKS / 8)
  const file = Buffer.alloc(256 + bitBytes)
  file.writeUInt32LE(0x6d746962, 0) // magic "bitm"
  file.writeUInt32LE(4, 4) // version 4: bits little-endian
  Buffer.from('0123456789abcdeffedcba9876543210', 'hex').copy(file, 8) // uuid
  file.writeBigUInt64LE(20n, 24) // events
  file.writeBigUInt64LE(20n, 32) // events_cleared
  file.writeBigUInt64LE(BigInt((CHUNKS * CHUNK) / 512), 40) // sync_size in sectors
  file.writeUInt32LE(0, 48) // state
  file.writeUInt32LE(CHUNK, 52) // chunksize
  file.writeUInt32LE(5, 56) // daemon_sleep
  file.writeUInt32LE(0, 60) // write_behind
  for (const c of dirty) file[256 + (c >> 3)] |= 1 << (c & 7)
  writeFileSync(path, file)
}

withMdadm('Bitmap.open adopts a 384-byte mdadm-layout file: extended to whole pages, mdadm -X reads it the same, and counts the bits set through the library', async (t) => {
  const path = join(dir, 'md0.bitmap')
  mdadmLayout(path, [7, 300])
  t.is(statSync(path).size, 384)
  const before = examineBitmap(path)
  t.is(before.bits, CHUNKS)
  t.is(before.dirty, 2)

  const b = await Bitmap.open(path)
  t.deepEqual(b.opened, { pin: null, extended: { from: 384, to: 4096 } })
  t.is(statSync(path).size, 4096)
  const report = await check(path)
  t.true(report.fileModeOk, 'whole pages, no hole, no unwritten extent')
  t.deepEqual(b.neededChunks(), [7, 300], 'its bits are loaded as needing resync')
  t.is(examineBitmap(path).text, before.text, 'mdadm -X reads the adopted file exactly as before')

  // Bits set through the library: two writes left in flight.
  await b.startWrite(100 * CHUNK, 512)
  await b.startWrite(1023 * CHUNK, CHUNK)
  await b.close()
  const after = examineBitmap(path)
  t.is(after.dirty, 4)
  t.is(after.bits, CHUNKS)
  t.deepEqual(readDisk(path).dirtyList(CHUNKS), [7, 100, 300, 1023])

  // A second open finds whole pages: nothing to do.
  const again = await Bitmap.open(path)
  t.is(again.opened.extended, null)
  await again.close()
})

test('a file short of its bits is not adopted: ESHORTFILE, and the file is left as it was', async (t) => {
  const path = join(dir, 'truncated.bitmap')
  mdadmLayout(path, [])
  writeFileSync(path, readFileSync(path).subarray(0, 300))
  const e = await t.throwsAsync(Bitmap.open(path))
  t.is((e as { code?: string }).code, 'ESHORTFILE')
  t.is(statSync(path).size, 300, 'nothing was written')
})

test('a bitmap the md driver holds for an active array is found in /proc/mdstat (its "file:" line)', async (t) => {
  const path = join(dir, 'held.bitmap')
  mdadmLayout(path, [])
  const mdstat = [
    'Personalities : [raid1] ',
    'md127 : active raid1 loop1[1] loop0[0]',
    '      65472 blocks super 1.2 [2/2] [UU]',
    `      bitmap: 1/1 pages [4KB], 64KB chunk, file: ${path}`,
    '',
    'md1 : active raid1 loop3[1] loop2[0]',
    '      65472 blocks super 1.2 [2/2] [UU]',
    '      bitmap: 0/1 pages [0KB], 65536KB chunk',
    '',
    'unused devices: <none>',
    '',
  ].join('\n')
  t.deepEqual(bitmapFilesInMdstat(mdstat), [{ array: 'md127', file: path }])
  const text = join(dir, 'mdstat')
  writeFileSync(text, mdstat)
  t.is(await mdArrayUsingBitmap(path, text), 'md127')
  t.is(await mdArrayUsingBitmap(join(dir, 'other.bitmap'), text), null)
  // This machine's own /proc/mdstat (no md driver, or no array using the file).
  t.is(await mdArrayUsingBitmap(path), null)
})
