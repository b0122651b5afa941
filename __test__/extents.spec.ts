/**
 * extents() against an outside oracle: `filefrag -v` (e2fsprogs), on a fragmented ext4
 * file with holes and an unwritten tail, parsed line by line.
 */
import test, { type ExecutionContext } from 'ava'
import { randomBytes } from 'node:crypto'
import * as fs from 'node:fs'
import { join } from 'node:path'
import { extents, type ExtentMapInfo } from '../src'
import { fsCaps, requires } from './helpers/env'
import { sh, withFs } from './helpers/loopfs'

interface FilefragExtent {
  index: number
  logical: number // in blocks
  logicalEnd: number
  physical: number
  physicalEnd: number
  length: number // in blocks
  expected: number | null
  flags: string[]
}

interface Filefrag {
  size: number
  blockSize: number
  blocks: number
  extents: FilefragExtent[]
  count: number
}

/**
 * Parses `filefrag -v` (e2fsprogs 1.4x):
 *
 *   Filesystem type is: ef53
 *   File size of /x is 393216 (96 blocks of 4096 bytes)
 *    ext:     logical_offset:        physical_offset: length:   expected: flags:
 *      0:        0..       3:       1549..      1552:      4:
 *      1:        4..       7:       2065..      2068:      4:       1553:
 *     11:       80..      95:       2703..      2718:     16:       2699: last,unwritten,eof
 *   /x: 12 extents found
 *
 * Every line must be understood; anything else throws, so a format change is noticed.
 */
export function parseFilefrag(out: string): Filefrag {
  const lines = out.split('\n')
  let size = -1
  let blockSize = -1
  let blocks = -1
  let count = -1
  let header = false
  const exts: FilefragExtent[] = []
  const row = /^\s*(\d+):\s+(\d+)\.\.\s*(\d+):\s+(\d+)\.\.\s*(\d+):\s+(\d+):\s*(?:(\d+):)?\s*([a-z_,0-9x]*)\s*$/
  for (const line of lines) {
    let m: RegExpExecArray | null
    if (line.trim() === '' || /^Filesystem type is: [0-9a-f]+$/.test(line)) continue
    if ((m = /^File size of .* is (\d+) \((\d+) blocks? of (\d+) bytes\)$/.exec(line))) {
      size = Number(m[1])
      blocks = Number(m[2])
      blockSize = Number(m[3])
    } else if (/^\s*ext:\s+logical_offset:\s+physical_offset:\s+length:\s+expected:\s+flags:\s*$/.test(line)) {
      header = true
    } else if ((m = row.exec(line))) {
      if (!header) throw new Error(`filefrag: extent row before the table header: ${line}`)
      exts.push({
        index: Number(m[1]),
        logical: Number(m[2]),
        logicalEnd: Number(m[3]),
        physical: Number(m[4]),
        physicalEnd: Number(m[5]),
        length: Number(m[6]),
        expected: m[7] === undefined ? null : Number(m[7]),
        flags: m[8] ? m[8].split(',').filter(Boolean) : [],
      })
    } else if ((m = /^.*: (\d+) extents? found$/.exec(line))) {
      count = Number(m[1])
    } else {
      throw new Error(`filefrag: unexpected line: ${JSON.stringify(line)}`)
    }
  }
  if (size < 0 || blockSize <= 0 || count < 0 || !header) throw new Error(`filefrag: incomplete output:\n${out}`)
  return { size, blockSize, blocks, extents: exts, count }
}

/** filefrag's flag names → md-bitmap's (FIEMAP flag names); `eof` is filefrag's own. */
const FLAG_NAMES: Record<string, string> = {
  last: 'last',
  unknown_loc: 'unknown',
  delalloc: 'delalloc',
  encoded: 'encoded',
  encrypted: 'encrypted',
  not_aligned: 'not_aligned',
  inline: 'inline',
  tail_packed: 'tail',
  unwritten: 'unwritten',
  merged: 'merged',
  shared: 'shared',
}

function compare(t: ExecutionContext, ff: Filefrag, map: ExtentMapInfo) {
  t.is(map.source, 'fiemap')
  t.is(map.fileSize, ff.size)
  t.is(map.blockSize, ff.blockSize)
  // filefrag counts a new fragment only where the physical run breaks.
  t.is(ff.count, ff.extents.filter((f, i) => i === 0 || f.expected !== null).length, 'filefrag fragment count')
  t.is(map.extents.length, ff.extents.length, 'same number of extents as filefrag')
  const bs = ff.blockSize
  ff.extents.forEach((f, i) => {
    const e = map.extents[i]
    if (!e) return
    const where = `extent ${i}: filefrag ${JSON.stringify(f)} vs ${JSON.stringify(e)}`
    t.is(f.index, i, where)
    // filefrag's own arithmetic is consistent...
    t.is(f.logicalEnd - f.logical + 1, f.length, where)
    t.is(f.physicalEnd - f.physical + 1, f.length, where)
    // ...and ours matches it, in bytes.
    t.is(e.logical, f.logical * bs, `logical, ${where}`)
    t.is(e.physical, f.physical * bs, `physical, ${where}`)
    t.is(e.length, f.length * bs, `length, ${where}`)
    const theirs = f.flags.filter((x) => x !== 'eof').map((x) => FLAG_NAMES[x] ?? `?${x}`).sort()
    t.deepEqual([...e.flags].sort(), theirs, `flags, ${where}`)
    // filefrag marks eof where the extent reaches the file's end.
    t.is(f.flags.includes('eof'), e.logical + e.length >= map.fileSize, `eof, ${where}`)
    // "expected" (where the block would be had the file been laid out contiguously
    // from the previous extent, holes included) is printed exactly where that fails.
    if (i > 0) {
      const prev = map.extents[i - 1]
      const expected = prev.physical + prev.length + (e.logical - (prev.logical + prev.length))
      t.is(f.expected === null, expected === e.physical, `expected column, ${where}`)
      if (f.expected !== null) t.is(f.expected * bs, expected, where)
    }
  })
}

const t = requires([...fsCaps('ext4'), 'filefrag', 'fallocate'])

for (const blockSize of [4096, 1024]) {
  t(`ext4 (${blockSize}-byte blocks): a fragmented file's extents match filefrag -v exactly`, async (t) => {
    await withFs('ext4', 32, async (dir) => {
      const a = join(dir, 'fragmented')
      const b = join(dir, 'interleaved')
      const fa = fs.openSync(a, 'w')
      const fb = fs.openSync(b, 'w')
      const CHUNK = 16384
      const N = 48
      // Leave some chunks of `a` unwritten (holes); fsync after each chunk so each
      // allocation happens now, interleaved with the other file's.
      const holes = new Set([5, 6, 17, 30, 31, 32])
      try {
        for (let i = 0; i < N; i++) {
          if (!holes.has(i)) {
            fs.writeSync(fa, randomBytes(CHUNK), 0, CHUNK, i * CHUNK)
            fs.fsyncSync(fa)
          }
          fs.writeSync(fb, randomBytes(CHUNK), 0, CHUNK, i * CHUNK)
          fs.fsyncSync(fb)
        }
      } finally {
        fs.closeSync(fa)
        fs.closeSync(fb)
      }
      // An unwritten (fallocate'd) tail past the written data.
      sh('fallocate', ['-o', String(N * CHUNK), '-l', String(8 * CHUNK), a])

      const map = await extents(a)
      const ff = parseFilefrag(sh('filefrag', ['-v', a]))
      t.true(map.extents.length > 5, `the file is fragmented (${map.extents.length} extents)`)
      compare(t, ff, map)

      // The map shows what we made: holes exactly where we left them, the tail unwritten.
      const gaps: Array<[number, number]> = []
      let at = 0
      for (const e of map.extents) {
        if (e.logical > at) gaps.push([at, e.logical - at])
        at = e.logical + e.length
      }
      t.deepEqual(gaps, [
        [5 * CHUNK, 2 * CHUNK],
        [17 * CHUNK, CHUNK],
        [30 * CHUNK, 3 * CHUNK],
      ])
      const unwritten = map.extents.filter((e) => e.flags.includes('unwritten'))
      t.deepEqual(
        unwritten.map((e) => [e.logical, e.length]),
        [[N * CHUNK, 8 * CHUNK]],
      )
      t.is(map.fileSize, (N + 8) * CHUNK)
      t.deepEqual(
        map.extents.map((e) => e.flags.includes('last')),
        map.extents.map((_, i) => i === map.extents.length - 1),
        'only the final extent is marked last',
      )
      // No two extents of the file share a physical block.
      const sorted = [...map.extents].sort((x, y) => x.physical - y.physical)
      for (let i = 1; i < sorted.length; i++) {
        t.true(sorted[i - 1].physical + sorted[i - 1].length <= sorted[i].physical)
      }
    }, { mkfsArgs: ['-b', String(blockSize)] })
  })
}

test('the filefrag parser reads its table and rejects output it does not understand', (t) => {
  const good = [
    'Filesystem type is: ef53',
    'File size of /x is 8192 (2 blocks of 4096 bytes)',
    ' ext:     logical_offset:        physical_offset: length:   expected: flags:',
    '   0:        0..       0:        100..       100:      1:            ',
    '   1:        1..       1:        200..       200:      1:        101: last,eof',
    '/x: 2 extents found',
  ]
  const p = parseFilefrag(good.join('\n'))
  t.is(p.extents.length, 2)
  t.deepEqual(p.extents[1], { index: 1, logical: 1, logicalEnd: 1, physical: 200, physicalEnd: 200, length: 1, expected: 101, flags: ['last', 'eof'] })
  t.is(p.extents[0].expected, null)
  t.throws(() => parseFilefrag([...good.slice(0, 3), 'garbage', ...good.slice(3)].join('\n')))
  t.throws(() => parseFilefrag(good.slice(0, 2).join('\n')))
})

const txfs = requires([...fsCaps('xfs'), 'filefrag', 'cp'])
txfs('xfs: a partly rewritten reflink copy (shared and private extents) matches filefrag -v', async (t) => {
  await withFs('xfs', 300, async (dir) => {
    const orig = join(dir, 'orig')
    const copy = join(dir, 'copy')
    fs.writeFileSync(orig, randomBytes(1 << 20))
    const fo = fs.openSync(orig, 'r')
    fs.fsyncSync(fo)
    fs.closeSync(fo)
    sh('cp', ['--reflink=always', orig, copy])
    // Copy-on-write of two ranges of the copy: those become its own, the rest stays shared.
    const fd = fs.openSync(copy, 'r+')
    fs.writeSync(fd, randomBytes(65536), 0, 65536, 256 * 1024)
    fs.writeSync(fd, randomBytes(8192), 0, 8192, 1024 * 1024 - 8192)
    fs.fsyncSync(fd)
    fs.closeSync(fd)
    const map = await extents(copy)
    compare(t, parseFilefrag(sh('filefrag', ['-v', copy])), map)
    const own = map.extents.filter((e) => !e.flags.includes('shared')).map((e) => [e.logical, e.length])
    t.deepEqual(own, [
      [256 * 1024, 65536],
      [1024 * 1024 - 8192, 8192],
    ])
    t.true(map.extents.filter((e) => e.flags.includes('shared')).length >= 2)
  })
})
