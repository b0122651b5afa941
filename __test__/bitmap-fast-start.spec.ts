/**
 * Bitmap.tryStartWrite, the mirror's synchronous fast path of startWrite: it counts a
 * write only when every bit of the range is already on stable storage (its page neither
 * DIRTY nor being written) and no counter is at COUNTER_MAX; otherwise it changes
 * nothing and the caller falls back to startWrite. On real files; the on-disk checks
 * read the file with O_DIRECT (helpers/mdadm.ts readDisk), never through the library.
 */
import test from 'ava'
import { join } from 'node:path'

import { Bitmap, COUNTER_MAX, MdBitmapError } from '../src'
import { chunkCounter } from '../src/bitmap/testing'
import { readDisk } from './helpers/mdadm'
import { diskTempDir, removeDir } from './helpers/tmp'

const dir = diskTempDir('md-bitmap-fast-start-')
test.after.always(() => removeDir(dir))

const KiB = 1024
const CS = 64 * KiB
const IDLE = 86400 // daemonSleep: the timer never fires during a test
let fileNo = 0

async function newBitmap(): Promise<{ b: Bitmap; path: string }> {
  const path = join(dir, `b-${process.pid}-${fileNo++}.bitmap`)
  return { b: await Bitmap.create(path, { size: CS * 4096, chunkSize: CS, daemonSleep: IDLE }), path }
}

test('a clean chunk: false, nothing counted, nothing written; once startWrite made the bit durable: true, counted, no page write', async (t) => {
  const { b, path } = await newBitmap()
  try {
    const before = b.stats().pagesWritten
    t.false(b.tryStartWrite(0, 4096), 'the bit is not set: the caller must wait for startWrite')
    t.is(chunkCounter(b, 0), 0, 'nothing counted')
    t.is(b.stats().pagesWritten, before, 'nothing written')
    t.false(readDisk(path).bit(0))

    await b.startWrite(0, 4096)
    t.true(readDisk(path).bit(0), 'startWrite put the bit on disk')
    const written = b.stats().pagesWritten
    t.true(b.tryStartWrite(512, 512), 'the bit is on disk: no wait')
    t.true(b.tryStartWrite(0, CS, true), 'the whole chunk, as a behind write')
    t.is(chunkCounter(b, 0), 2 + 3, 'three writes in flight on chunk 0')
    t.is(b.behindWrites, 1)
    t.is(b.stats().pagesWritten, written, 'no page write')
    // They end like any startWrite's.
    b.endWrite(0, 4096)
    b.endWrite(512, 512)
    b.endWrite(0, CS, true, true)
    t.is(chunkCounter(b, 0), 2)
    t.is(b.behindWrites, 0)
  } finally {
    await b.close()
  }
})

test('a range with one clean chunk: false, and no chunk of it counted', async (t) => {
  const { b } = await newBitmap()
  try {
    await b.startWrite(0, 4096)
    t.false(b.tryStartWrite(0, 2 * CS), 'chunk 1 is clean')
    t.is(chunkCounter(b, 0), 3, 'chunk 0 keeps only the first write')
    t.is(chunkCounter(b, CS), 0)
    b.endWrite(0, 4096)
  } finally {
    await b.close()
  }
})

test('a set bit whose page is DIRTY or being written (another chunk of the page going to disk): false until that write completed', async (t) => {
  const { b, path } = await newBitmap()
  try {
    await b.startWrite(0, 4096)
    // Chunk 1 is clean and on the same page: its startWrite dirties the page and writes it on the next turn.
    const other = b.startWrite(CS, 4096)
    t.false(b.tryStartWrite(0, 4096), 'page DIRTY: false')
    t.is(chunkCounter(b, 0), 3, 'not counted')
    // The unplug runs on setImmediate; by the next one the page write is issued and cannot have completed yet.
    await new Promise((resolve) => setImmediate(resolve))
    t.false(b.tryStartWrite(0, 4096), 'page being written: false')
    t.is(chunkCounter(b, 0), 3, 'not counted')
    await other
    t.true(readDisk(path).bit(1))
    t.true(b.tryStartWrite(0, 4096), 'the page write completed: true')
    t.is(chunkCounter(b, 0), 4)
    b.endWrite(0, 4096)
    b.endWrite(0, 4096)
    b.endWrite(CS, 4096)
  } finally {
    await b.close()
  }
})

test('a counter at COUNTER_MAX: false, nothing changed (startWrite would wait)', async (t) => {
  const { b } = await newBitmap()
  try {
    await b.startWrite(0, 512)
    while (chunkCounter(b, 0) < COUNTER_MAX) t.true(b.tryStartWrite(0, 512))
    t.false(b.tryStartWrite(0, 512))
    t.is(chunkCounter(b, 0), COUNTER_MAX)
    for (let n = COUNTER_MAX; n > 2; n--) b.endWrite(0, 512)
    t.is(chunkCounter(b, 0), 2)
  } finally {
    await b.close()
  }
})

test('arguments and a closed bitmap are refused as startWrite refuses them', async (t) => {
  const { b } = await newBitmap()
  t.is(t.throws(() => b.tryStartWrite(1, 512), { instanceOf: MdBitmapError })?.code, 'EINVAL')
  t.is(t.throws(() => b.tryStartWrite(0, 0), { instanceOf: MdBitmapError })?.code, 'EINVAL')
  t.is(t.throws(() => b.tryStartWrite(CS * 4096, 512), { instanceOf: MdBitmapError })?.code, 'EOUT_OF_RANGE')
  await b.close()
  t.is(t.throws(() => b.tryStartWrite(0, 512), { instanceOf: MdBitmapError })?.code, 'ECLOSED')
})
