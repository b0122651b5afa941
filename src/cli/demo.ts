/**
 * `md-bitmap demo`: a crash and a bitmap resync, end to end, in a temporary folder.
 *
 * 1. Creates a mirror of two member files, the second write-mostly and slowed (a
 *    stand-in for a distant replica), with write-behind.
 * 2. Runs a writer in a child process (`demo/writer.js`) that writes self-describing
 *    blocks in a moving hot window and reports each acknowledged write, then kills it
 *    with SIGKILL mid-way.
 * 3. Reads the bitmap on disk as the crash left it, and compares the members chunk by
 *    chunk: every chunk where they differ must be dirty in the bitmap (the promise).
 * 4. Reopens the mirror and resyncs: only the dirty chunks are copied.
 * 5. Verifies the members byte for byte, and that every acknowledged write is there.
 *
 * Exit 0 when everything holds, 3 (EVERIFY) on any mismatch, 1 if something failed.
 *
 * @internal
 * @module
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { tmpdir } from 'node:os'
import { extname, join, resolve } from 'node:path'
import { createInterface } from 'node:readline'
import { FileMember } from '../member'
import { Mirror } from '../mirror/mirror'
import type { ResyncReport } from '../mirror/types'
import { allocAligned } from '../io/aligned'
import { makeTempFolder, removeFolder } from '../io/folders'
import { volatileFilesystem } from '../io/volatile'
import type { MdBitmapError } from '../errors'
import { parse, parseInteger, parseNumber, parseSize } from './args'
import { dirtyRanges, readBitmapFile } from './bitmap-file'
import { BLOCK, demoOpenMember } from './demo/members'
import { SECTOR, sectorTag, wordsOf } from './demo/tagged-data'
import { CliError, EXIT_INTERRUPTED, EXIT_VERIFY, errorLine, usage } from './errors'
import { bytes, ms, percent, percentile } from './format'
import type { Io } from './io'
import { progressReporter } from './progress'

export const HELP = `Usage: md-bitmap demo [options]

Shows what the write-intent bitmap is for, on real files, in about ten seconds:
  1. creates, in a temporary folder, a mirror of two member files: member 0 fast,
     member 1 write-mostly and slowed (every write completes --slow-ms later),
     with write-behind;
  2. runs a write workload in a child process and kills it with SIGKILL mid-way;
  3. reads the bitmap as the crash left it: every chunk where the members differ
     must be marked dirty;
  4. reopens the mirror and resyncs only the dirty chunks;
  5. verifies the members byte for byte, and that every write the child saw
     acknowledged is there.
Then prints the data written, the acknowledgement latency with write-behind against
the slow member's latency, the chunks dirty at the crash, and the bytes resynced
against the device size. Exits 3 (EVERIFY) on any mismatch. The temporary folder is
on a disk filesystem (not tmpfs) and is removed afterwards.

Options:
  --seconds N        how long the child writes before it is killed (default 5)
  --slow-ms N        extra latency of each write to the slow member (default 20)
  --size SIZE        the mirror's size (default 256M)
  --chunk SIZE       bytes per bitmap bit (default 1M)
  --write-behind N   most write-behind writes in flight (default 256)
  --workers N        concurrent writers in the child (default 4)
  --window SIZE      the hot window the writers write in (default 16M)
  --dir DIR          make the temporary folder in DIR (default: the system's
                     temporary folder, or /var/tmp when that is tmpfs)
  --keep             keep the temporary folder (its path is printed)
  --seed N           the workload's random seed (default: random)
  --sabotage         after the crash, change one clean chunk of the slow member
                     behind the bitmap's back, to see the verification catch what
                     no bitmap could know about (exits 3)
  --json             print the report as JSON
  -h, --help         this help`

/** A folder for the demo's files on a filesystem that is not in memory. */
function demoDir(parent: string | undefined): string {
  const candidates = parent ? [parent] : [tmpdir(), '/var/tmp', process.cwd()]
  for (const dir of candidates) {
    try {
      if (!parent && volatileFilesystem(dir)) continue
      return makeTempFolder(dir, 'md-bitmap-demo-')
    } catch (e) {
      if (parent) throw new CliError((e as MdBitmapError).code, `${(e as MdBitmapError).message}; pick another --dir`)
    }
  }
  throw new CliError('ENOSPC', `no disk-backed folder for the demo among ${candidates.join(', ')}; pass --dir DIR on a disk filesystem`)
}

/** The writer script in demo/ beside this module (the .ts one when running from source). */
function writerCommand(): { file: string; execArgv: string[] } {
  const ext = extname(__filename)
  const file = join(__dirname, 'demo', `writer${ext}`)
  return { file, execArgv: ext === '.ts' ? ['--import', 'tsx'] : [] }
}

interface ChildResult {
  acks: Map<number, number>
  ackLatencies: number[]
  slowLatencies: number[]
  writes: number
  behind: number
  fallbackLimit: number
  fallbackMemory: number
  errors: string[]
  pid: number
  ranMs: number
}

/** Runs the writer, kills it `seconds` after it is ready, and collects what it printed. */
async function runWriter(args: string[], seconds: number, onReady: (pid: number) => void, onSpawn: (child: ChildProcess) => void): Promise<ChildResult> {
  const { file, execArgv } = writerCommand()
  const child = spawn(process.execPath, [...execArgv, file, ...args], { stdio: ['ignore', 'pipe', 'pipe'] })
  onSpawn(child)
  const r: ChildResult = { acks: new Map(), ackLatencies: [], slowLatencies: [], writes: 0, behind: 0, fallbackLimit: 0, fallbackMemory: 0, errors: [], pid: child.pid ?? 0, ranMs: 0 }
  let stderr = ''
  child.stderr.setEncoding('utf8')
  child.stderr.on('data', (d: string) => (stderr += d))
  let readyAt = 0
  let killedAt = 0
  let timer: NodeJS.Timeout | undefined
  const startTimeout = setTimeout(() => child.kill('SIGKILL'), 30_000)
  const lines = createInterface({ input: child.stdout })
  const linesClosed = new Promise<void>((res) => lines.once('close', () => res()))
  lines.on('line', (line) => {
    const f = line.split(' ')
    switch (f[0]) {
      case 'A': {
        const block = Number(f[1])
        const gen = Number(f[2])
        if (gen > (r.acks.get(block) ?? 0)) r.acks.set(block, gen)
        r.ackLatencies.push(Number(f[3]))
        break
      }
      case 'S':
        r.slowLatencies.push(Number(f[1]))
        break
      case 'T':
        r.writes = Number(f[1])
        r.behind = Number(f[2])
        r.fallbackLimit = Number(f[3])
        r.fallbackMemory = Number(f[4])
        break
      case 'E':
        r.errors.push(f.slice(1).join(' '))
        break
      case 'ready':
        clearTimeout(startTimeout)
        readyAt = performance.now()
        onReady(child.pid ?? 0)
        timer = setTimeout(() => {
          killedAt = performance.now()
          child.kill('SIGKILL')
        }, seconds * 1000)
        break
    }
  })
  const exited = new Promise<[number | null, NodeJS.Signals | null]>((res) => child.on('exit', (c, s) => res([c, s])))
  const [code, signal] = await exited
  await linesClosed
  clearTimeout(startTimeout)
  clearTimeout(timer)
  if (signal !== 'SIGKILL' || !killedAt) {
    const why = stderr.trim().split('\n').pop() || `exit status ${code}, signal ${signal}`
    throw new CliError('EDEMO_WRITER', `the demo's writer stopped before it was killed (${why})`)
  }
  r.ranMs = killedAt - readyAt
  return r
}

/** Bytes the sabotage changes, and the least alignment of the comparison buffers. */
const PAGE = 4096

/** Chunks where the two member files differ, and whether they are equal overall. */
async function compareMembers(a: string, b: string, size: number, chunkSize: number): Promise<number[]> {
  const ma = await FileMember.open(a)
  const mb = await FileMember.open(b)
  try {
    const piece = Math.min(chunkSize, 4 * 2 ** 20)
    const align = Math.max(ma.alignment, mb.alignment, PAGE)
    const ba = allocAligned(piece, align)
    const bb = allocAligned(piece, align)
    const differ: number[] = []
    for (let off = 0; off < size; off += piece) {
      const n = Math.min(piece, size - off)
      await Promise.all([ma.read(ba.subarray(0, n), off), mb.read(bb.subarray(0, n), off)])
      if (Buffer.compare(ba.subarray(0, n), bb.subarray(0, n)) !== 0) {
        const c = Math.floor(off / chunkSize)
        if (differ[differ.length - 1] !== c) differ.push(c)
      }
    }
    return differ
  } finally {
    await ma.close().catch(() => {})
    await mb.close().catch(() => {})
  }
}

/** Checks every block of `path` against the acknowledged generations (the writes' tags). */
async function verifyAcked(path: string, size: number, acks: Map<number, number>): Promise<{ checked: number; missing: string[] }> {
  const m = await FileMember.open(path)
  try {
    const buf = allocAligned(BLOCK, Math.max(m.alignment, SECTOR))
    const words = wordsOf(buf)
    const missing: string[] = []
    let checked = 0
    for (let block = 0; block < Math.floor(size / BLOCK); block++) {
      const acked = acks.get(block) ?? 0
      await m.read(buf, block * BLOCK)
      for (let s = 0; s < BLOCK / SECTOR; s++) {
        const gen = sectorTag(words, s, (block * BLOCK) / SECTOR + s)
        // The writer issues one write at a time per block: a sector holds the last
        // acknowledged generation, or the next one (in flight, or acknowledged just
        // before the kill but not yet reported).
        if (gen < acked || gen > acked + 1) {
          if (missing.length < 5) missing.push(`block ${block} sector ${s}: ${gen < 0 ? 'corrupt' : gen === 0 ? 'zeros' : `generation ${gen}`}, acknowledged ${acked}`)
          else if (missing.length === 5) missing.push('...')
        }
      }
      if (acked > 0) checked++
    }
    return { checked, missing }
  } finally {
    await m.close().catch(() => {})
  }
}

export async function demo(argv: string[], io: Io): Promise<number> {
  const { values } = parse(
    'demo',
    argv,
    {
      seconds: { type: 'string' },
      'slow-ms': { type: 'string' },
      size: { type: 'string' },
      chunk: { type: 'string' },
      'write-behind': { type: 'string' },
      workers: { type: 'string' },
      window: { type: 'string' },
      dir: { type: 'string' },
      keep: { type: 'boolean' },
      seed: { type: 'string' },
      sabotage: { type: 'boolean' },
      json: { type: 'boolean' },
    },
    { min: 0, max: 0, names: '' },
  )
  if (values.help) {
    io.out(HELP + '\n')
    return 0
  }
  const opt = (k: string) => values[k] as string | undefined
  const seconds = opt('seconds') === undefined ? 5 : parseNumber(opt('seconds')!, '--seconds', 'demo', 0.1, 50)
  const slowMs = opt('slow-ms') === undefined ? 20 : parseInteger(opt('slow-ms')!, '--slow-ms', 'demo', 0, 10_000)
  const size = opt('size') === undefined ? 256 * 2 ** 20 : parseSize(opt('size')!, '--size', 'demo')
  const chunkSize = opt('chunk') === undefined ? 2 ** 20 : parseSize(opt('chunk')!, '--chunk', 'demo')
  const writeBehind = opt('write-behind') === undefined ? 256 : parseInteger(opt('write-behind')!, '--write-behind', 'demo', 0, 16383)
  const workers = opt('workers') === undefined ? 4 : parseInteger(opt('workers')!, '--workers', 'demo', 1, 64)
  const windowBytes = opt('window') === undefined ? 16 * 2 ** 20 : parseSize(opt('window')!, '--window', 'demo')
  const seed = opt('seed') === undefined ? randomBytes(4).readUInt32LE() || 1 : parseInteger(opt('seed')!, '--seed', 'demo', 1, 2 ** 32 - 1)
  if (chunkSize < 4096 || (chunkSize & (chunkSize - 1)) !== 0 || chunkSize > 2 ** 30) throw usage(`--chunk must be a power of two from 4K to 1G`, 'demo')
  if (size % BLOCK !== 0 || size < BLOCK * workers || size > 64 * 2 ** 30) {
    throw usage(`--size must be a multiple of 64K, at least 64K per worker (${workers}), at most 64G`, 'demo')
  }
  const json = values.json === true
  const say = (line: string) => {
    if (!json) io.out(line + '\n')
  }

  const dir = demoDir(opt('dir') === undefined ? undefined : resolve(opt('dir')!))
  const bitmap = join(dir, 'demo.bitmap')
  const fast = join(dir, 'member0-fast.img')
  const slow = join(dir, 'member1-slow.img')
  const openMember = demoOpenMember(slowMs)
  const t0 = performance.now()
  // Ctrl-C: stop the writer, remove the folder, and say so (exit 130), rather than
  // leave a child and 512 MiB of member files behind.
  let writer: ChildProcess | undefined
  const onSignal = (sig: NodeJS.Signals) => {
    writer?.kill('SIGKILL')
    if (!values.keep) removeFolder(dir)
    io.err(errorLine(new CliError('EINTERRUPTED', `demo stopped by ${sig}; ${values.keep ? `its files are in ${dir}` : 'its temporary folder was removed'}`)) + '\n')
    process.exit(EXIT_INTERRUPTED)
  }
  process.on('SIGINT', onSignal)
  process.on('SIGTERM', onSignal)
  try {
    const chunks = Math.ceil(size / chunkSize)
    say(`md-bitmap demo in ${dir}${values.keep ? '' : ' (removed afterwards)'}`)
    say(
      `  mirror     ${bytes(size)} in ${chunks} chunks of ${bytes(chunkSize)}: member 0 fast, member 1 write-mostly and slowed by ${slowMs} ms per write; write-behind up to ${writeBehind} writes, daemon every 1 s`,
    )
    const created = await Mirror.create({ bitmap, members: [{ path: fast }, { path: slow, writeMostly: true }], size, chunkSize, writeBehind, daemonSleep: 1, openMember })
    await created.close()

    // -- the workload, killed -------------------------------------------------------
    const child = await runWriter(
      [bitmap, String(slowMs), String(seed), String(workers), String(windowBytes), String(8 * 2 ** 20)],
      seconds,
      (pid) => say(`  workload   ${workers} writers of ${bytes(BLOCK)} blocks in a moving ${bytes(windowBytes)} hot window, in child process ${pid} (seed ${seed}); SIGKILL in ${seconds} s`),
      (c) => (writer = c),
    )
    const acked = child.ackLatencies.length
    const ackP50 = percentile(child.ackLatencies, 50)
    const ackP99 = percentile(child.ackLatencies, 99)
    const slowP50 = percentile(child.slowLatencies, 50)
    const slowP99 = percentile(child.slowLatencies, 99)
    say(
      `  written    ${bytes(acked * BLOCK)} acknowledged in ${acked} writes over ${(child.ranMs / 1000).toFixed(1)} s (${child.behind} behind, ${child.fallbackLimit + child.fallbackMemory} synchronous at the write-behind limit)`,
    )
    say(`  latency    ack p50 ${ms(ackP50)}, p99 ${ms(ackP99)} with write-behind; the slow member's writes take p50 ${ms(slowP50)}, p99 ${ms(slowP99)}`)

    // -- the crash, as the disk holds it ---------------------------------------------
    const atCrash = await readBitmapFile(bitmap)
    const dirtyAtCrash = dirtyRanges(atCrash).chunks
    const dirtySet = new Set(dirtyAtCrash)
    if (values.sabotage) {
      const victim = Array.from({ length: chunks }, (_, c) => c).find((c) => !dirtySet.has(c))
      if (victim !== undefined) {
        const m = await FileMember.open(slow)
        try {
          await m.write(allocAligned(PAGE, Math.max(PAGE, m.alignment)).fill(0xee), victim * chunkSize)
        } finally {
          await m.close()
        }
        say(`  sabotage   changed 4 KiB of chunk ${victim} on the slow member, which the bitmap says is clean`)
      }
    }
    const differ = await compareMembers(fast, slow, size, chunkSize)
    const uncovered = differ.filter((c) => !dirtySet.has(c))
    say(
      `  crash      ${dirtyAtCrash.length} of ${chunks} chunks dirty in the bitmap on disk (${percent(dirtyAtCrash.length, chunks)}); the members differ in ${differ.length} chunks, ` +
        (uncovered.length ? `${uncovered.length} of them NOT marked dirty: ${uncovered.slice(0, 8).join(', ')}` : 'every one of them marked dirty'),
    )

    // -- reopen and resync ------------------------------------------------------------
    const mirror = await Mirror.open({ bitmap, openMember })
    let report: ResyncReport
    const progress = progressReporter(io, '  resync    ')
    try {
      report = await mirror.resync({ onProgress: json ? undefined : (p) => progress.update(p) })
    } finally {
      progress.done()
      await mirror.close()
    }
    say(
      `  resync     ${report.chunksCopied} chunks, ${bytes(report.bytesCopied)} of ${bytes(size)} (${percent(report.bytesCopied, size)}) copied in ${ms(report.durationMs)}; without the bitmap a resync copies all ${bytes(size)}`,
    )

    // -- verify -----------------------------------------------------------------------
    const after = await compareMembers(fast, slow, size, chunkSize)
    const acks = await verifyAcked(fast, size, child.acks)
    const identical = after.length === 0
    const ackedOk = acks.missing.length === 0
    const promiseOk = uncovered.length === 0
    const resyncedOnlyDirty = report.chunks.every((c) => dirtySet.has(c))
    say(
      `  verify     members ${identical ? `identical byte for byte (${bytes(size)} compared)` : `DIFFER in ${after.length} chunks: ${after.slice(0, 8).join(', ')}`}; ` +
        (ackedOk ? `all ${child.acks.size} blocks written hold their last acknowledged write` : `acknowledged writes MISSING: ${acks.missing.join('; ')}`),
    )
    const pass = identical && ackedOk && promiseOk && resyncedOnlyDirty && child.errors.length === 0
    const elapsed = performance.now() - t0
    if (json) {
      io.out(
        JSON.stringify(
          {
            pass,
            dir,
            seed,
            size,
            chunkSize,
            chunks,
            slowMs,
            writeBehind,
            workers,
            written: { writes: acked, bytes: acked * BLOCK, behind: child.behind, synchronousAtLimit: child.fallbackLimit + child.fallbackMemory, seconds: child.ranMs / 1000 },
            latencyMs: { ackP50, ackP99, slowP50, slowP99 },
            crash: { dirtyChunks: dirtyAtCrash.length, differingChunks: differ.length, differingNotDirty: uncovered },
            resync: { chunksCopied: report.chunksCopied, bytesCopied: report.bytesCopied, durationMs: report.durationMs, onlyDirtyChunks: resyncedOnlyDirty },
            verify: { identical, differingChunks: after, blocksChecked: acks.checked, missing: acks.missing, mirrorErrors: child.errors },
            elapsedMs: elapsed,
          },
          null,
          2,
        ) + '\n',
      )
    } else {
      if (child.errors.length) say(`  errors     the mirror reported: ${child.errors.slice(0, 3).join('; ')}`)
      say(`result: ${pass ? 'PASS' : 'FAIL'} in ${(elapsed / 1000).toFixed(1)} s`)
    }
    if (!pass) {
      const why = [
        !promiseOk && `${uncovered.length} differing chunks were not dirty in the bitmap`,
        !resyncedOnlyDirty && 'the resync copied chunks that were not dirty',
        !identical && `the members differ in ${after.length} chunks after the resync`,
        !ackedOk && 'acknowledged writes are missing',
        child.errors.length && `the mirror reported errors (${child.errors[0]})`,
      ].filter(Boolean)
      throw new CliError('EVERIFY', `demo verification failed: ${why.join('; ')}; run with --keep to inspect the files`, EXIT_VERIFY)
    }
    return 0
  } finally {
    process.off('SIGINT', onSignal)
    process.off('SIGTERM', onSignal)
    if (values.keep) {
      if (!json) io.err(`md-bitmap: kept the demo's files in ${dir}\n`)
    } else {
      removeFolder(dir)
    }
  }
}
