/**
 * The `md-bitmap` command, run as a child process from its bin entry (bin/md-bitmap.js
 * → dist/cli), as a user runs it.
 *
 * - `examine` must print exactly what `mdadm --examine-bitmap` prints (full text, line
 *   for line) on a wide spread of files: made by the library (Bitmap.create, written,
 *   cleared, closed, found stale), and made with the codec (every chunk size, sizes
 *   that are not chunk multiples, huge sizes where mdadm's human size overflows,
 *   version 3, every state, dirty bits with garbage past the last chunk, truncated
 *   files, clustered superblocks, percentages that are rounding ties, random ones).
 *   Both tools are run once over all the files of a group (both take many files).
 * - create → examine round trip; `dirty --json` while writes are in flight; `extents`
 *   on a sparse file names EEXTENT_HOLE; `resync` after a hand-made crash; `demo`.
 * - Every failure: one line `md-bitmap: CODE: …` on stderr and the documented status.
 *
 * dist/ is rebuilt first when a source file is newer than it.
 */
import test, { type ExecutionContext } from 'ava'
import fc from 'fast-check'
import { execFile, spawn } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { existsSync, readFileSync, statSync, writeFileSync } from 'node:fs'
import { join, resolve } from 'node:path'

import { Bitmap, FileMember, Mirror, allocAligned } from '../src'
import { daemonPass } from '../src/bitmap/testing'
import { progressReporter } from '../src/cli/progress'
import { SUPERBLOCK_SIZE, STATE_HOSTENDIAN, STATE_STALE, bitmapBytes, chunkCount, encode, minFileSize, pagedFileSize, type Superblock } from '../src/bitmap/superblock'
import { ensureBuilt } from './helpers/built'
import { requires, which } from './helpers/env'
import { diskTempDir, removeDir } from './helpers/tmp'

const ROOT = resolve(__dirname, '..')
const BIN = join(ROOT, 'bin', 'md-bitmap.js')
const withMdadm = requires(['mdadm'])
const KiB = 1024
const MiB = 1024 * KiB
const GiB = 1024 * MiB
const TiB = 1024 * GiB

const dir = diskTempDir('md-bitmap-cli-')
let filesCompared = 0
test.after.always(() => {
  removeDir(dir)
  if (filesCompared) console.log(`cli: examine compared with mdadm -X on ${filesCompared} files`)
})

// ---------------------------------------------------------------------------------
// Build and run

test.before(ensureBuilt)

interface Run {
  status: number | null
  stdout: string
  stderr: string
  stdoutBytes: Buffer
}

/**
 * Runs the command; never blocks the test process (the demo's writer must be able to
 * print while other tests run, and the machine may be busy).
 */
function cli(args: string[], timeoutMs = 60_000): Promise<Run> {
  return new Promise((res, rej) => {
    const child = spawn(process.execPath, [BIN, ...args], { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] })
    const out: Buffer[] = []
    const err: Buffer[] = []
    child.stdout.on('data', (d: Buffer) => out.push(d))
    child.stderr.on('data', (d: Buffer) => err.push(d))
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs)
    child.on('error', rej)
    child.on('close', (status) => {
      clearTimeout(timer)
      const stdoutBytes = Buffer.concat(out)
      res({ status, stdout: stdoutBytes.toString('utf8'), stderr: Buffer.concat(err).toString('utf8'), stdoutBytes })
    })
  })
}

/** A failure: exactly one line on stderr, `md-bitmap: CODE: message`, and the status. */
function assertFailure(t: ExecutionContext, r: Run, code: string, status: number, what: string): void {
  t.is(r.status, status, `${what}: exit status (stderr: ${r.stderr})`)
  const lines = r.stderr.split('\n')
  t.is(lines.length, 2, `${what}: one line on stderr, got ${JSON.stringify(r.stderr)}`)
  t.is(lines[1], '')
  t.regex(lines[0], new RegExp(`^md-bitmap: ${code}: \\S.{10,}$`), `${what}: the line names ${code}`)
}

// ---------------------------------------------------------------------------------
// examine against mdadm -X

function mdadmX(paths: string[]): Promise<{ stdout: Buffer; status: number | null; stderr: string }> {
  return new Promise((res, rej) => {
    execFile(which('mdadm') ?? 'mdadm', ['--examine-bitmap', ...paths], { cwd: dir, maxBuffer: 256 * MiB, encoding: 'buffer' }, (err, stdout, stderr) => {
      if (err && typeof err.code !== 'number') return rej(err)
      res({ stdout, status: err ? (err.code as unknown as number) : 0, stderr: stderr.toString() })
    })
  })
}

/** Runs `fn` over `items`, `width` at a time. */
async function pool<T, R>(items: T[], width: number, fn: (x: T) => Promise<R>): Promise<R[]> {
  const out: R[] = new Array(items.length)
  let next = 0
  await Promise.all(
    Array.from({ length: Math.min(width, items.length) }, async () => {
      for (let i = next++; i < items.length; i = next++) out[i] = await fn(items[i])
    }),
  )
  return out
}

/** Splits concatenated reports at each Filename line. */
function reports(text: string): string[] {
  return text.split(/(?=^ {8}Filename : )/m).filter(Boolean)
}

/**
 * Runs mdadm -X and `md-bitmap examine` over `names` (relative to the work dir, so the
 * Filename lines are the same) and compares the output byte for byte.
 */
async function compareWithMdadm(t: ExecutionContext, names: string[], label: string): Promise<void> {
  const [m, ours] = await Promise.all([mdadmX(names), cli(['examine', ...names])])
  t.is(ours.status, 0, `${label}: md-bitmap examine failed: ${ours.stderr}`)
  t.is(m.status, 0, `${label}: mdadm -X failed: ${m.stderr}`)
  const a = reports(m.stdout.toString('latin1'))
  const b = reports(ours.stdoutBytes.toString('latin1'))
  t.is(a.length, names.length, `${label}: mdadm printed one report per file`)
  t.is(b.length, names.length, `${label}: md-bitmap printed one report per file`)
  for (let i = 0; i < Math.max(a.length, b.length); i++) {
    if (a[i] !== b[i]) {
      t.fail(`${label}: ${names[i]} differs\n--- mdadm -X\n${a[i]}--- md-bitmap examine\n${b[i]}`)
      break
    }
  }
  t.true(m.stdout.equals(ours.stdoutBytes), `${label}: the whole output, byte for byte`)
  filesCompared += names.length
}

let seq = 0
/** Writes a bitmap file from a superblock (and raw tweaks) and bits; returns its name. */
function writeBitmap(
  sb: SuperblockSpec,
  dirty: Iterable<number>,
  opts: { cut?: number; pad?: number; tail?: boolean; rawState?: number; exact?: boolean; bitOrder?: 'le' } = {},
): string {
  const name = `x${seq++}.bitmap`
  const full = encode(sb)
  const size = opts.cut ?? (opts.exact ? minFileSize(sb) : pagedFileSize(sb))
  const file = Buffer.alloc(Math.max(size, minFileSize(sb)), opts.pad ?? 0)
  file.fill(0, 0, minFileSize(sb))
  Buffer.from(full).copy(file)
  if (opts.rawState !== undefined) file.writeUInt32LE(opts.rawState, 48)
  const chunks = chunkCount(sb)
  for (const c of dirty) if (c >= 0 && c < chunks) file[SUPERBLOCK_SIZE + (c >> 3)] |= 1 << (c & 7)
  if (opts.tail && chunks % 8) file[SUPERBLOCK_SIZE + bitmapBytes(sb) - 1] |= 0xff << chunks % 8
  writeFileSync(join(dir, name), file.subarray(0, size))
  return name
}

type SuperblockSpec = Omit<Superblock, 'version'> & { version: 3 | 4 }

function sbOf(chunkSize: number, syncSize: number, over: Partial<SuperblockSpec> = {}): SuperblockSpec {
  return {
    version: 4,
    uuid: Uint8Array.from({ length: 16 }, (_, i) => (i * 29 + chunkSize + syncSize + seq) & 0xff),
    events: 1234567890123n,
    eventsCleared: 1234567890000n,
    syncSize,
    state: 0,
    chunkSize,
    daemonSleep: 5,
    writeBehind: 0,
    sectorsReserved: 0,
    nodes: 0,
    clusterName: '',
    ...over,
  }
}

function spread(chunks: number, count: number): number[] {
  const out = [0, chunks - 1]
  for (let i = 1; i <= count; i++) out.push(Math.floor((chunks * i) / (count + 1.5)))
  return out
}

withMdadm('examine equals mdadm -X: codec-made files over chunk sizes, sizes, states, versions, events, tails', async (t) => {
  const names: string[] = []
  // Sizes in sectors, none a multiple of its chunk (except at 512 B).
  const cases: Array<[number, number[]]> = [
    [512, [1, 7, 12_345, 100_003]],
    [1 * KiB, [3, 4097]],
    [4 * KiB, [9, 8 * 1000 + 3, 2 * 5 * MiB + 1]],
    [32 * KiB, [65, 999_999]],
    [64 * KiB, [129, 2_000_001, 2 ** 30 + 77]],
    [MiB, [2049, 2 ** 33 + 1]],
    [64 * MiB, [131_073, 3 * 2 ** 31 + 5, 2 ** 40 + 1]],
    [GiB, [2 ** 21 + 1, 2 ** 44 + 9]],
    [2 * GiB, [1, 2 ** 22 + 1, 2 ** 41 + 12_345, 2 ** 45 + 3]],
  ]
  const states = [0, STATE_STALE, STATE_HOSTENDIAN, STATE_STALE | STATE_HOSTENDIAN, 0x10, 0x1]
  let i = 0
  for (const [chunkSize, sizes] of cases) {
    for (const syncSize of sizes) {
      const k = i++
      const sb = sbOf(chunkSize, syncSize, {
        version: k % 5 === 3 ? 3 : 4,
        state: states[k % states.length],
        daemonSleep: [5, 1, 86400, 17, 3600][k % 5],
        writeBehind: [0, 256, 16383, 1, 4096][k % 5],
        events: [0n, 1n, (1n << 64n) - 1n, 1234567890123n][k % 4],
        eventsCleared: [0n, 0n, (1n << 63n) + 5n, 99n][k % 4],
      })
      const chunks = chunkCount(sb)
      names.push(writeBitmap(sb, spread(chunks, 37), { tail: k % 2 === 1, pad: k % 3 === 2 ? 0xff : 0 }))
      // All clean, and all dirty.
      if (chunks < 1e6) {
        names.push(writeBitmap(sb, []))
        names.push(writeBitmap(sb, Array.from({ length: chunks }, (_, c) => c), { exact: true }))
      }
    }
  }
  await compareWithMdadm(t, names, 'codec-made files')
})

withMdadm('examine equals mdadm -X: stored states mdadm calls Unknown, WRITE_ERROR included', async (t) => {
  const names = [0x0, 0x2, 0x4, 0x6, 0x8000, 0x8002, 0x8004, 0xffffffff & ~0, 0x80000000].map((rawState, i) =>
    writeBitmap(sbOf(4 * KiB, 1000 + i), [0, 3, 100], { rawState: rawState >>> 0 }),
  )
  await compareWithMdadm(t, names, 'states')
})

withMdadm('examine equals mdadm -X: human sizes at every threshold, and where mdadm’s 64-bit arithmetic wraps', async (t) => {
  const bytes = [
    512,
    5000 * KiB - 512,
    5000 * KiB,
    5000 * KiB + 512,
    2 * GiB - 512,
    2 * GiB,
    2 * TiB - 512,
    2 * TiB,
    999_999_488,
    1_000_000_000_000 - 512 * 7,
    2 ** 52,
    2 ** 55 + 512,
    Math.floor(2 ** 63 / 200 / 512) * 512, // about where bytes × 200 leaves int64
    Math.floor(2 ** 63 / 200 / 512) * 512 + 512 * 1001,
    2 ** 60,
    (2 ** 53 - 1) * 512, // the largest sync size md-bitmap reads
  ]
  const rand = (() => {
    let s = 0x1234567
    return () => ((s = (Math.imul(s, 1103515245) + 12345) >>> 0), s / 2 ** 32)
  })()
  for (let i = 0; i < 24; i++) bytes.push(Math.floor(2 ** (21 + rand() * 31.99)) * 512)
  // A chunk large enough that the bit array stays small.
  const names = bytes.map((b) => writeBitmap(sbOf(2 ** 31, Math.max(1, Math.floor(b / 512))), [0, 1, 5], { cut: 8192 }))
  await compareWithMdadm(t, names, 'human sizes')
})

withMdadm('examine equals mdadm -X: truncated files and files of exactly the needed size', async (t) => {
  const sb = sbOf(512, 100_003)
  const names = [
    writeBitmap(sb, [0, 5, 63_487, 63_488, 72_000], { cut: 8192 }),
    writeBitmap(sb, [0, 5, 1000], { cut: 300 }),
    writeBitmap(sb, [0], { cut: 256 }),
    writeBitmap(sb, [0, 5, 100_002], { cut: 12_000 }),
    writeBitmap(sb, [0, 5, 100_002], { exact: true }),
    writeBitmap(sbOf(4 * KiB, 8 * 70_000 + 5), spread(70_001, 300), { exact: true }),
  ]
  await compareWithMdadm(t, names, 'truncated')
  // The warning goes to stderr, the report still to stdout.
  const r = await cli(['examine', names[0]])
  t.is(r.status, 0)
  t.regex(r.stderr, /^md-bitmap: warning: ESHORTFILE: .*\n$/)
})

withMdadm('examine equals mdadm -X: percentages that are rounding ties (glibc rounds half to even)', async (t) => {
  const names: string[] = []
  // 400 chunks: 1 dirty is 0.25%, 3 is 0.75%, 5 is 1.25%, 7 is 1.75%; 800 with 2 is 0.25%.
  for (const [chunks, dirty] of [
    [400, 1],
    [400, 3],
    [400, 5],
    [400, 7],
    [400, 9],
    [800, 2],
    [800, 6],
    [4000, 10],
    [4000, 30],
    [8, 1],
    [16, 1],
    [3, 1],
    [3, 2],
    [7, 1],
    [1000, 1],
    [2000, 1],
  ]) {
    names.push(writeBitmap(sbOf(4096, chunks * 8), Array.from({ length: dirty }, (_, i) => i * 2)))
  }
  await compareWithMdadm(t, names, 'percent ties')
})

withMdadm('examine equals mdadm -X: clustered superblocks (nodes > 0) and cluster names', async (t) => {
  const names = [
    writeBitmap(sbOf(64 * KiB, 1_000_000, { nodes: 1 }), [1]),
    writeBitmap(sbOf(64 * KiB, 1_000_000, { nodes: 3, clusterName: 'mycluster' }), [1]),
    writeBitmap(sbOf(64 * KiB, 1_000_000, { nodes: 2, clusterName: 'x'.repeat(63) }), []),
    writeBitmap(sbOf(64 * KiB, 1_000_000, { nodes: 2, clusterName: 'y'.repeat(64) }), []),
    writeBitmap(sbOf(64 * KiB, 1_000_000, { nodes: 1, clusterName: 'caf\u00e9-\u00ff' }), []),
    writeBitmap(sbOf(64 * KiB, 1_000_000, { nodes: 0, clusterName: 'ignored' }), [2]),
  ]
  await compareWithMdadm(t, names, 'clustered')
})

withMdadm('examine equals mdadm -X: random superblocks and bit patterns (fast-check)', async (t) => {
  const names: string[] = []
  fc.assert(
    fc.property(
      fc.integer({ min: 9, max: 31 }),
      fc.integer({ min: 1, max: 40_000 }),
      fc.integer({ min: 1, max: 2 ** 30 }),
      fc.record({
        uuid: fc.uint8Array({ minLength: 16, maxLength: 16 }),
        events: fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }),
        eventsCleared: fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }),
        state: fc.constantFrom(0, STATE_STALE, STATE_HOSTENDIAN, STATE_STALE | STATE_HOSTENDIAN, 0x10),
        daemonSleep: fc.integer({ min: 1, max: 86400 }),
        writeBehind: fc.integer({ min: 0, max: 16383 }),
        version: fc.constantFrom(3 as const, 4 as const),
      }),
      fc.array(fc.nat(), { maxLength: 300 }),
      fc.boolean(),
      (e, wantChunks, partial, over, picks, tail) => {
        const chunkSize = 2 ** e
        const perChunk = chunkSize / 512
        const syncSize = (wantChunks - 1) * perChunk + 1 + (partial % perChunk)
        const sb = sbOf(chunkSize, syncSize, over)
        const chunks = chunkCount(sb)
        names.push(writeBitmap(sb, picks.map((p) => p % chunks), { tail }))
        return true
      },
    ),
    { numRuns: 120, seed: 0x5eed },
  )
  await compareWithMdadm(t, names, 'random')
})

withMdadm('examine equals mdadm -X: files made by the library (fresh, written, cleared, closed, stale)', async (t) => {
  const configs = [
    { chunkSize: 512, size: 512 },
    { chunkSize: 512, size: 40000 * 512 },
    { chunkSize: 4 * KiB, size: 1000 * 4 * KiB + 512 },
    { chunkSize: 64 * KiB, size: 10 * GiB + 512 },
    { chunkSize: MiB, size: 3 * MiB - 512 },
    { chunkSize: 64 * MiB, size: TiB + 512 },
    { chunkSize: 2 * GiB, size: 2 ** 50 + 512 },
  ]
  const names: string[] = []
  for (const [i, cfg] of configs.entries()) {
    const name = `lib${i}.bitmap`
    const path = join(dir, name)
    const b = await Bitmap.create(path, { ...cfg, daemonSleep: [60, 5, 86400][i % 3], writeBehind: [0, 256, 16383][i % 3] })
    const chunks = b.chunks
    const copy = (stage: string) => {
      const n = `lib${i}-${stage}.bitmap`
      writeFileSync(join(dir, n), readFileSync(path))
      names.push(n)
    }
    copy('fresh')
    await b.setEvents(BigInt(1000 + i))
    const ranges: [number, number][] = [
      [0, 512],
      [cfg.size - 512, 512],
      [Math.floor(chunks / 2) * cfg.chunkSize, Math.min(cfg.chunkSize, cfg.size - Math.floor(chunks / 2) * cfg.chunkSize)],
    ]
    for (const [o, l] of ranges) await b.startWrite(o, l)
    copy('written')
    for (const [o, l] of ranges.slice(1)) b.endWrite(o, l)
    await daemonPass(b)
    await daemonPass(b)
    copy('cleared')
    b.endWrite(...ranges[0])
    await b.close()
    names.push(name)
  }
  // A file marked STALE by hand, then opened stale (every bit set, STALE dropped).
  const stale = join(dir, 'stale.bitmap')
  await (await Bitmap.create(stale, { chunkSize: 4096, size: 200 * 4096 - 512 })).close()
  const bytes = readFileSync(stale)
  bytes.writeUInt32LE(STATE_STALE, 48)
  writeFileSync(stale, bytes)
  writeFileSync(join(dir, 'stale-marked.bitmap'), bytes)
  names.push('stale-marked.bitmap')
  const reopened = await Bitmap.open(stale)
  await reopened.close()
  names.push('stale.bitmap')
  await compareWithMdadm(t, names, 'library-made files')
})

// ---------------------------------------------------------------------------------
// The other commands

test('--help works for the command and for every subcommand; no command is a usage error', async (t) => {
  const commands = ['create', 'examine', 'extents', 'dirty', 'resync', 'demo']
  const forms = [['--help'], [], ...commands.map((c) => [c, '--help']), ['demo', '-h'], ['help', 'resync']]
  const [top, none, ...each] = await pool(forms, 4, (f) => cli(f))
  t.is(top.status, 0)
  t.regex(top.stdout, /^Usage: md-bitmap COMMAND/)
  t.regex(top.stdout, /Exit status:\n {2}0 +success\n {2}1 .*\n {2}2 .*usage.*\n {2}3 .*verification.*\n {2}130 /)
  for (const cmd of commands) t.regex(top.stdout, new RegExp(`^  ${cmd} `, 'm'), `the top help lists ${cmd}`)
  each.forEach((r, i) => {
    const form = forms[i + 2]
    const cmd = form[0] === 'help' ? form[1] : form[0]
    t.is(r.status, 0, `${form.join(' ')}: ${r.stderr}`)
    t.regex(r.stdout, new RegExp(`^Usage: md-bitmap ${cmd}`), form.join(' '))
    t.regex(r.stdout, /\n {2}-h, --help +this help\n$/, `${form.join(' ')} lists its options`)
    t.is(r.stderr, '')
  })
  t.is(none.status, 2)
  t.regex(none.stderr, /^Usage: md-bitmap/)
})

test('create → examine round trip: the values given are the values read back', async (t) => {
  const r = await cli(['create', 'rt.bitmap', '--size', '10G', '--chunk', '64M', '--delay', '7', '--write-behind', '256', '--uuid', '00112233-44556677-8899aabb-ccddeeff'])
  t.is(r.status, 0, r.stderr)
  t.regex(r.stdout, /^created rt\.bitmap\n/)
  t.regex(r.stdout, /chunks +160 of 64 MiB/)
  const x = await cli(['examine', 'rt.bitmap'])
  t.is(x.status, 0, x.stderr)
  t.is(
    x.stdout,
    [
      '        Filename : rt.bitmap',
      '           Magic : 6d746962',
      '         Version : 4',
      '            UUID : 00112233:44556677:8899aabb:ccddeeff',
      '          Events : 0',
      '  Events Cleared : 0',
      '           State : OK',
      '       Chunksize : 64 MB',
      '          Daemon : 7s flush period',
      '      Write Mode : Allow write behind, max 256',
      '       Sync Size : 10485760 (10.00 GiB 10.74 GB)',
      '          Bitmap : 160 bits (chunks), 0 dirty (0.0%)',
      '',
    ].join('\n'),
  )
  const j = JSON.parse((await cli(['examine', '--json', 'rt.bitmap'])).stdout)
  t.like(j, { version: 4, uuid: '00112233:44556677:8899aabb:ccddeeff', chunkSize: 64 * MiB, daemonSleep: 7, writeBehind: 256, sizeBytes: 10 * GiB, chunks: 160, dirty: 0, stale: false, truncated: false })
  t.is(statSync(join(dir, 'rt.bitmap')).size, 4096)

  // Odd sizes, random uuid, JSON output, a second file in one examine.
  const c = await cli(['create', 'rt2.bitmap', '--size', '1000.5K', '--chunk', '4k', '--json'])
  t.is(c.status, 0, c.stderr)
  const cj = JSON.parse(c.stdout)
  t.like(cj, { size: 1000.5 * 1024, chunkSize: 4096, chunks: 251, writeBehind: 0, daemonSleep: 5 })
  const both = await cli(['examine', 'rt.bitmap', 'rt2.bitmap', '--json'])
  t.is(both.status, 0)
  const arr = JSON.parse(both.stdout)
  t.is(arr.length, 2)
  t.is(arr[1].uuid, cj.uuid)
  t.is(arr[1].chunks, 251)
})

withMdadm('create → mdadm -X reads what the command created', async (t) => {
  t.is((await cli(['create', 'rt3.bitmap', '--size', '3T', '--chunk', '2M', '--write-behind', '16383', '--delay', '86400'])).status, 0)
  await compareWithMdadm(t, ['rt3.bitmap'], 'created by the command')
})

test('dirty --json while writes are in flight: exactly their chunks, as byte ranges', async (t) => {
  const path = join(dir, 'dirty.bitmap')
  const chunkSize = 64 * KiB
  const size = 100 * chunkSize - 512 // the last chunk is partial
  const b = await Bitmap.create(path, { size, chunkSize, daemonSleep: 60 })
  try {
    const writes: [number, number][] = [
      [0, 512], // chunk 0
      [3 * chunkSize + 100 * 512, 2 * chunkSize], // chunks 3..5
      [6 * chunkSize, 512], // chunk 6: adjacent, merges with 3..5
      [50 * chunkSize - 512, 1024], // chunks 49, 50
      [size - 512, 512], // chunk 99 (partial)
    ]
    for (const [o, l] of writes) await b.startWrite(o, l)
    const r = await cli(['dirty', '--json', 'dirty.bitmap'])
    t.is(r.status, 0, r.stderr)
    const j = JSON.parse(r.stdout)
    t.is(j.stale, false)
    t.is(j.chunks, 100)
    t.is(j.dirtyChunks, 8)
    t.deepEqual(j.ranges, [
      { offset: 0, length: chunkSize },
      { offset: 3 * chunkSize, length: 4 * chunkSize },
      { offset: 49 * chunkSize, length: 2 * chunkSize },
      { offset: 99 * chunkSize, length: chunkSize - 512 },
    ])
    t.is(j.bytes, 8 * chunkSize - 512)
    // The library agrees.
    t.deepEqual(
      b.dirtyChunks().map((x) => [x.offset, x.length]),
      j.ranges.map((x: { offset: number; length: number }) => [x.offset, x.length]),
    )
    const text = await cli(['dirty', 'dirty.bitmap'])
    t.is(text.status, 0)
    t.regex(text.stdout, /8 of 100 chunks dirty/)
    t.regex(text.stdout, new RegExp(`^${49 * chunkSize} +${2 * chunkSize} +${51 * chunkSize}$`, 'm'))
    for (const [o, l] of writes) b.endWrite(o, l)
  } finally {
    await b.close()
  }
  // Closed cleanly: every bit cleared.
  const after = JSON.parse((await cli(['dirty', '--json', 'dirty.bitmap'])).stdout)
  t.is(after.dirtyChunks, 0)
  t.deepEqual(after.ranges, [])

  // STALE: the whole device is dirty.
  const bytes = readFileSync(path)
  bytes.writeUInt32LE(STATE_STALE, 48)
  writeFileSync(join(dir, 'dirty-stale.bitmap'), bytes)
  const stale = JSON.parse((await cli(['dirty', '--json', 'dirty-stale.bitmap'])).stdout)
  t.is(stale.stale, true)
  t.deepEqual(stale.ranges, [{ offset: 0, length: size }])
})

test('extents on a sparse file names EEXTENT_HOLE and refuses both modes; a bitmap file is fine', async (t) => {
  const sparse = join(dir, 'sparse.bin')
  writeFileSync(sparse, '')
  const fh = await import('node:fs/promises').then((m) => m.open(sparse, 'r+'))
  await fh.truncate(MiB)
  await fh.write(randomBytes(8192), 0, 8192, 40960)
  await fh.sync()
  await fh.close()
  const r = await cli(['extents', 'sparse.bin'])
  t.is(r.status, 0, r.stderr)
  t.regex(r.stdout, /^file mode: +refused \(EEXTENT_HOLE\)$/m)
  t.regex(r.stdout, /^device mode: +refused \(.*EEXTENT_HOLE.*\)$/m)
  t.regex(r.stdout, /^ {2}EEXTENT_HOLE: /m)
  const j = JSON.parse((await cli(['extents', '--json', 'sparse.bin'])).stdout)
  t.false(j.fileModeOk)
  t.false(j.deviceModeOk)
  t.true(j.problems.some((p: { code: string; offset: number }) => p.code === 'EEXTENT_HOLE' && p.offset === 0))
  t.true(j.map.extents.some((e: { logical: number }) => e.logical === 40960))

  t.is((await cli(['create', 'ext.bitmap', '--size', '1G', '--chunk', '1M'])).status, 0)
  const ok = await cli(['extents', 'ext.bitmap'])
  t.is(ok.status, 0)
  t.regex(ok.stdout, /^file mode: +ok$/m)
  t.regex(ok.stdout, /^problems: none$/m)
  t.regex(ok.stdout, /^ {2}logical +physical +length +flags$/m)
})

test('failures: one line with the code on stderr and the documented exit status', async (t) => {
  writeFileSync(join(dir, 'notabitmap'), Buffer.alloc(4096, 7))
  writeFileSync(join(dir, 'tiny'), Buffer.alloc(100))
  t.is((await cli(['create', 'exists.bitmap', '--size', '1M', '--chunk', '4K'])).status, 0)
  const cases: Array<[string[], string, number]> = [
    [['examine', 'missing.bitmap'], 'ENOENT', 1],
    [['dirty', 'missing.bitmap'], 'ENOENT', 1],
    [['extents', 'missing.bitmap'], 'ENOENT', 1],
    [['examine', 'notabitmap'], 'EBADMAGIC', 1],
    [['examine', 'tiny'], 'ESHORTFILE', 1],
    [['examine', '.'], 'ENOT_REGULAR_FILE', 1],
    [['create', 'new.bitmap', '--size', '10X', '--chunk', '64M'], 'EUSAGE', 2],
    [['create', 'new.bitmap', '--size', '1000', '--chunk', '64M'], 'EUSAGE', 2],
    [['create', 'new.bitmap', '--size', '1G', '--chunk', '3M'], 'EUSAGE', 2],
    [['create', 'new.bitmap', '--size', '1G'], 'EUSAGE', 2],
    [['create', 'new.bitmap', '--size', '1G', '--chunk', '1M', '--uuid', 'nope'], 'EUSAGE', 2],
    [['create', 'new.bitmap', '--size', '1G', '--chunk', '1M', '--write-behind', '16384'], 'EUSAGE', 2],
    [['create', 'exists.bitmap', '--size', '1M', '--chunk', '4K'], 'EEXIST', 1],
    [['create', join(dir, 'no', 'such', 'dir.bitmap'), '--size', '1M', '--chunk', '4K'], 'ENOENT', 1],
    [['examine'], 'EUSAGE', 2],
    [['examine', '--frob', 'x'], 'EUSAGE', 2],
    [['frobnicate'], 'EUSAGE', 2],
    [['resync'], 'EUSAGE', 2],
    [['resync', '--bitmap', 'exists.bitmap'], 'EMIRROR_METADATA', 1],
    [['resync', '--bitmap', 'exists.bitmap', '--lock-wait', 'long'], 'EUSAGE', 2],
    [['demo', '--seconds', 'soon'], 'EUSAGE', 2],
  ]
  const runs = await pool(cases, 4, ([args]) => cli(args))
  cases.forEach(([args, code, status], i) => assertFailure(t, runs[i], code, status, args.join(' ')))
  // Refused for its value, not as an unknown option (that would be EUSAGE too).
  const lockWait = runs[cases.findIndex(([args]) => args.includes('--lock-wait'))]
  t.regex(lockWait.stderr, /--lock-wait "long" must be an integer from 0 to 3600000/)
  t.false(existsSync(join(dir, 'new.bitmap')), 'a refused create leaves nothing behind')

  // Several files: the good ones are reported, each bad one gets its line, status 1.
  const many = await cli(['examine', 'exists.bitmap', 'missing.bitmap', 'exists.bitmap'])
  t.is(many.status, 1)
  t.is(reports(many.stdout).length, 2)
  t.regex(many.stderr, /^md-bitmap: ENOENT: [^\n]+\n$/)
})

test('resync after a crash copies only the dirty chunk; progress lines when stderr is not a terminal', async (t) => {
  const bitmap = join(dir, 'rs.bitmap')
  const a = join(dir, 'rs-a.img')
  const b = join(dir, 'rs-b.img')
  const chunkSize = MiB
  const size = 16 * MiB
  const m = await Mirror.create({ bitmap, members: [{ path: a }, { path: b, writeMostly: true }], size, chunkSize, daemonSleep: 60 })
  const data = allocAligned(chunkSize).fill(0x5a)
  for (let c = 0; c < 16; c += 3) await m.write(data, c * chunkSize)
  await m.close()
  // The crash: member b lost the last write to chunk 9 and the bit for it was set.
  const fb = await FileMember.open(b)
  await fb.write(allocAligned(chunkSize).fill(0x11), 9 * chunkSize)
  await fb.close()
  const raw = readFileSync(bitmap)
  raw[SUPERBLOCK_SIZE + 1] |= 1 << 1 // chunk 9
  writeFileSync(bitmap, raw)
  const before = JSON.parse((await cli(['dirty', '--json', 'rs.bitmap'])).stdout)
  t.deepEqual(before.ranges, [{ offset: 9 * chunkSize, length: chunkSize }])

  const r = await cli(['resync', '--bitmap', 'rs.bitmap'])
  t.is(r.status, 0, r.stderr)
  t.regex(r.stdout, /^chunks marked for resync: 1$/m)
  t.regex(r.stdout, /^resynced 1 of 1 marked chunks: 1 MiB of 16 MiB \(6\.3%\) from member 0 to member 1 in /m)
  t.regex(r.stderr, /^resync: 100\.0% {2}1 MiB of 1 MiB {2}chunks 1\/1 /m, 'plain progress lines')
  t.notRegex(r.stderr, /\r/, 'no carriage returns when stderr is not a terminal')
  t.true(readFileSync(a).equals(readFileSync(b)), 'members identical after the resync')

  // Nothing left: a second resync copies nothing; --json reports it.
  const again = await cli(['resync', '--bitmap', 'rs.bitmap', '--json'])
  t.is(again.status, 0, again.stderr)
  t.like(JSON.parse(again.stdout), { chunksCopied: 0, bytesCopied: 0, size })
  t.is(again.stderr, '')
})

test('progress on a terminal: one line redrawn with \\r, ended by a newline', (t) => {
  const err: string[] = []
  const p = progressReporter({ out: () => {}, err: (s) => void err.push(s), errIsTTY: true, columns: 100 }, 'resync')
  for (let i = 0; i <= 4; i++) p.update({ chunksDone: i, chunksTotal: 4, bytesCopied: i * MiB, bytesTotal: 4 * MiB, rate: MiB, elapsedMs: 1000 * i })
  p.done()
  t.is(err.length, 6)
  for (const s of err.slice(0, 5)) {
    t.true(s.startsWith('\r'))
    t.false(s.includes('\n'))
    t.is(s.length, 100, 'padded to the terminal width minus one, after the \\r')
  }
  t.regex(err[4], /\[#+\] 100\.0%/)
  t.regex(err[0], /\[\.+\] {3}0\.0%/)
  t.is(err[5], '\n')
})

test('demo: crashes a mirror in a child, resyncs the dirty chunks, verifies, reports, cleans up; --sabotage fails with EVERIFY', async (t) => {
  const [r, bad] = await Promise.all([cli(['demo', '--seconds', '2', '--slow-ms', '60'], 55_000), cli(['demo', '--seconds', '1', '--slow-ms', '60', '--sabotage', '--json'], 55_000)])
  t.is(r.status, 0, `${r.stdout}\n${r.stderr}`)
  const out = r.stdout
  for (const field of ['mirror', 'workload', 'written', 'latency', 'crash', 'resync', 'verify']) t.regex(out, new RegExp(`^ {2}${field} +\\S`, 'm'), field)
  t.regex(out, /written +\d[\d.]* [KMG]iB acknowledged in \d+ writes/)
  const lat = /ack p50 ([\d.]+) ms, p99 [\d.]+ m?s with write-behind; the slow member's writes take p50 ([\d.]+) ms, p99 [\d.]+ m?s/.exec(out)
  t.truthy(lat, 'latency line')
  t.true(Number(lat?.[1]) < Number(lat?.[2]), `acks with write-behind do not wait for the slow member: ${lat?.[0]}`)
  const crash = /crash +(\d+) of 256 chunks dirty in the bitmap on disk .*; the members differ in (\d+) chunks, every one of them marked dirty/.exec(out)
  t.truthy(crash, 'crash line')
  const resync = /resync +(\d+) chunks, [\d.]+ [KMG]i?B of 256 MiB \([\d.]+%\) copied/.exec(out)
  t.truthy(resync, 'resync line')
  t.is(resync?.[1], crash?.[1], 'exactly the chunks dirty at the crash are copied')
  t.true(Number(crash?.[1]) < 256, 'not a full resync')
  t.regex(out, /verify +members identical byte for byte \(256 MiB compared\); all \d+ blocks written hold their last acknowledged write/)
  t.regex(out, /^result: PASS in [\d.]+ s$/m)
  const folder = /^md-bitmap demo in (\S+)/.exec(out)?.[1]
  t.truthy(folder)
  t.false(existsSync(folder!), 'the temporary folder is removed')

  // The sabotaged run: the writer and the crash are the same, the verification fails.
  t.is(bad.status, 3, bad.stderr)
  const j = JSON.parse(bad.stdout)
  t.false(j.pass)
  t.true(j.written.writes > 0)
  t.true(j.written.behind > 0, 'some writes went behind')
  t.true(j.latencyMs.slowP50 >= 60, 'the slow member is slow')
  t.true(j.latencyMs.ackP50 < j.latencyMs.slowP50, `ack p50 ${j.latencyMs.ackP50} ms < slow p50 ${j.latencyMs.slowP50} ms`)
  t.true(j.crash.dirtyChunks > 0)
  t.is(j.crash.differingNotDirty.length, 1, 'the sabotaged chunk differs and is not dirty')
  t.is(j.resync.chunksCopied, j.crash.dirtyChunks)
  t.true(j.resync.onlyDirtyChunks)
  t.false(j.verify.identical)
  t.deepEqual(j.verify.differingChunks, j.crash.differingNotDirty, 'the resync fixed everything but the sabotage')
  t.deepEqual(j.verify.missing, [], 'the fast member holds every acknowledged write')
  assertFailure(t, bad, 'EVERIFY', 3, 'demo --sabotage')
  t.false(existsSync(j.dir))
})
