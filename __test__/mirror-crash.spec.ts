/**
 * Crash consistency of the mirror, with real SIGKILLs (issue 4; DESIGN.md, "The
 * promise"). A writer process (fixtures/mirror-writer.mjs) runs random writes through
 * a two-member mirror whose write-mostly member is slowed, with write-behind on; the
 * parent kills it at a random moment and then checks, on the files as they are on disk:
 *
 * - every chunk where the members differ has its bit set on disk (the invariant);
 * - after Mirror.open + resync: the resync copied only chunks dirty at the crash, the
 *   members are byte-identical, and every sector holds the last acknowledged write
 *   covering it, or the one unacknowledged write in flight over it (an older
 *   acknowledged write showing through is a lost write).
 *
 * The files carry over from crash to crash, and every FRESH_EVERY iterations a new
 * mirror starts with another chunk size and write-behind limit. About one crash in
 * UNREPAIRED is left for the next writer, which resyncs it while writing (and may be
 * killed mid-resync); then the sectors are checked on the fast member, the resync
 * source. The parent keeps a model of which write each sector holds; after a good
 * iteration the model is what the source holds.
 *
 *   MD_BITMAP_MIRROR_CRASH_ITERATIONS=1000   iterations (default 50; `npm run soak`)
 *   MD_BITMAP_MIRROR_CRASH_SEED=n            replays a run's choices (the timing is the machine's)
 *
 * The writer runs the built package (dist/): run `npm run build:ts` after changing src/.
 */
import test from 'ava'
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process'
import { mkdirSync } from 'node:fs'
import { join } from 'node:path'

import { Mirror } from '../src'
import { readDirect } from './helpers/io'
import { diskTempDir, readDisk, removeDir } from './helpers/mdadm'

const dir = diskTempDir('md-bitmap-mirror-crash-')
test.after.always(() => removeDir(dir))

const FIXTURE = join(__dirname, 'fixtures', 'mirror-writer.mjs')
const ITERATIONS = Number(process.env.MD_BITMAP_MIRROR_CRASH_ITERATIONS) || 50
const FRESH_EVERY = 10
const SIZE = 16 * 2 ** 20
const SECTOR = 512
const SECTORS = SIZE / SECTOR
const CHUNK_SIZES = [16 * 1024, 64 * 1024, 256 * 1024]
// 4: many writes fall back to synchronous at the limit; 256: nearly all go behind.
const WRITE_BEHIND = [4, 256]
const UNREPAIRED = 4
// Must match the writer's tag.
const MAGIC = 0x3157424d
/** Write ids: iteration × ID_STRIDE + n, so ids are unique over the whole run. */
const ID_STRIDE = 2 ** 20

interface Writer {
  child: ChildProcessWithoutNullStreams
  lines: string[]
  readonly stderr: string
  closed: Promise<void>
  exited: Promise<NodeJS.Signals | number | null>
  waitFor(prefix: string, timeoutMs: number): Promise<string>
}

function startWriter(bitmap: string, seed: number, idBase: number): Writer {
  const child = spawn(process.execPath, [FIXTURE, bitmap, String(seed), String(idBase)], { stdio: ['pipe', 'pipe', 'pipe'] })
  const lines: string[] = []
  let partial = ''
  let stderr = ''
  const waiters: { prefix: string; resolve: (l: string) => void }[] = []
  child.stdout.setEncoding('utf8')
  child.stdout.on('data', (d: string) => {
    const parts = (partial + d).split('\n')
    partial = parts.pop()!
    for (const l of parts) {
      lines.push(l)
      if (waiters.length === 0) continue
      for (const w of waiters.splice(0)) {
        if (l.startsWith(w.prefix)) w.resolve(l)
        else waiters.push(w)
      }
    }
  })
  child.stderr.on('data', (d) => (stderr += d))
  const closed = new Promise<void>((r) => child.stdout.on('close', () => r()))
  const exited = new Promise<NodeJS.Signals | number | null>((r) => child.on('exit', (code, sig) => r(sig ?? code)))
  return {
    child,
    lines,
    get stderr() {
      return stderr
    },
    closed,
    exited,
    waitFor(prefix, timeoutMs) {
      const seen = lines.find((l) => l.startsWith(prefix))
      if (seen) return Promise.resolve(seen)
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`writer did not print "${prefix}" within ${timeoutMs} ms; stderr: ${stderr}`)), timeoutMs)
        void exited.then((s) => {
          clearTimeout(timer)
          reject(new Error(`writer exited (${s}) before printing "${prefix}"; stderr: ${stderr}`))
        })
        waiters.push({
          prefix,
          resolve: (l) => {
            clearTimeout(timer)
            resolve(l)
          },
        })
      })
    },
  }
}

interface Write {
  id: number
  offset: number
  length: number
  acked: boolean
}

/** The write id a sector names, 0 for a sector never written (zeros), -1 for anything else. */
function sectorId(words: Uint32Array, s: number): number {
  const base = (s * SECTOR) / 4
  const id = words[base + 1]
  if (words[base] === 0) {
    for (let w = 0; w < SECTOR / 4; w++) if (words[base + w] !== 0) return -1
    return 0
  }
  if (words[base] !== MAGIC || words[base + 2] !== s || words[base + 3] !== (id ^ s ^ 0x5a5a5a5a) >>> 0) return -1
  for (let w = 4; w < SECTOR / 4; w++) if (words[base + w] !== words[base + (w & 3)]) return -1
  return id
}

const words = (b: Uint8Array) => new Uint32Array(b.buffer, b.byteOffset, b.length / 4)
const view = (b: Uint8Array, offset: number, length: number) => Buffer.from(b.buffer, b.byteOffset + offset, length)

interface Totals {
  writes: number
  killsWithUnacked: number
  /** Iterations where the members differed at the crash (a behind write was caught lagging). */
  lagging: number
  laggingChunks: number
  /** Chunks written by a writer and found clear on disk at its death. */
  clearedSeen: number
  behindWrites: number
  /** Writes over a range an earlier acknowledged write of the same writer had covered. */
  overwrites: number
  chunksCopied: number
  dirtyAtCrash: number
  /** Crashes left for the next writer to resync, and writers killed during that resync. */
  unrepaired: number
  killedInResync: number
}

test(`SIGKILL during write-behind: resync restores identical members holding every acknowledged write (${ITERATIONS} iterations)`, async (t) => {
  // Scaled with the iterations (a soak runs for half an hour); generous for a loaded machine.
  t.timeout(Math.max(180_000, ITERATIONS * 6_000))
  const seed0 = Number(process.env.MD_BITMAP_MIRROR_CRASH_SEED) || ((Date.now() & 0xffff) * 7 + 1)
  t.log(`seed ${seed0} (replay with MD_BITMAP_MIRROR_CRASH_SEED=${seed0}), ${ITERATIONS} iterations`)
  // xorshift32: exact in 32-bit integers (a float LCG loses bits past 2^53 and cycles early).
  let rnd = seed0 >>> 0 || 1
  const rand = () => {
    rnd ^= rnd << 13
    rnd >>>= 0
    rnd ^= rnd >>> 17
    rnd ^= rnd << 5
    rnd >>>= 0
    return rnd / 2 ** 32
  }

  const totals: Totals = { writes: 0, killsWithUnacked: 0, lagging: 0, laggingChunks: 0, clearedSeen: 0, behindWrites: 0, overwrites: 0, chunksCopied: 0, dirtyAtCrash: 0, unrepaired: 0, killedInResync: 0 }
  const started = Date.now()
  const live = new Set<Writer>()
  // Which write each sector holds on disk, as of the last good iteration (0 = zeros).
  const model = new Uint32Array(SECTORS)
  let epochDir = ''
  let bitmap = ''
  let members: string[] = []
  let chunkSize = 0
  let done = 0
  try {
    let next: Writer | undefined
    for (let it = 1; it <= ITERATIONS; it++) {
      if ((it - 1) % FRESH_EVERY === 0) {
        // A new mirror: the writer pre-started for this iteration opens only after 'go'.
        removeDir(epochDir)
        epochDir = join(dir, `epoch-${it}`)
        mkdirSync(epochDir)
        bitmap = join(epochDir, 'mirror.bitmap')
        members = [join(epochDir, 'fast.img'), join(epochDir, 'slow.img')]
        chunkSize = CHUNK_SIZES[Math.floor(rand() * CHUNK_SIZES.length)]
        const writeBehind = WRITE_BEHIND[Math.floor(rand() * WRITE_BEHIND.length)]
        const m = await Mirror.create({
          bitmap,
          members: [{ path: members[0] }, { path: members[1], writeMostly: true }],
          size: SIZE,
          chunkSize,
          writeBehind,
          daemonSleep: 1,
        })
        await m.close()
        model.fill(0)
        t.log(`iteration ${it}: new mirror, chunk ${chunkSize / 1024} KiB, writeBehind ${writeBehind}`)
      }
      const w = next ?? startWriter(bitmap, seed0 + it, it * ID_STRIDE)
      live.add(w)
      await w.waitFor('loaded', 20_000)
      w.child.stdin.write('go\n')
      await w.waitFor('ready', 20_000)
      // Load the next writer's modules while this one runs (bitmap path known only then for a new epoch).
      next = it < ITERATIONS && it % FRESH_EVERY !== 0 ? startWriter(bitmap, seed0 + it + 1, (it + 1) * ID_STRIDE) : undefined
      if (next) live.add(next)

      const delay = rand() < 0.15 ? Math.floor(rand() * 10) : 30 + Math.floor(rand() * 500)
      await new Promise((r) => setTimeout(r, delay))
      w.child.kill('SIGKILL')
      const how = await w.exited
      await w.closed
      live.delete(w)
      if (how !== 'SIGKILL') {
        t.fail(`iteration ${it}: the writer died on its own (${how}), seed ${seed0}; stderr: ${w.stderr}; last lines:\n${w.lines.slice(-10).join('\n')}`)
        break
      }
      // The last crash of an epoch is always repaired here, so every epoch ends with identical members checked.
      const repair = it % FRESH_EVERY === 0 || it === ITERATIONS || rand() >= 1 / UNREPAIRED
      const problems = await checkCrash(w.lines, bitmap, members, chunkSize, it * ID_STRIDE, model, totals, repair).catch((e: Error) => [`the check threw: ${e?.stack ?? e}`])
      if (problems.length) {
        t.log(`writer's last lines:\n${w.lines.slice(-30).join('\n')}`)
        t.fail(`iteration ${it} (killed ${delay} ms after ready; replay with MD_BITMAP_MIRROR_CRASH_SEED=${seed0}):\n${problems.slice(0, 20).join('\n')}`)
        break
      }
      done++
    }
  } finally {
    for (const w of live) w.child.kill('SIGKILL')
    await Promise.all([...live].map((w) => w.exited))
  }
  const ms = Date.now() - started
  t.log(
    `${done} iterations in ${ms} ms: ${totals.writes} writes, ${totals.behindWrites} behind, ${totals.overwrites} over earlier acknowledged ones; ` +
      `${totals.killsWithUnacked} kills with unacknowledged writes; ${totals.lagging} with members differing (${totals.laggingChunks} chunks); ` +
      `${totals.dirtyAtCrash} chunks dirty at crashes, ${totals.chunksCopied} copied; ${totals.clearedSeen} written chunks seen cleared; ` +
      `${totals.unrepaired} crashes left to the next writer's resync, ${totals.killedInResync} writers killed in it`,
  )
  if (done < ITERATIONS) return
  // The run must have exercised what it claims to check.
  t.true(totals.killsWithUnacked >= ITERATIONS / 2, 'most kills must catch writes in flight')
  t.true(totals.lagging > 0, 'some kill must catch the slow member behind (members differing), or the invariant was never under test')
  t.true(totals.behindWrites > 0, 'writes must go behind')
  t.true(totals.overwrites > 0, 'writes must overlap earlier acknowledged ones')
  t.true(totals.clearedSeen > 0, 'bits must get cleared during the runs, or a bitmap that only fills up would pass')
})

/** Checks one crash; returns what is wrong (empty: good) and updates `model` to the disk. */
async function checkCrash(
  lines: string[],
  bitmap: string,
  members: string[],
  chunkSize: number,
  idBase: number,
  model: Uint32Array,
  totals: Totals,
  repair: boolean,
): Promise<string[]> {
  const problems: string[] = []
  const chunks = Math.ceil(SIZE / chunkSize)
  const order: Write[] = []
  const byId = new Map<number, Write>()
  let behind = 0
  for (const l of lines) {
    const f = l.split(' ')
    if (f[0] === 'I') {
      const w = { id: Number(f[1]), offset: Number(f[2]), length: Number(f[3]), acked: false }
      order.push(w)
      byId.set(w.id, w)
    } else if (f[0] === 'A') {
      byId.get(Number(f[1]))!.acked = true
    } else if (f[0] === 'X') {
      problems.push(`a write was rejected: ${l}`)
    } else if (f[0] === 'W') {
      behind = Number(f[1])
    }
  }
  totals.writes += order.length
  totals.behindWrites += behind
  if (order.some((w) => !w.acked)) totals.killsWithUnacked++

  // The bitmap and the members as the crash left them, before anything reopens them.
  const disk = readDisk(bitmap)
  if (disk.state & 0x2) problems.push('the bitmap is STALE on disk: a bitmap write failed in the writer')
  const dirty = new Set(disk.dirtyList(chunks))
  totals.dirtyAtCrash += dirty.size
  const before = members.map((p) => readDirect(p, 0, SIZE))
  const differing: number[] = []
  for (let c = 0; c < chunks; c++) {
    const len = Math.min(chunkSize, SIZE - c * chunkSize)
    if (!view(before[0], c * chunkSize, len).equals(view(before[1], c * chunkSize, len))) differing.push(c)
  }
  if (differing.length) {
    totals.lagging++
    totals.laggingChunks += differing.length
  }
  const clean = differing.filter((c) => !dirty.has(c))
  if (clean.length) problems.push(`the members differ in chunks whose bit is clear on disk: ${clean.slice(0, 20).join(', ')} (dirty on disk: ${[...dirty].slice(0, 40).join(', ')})`)
  const written = new Set<number>()
  for (const w of order) for (let c = Math.floor(w.offset / chunkSize); c <= Math.floor((w.offset + w.length - 1) / chunkSize); c++) written.add(c)
  for (const c of written) if (!dirty.has(c)) totals.clearedSeen++

  if (lines.includes('R start') && !lines.some((l) => l.startsWith('R done'))) totals.killedInResync++
  if (!repair) {
    // Left for the next writer: what the resync source holds is what a resync will spread.
    totals.unrepaired++
    checkSectors(problems, before[0], order, byId, chunkSize, idBase, model, totals)
    return problems
  }

  const mirror = await Mirror.open({ bitmap })
  try {
    const states = mirror.members.map((m) => m.state)
    if (states.some((s) => s !== 'in-sync')) problems.push(`members after reopen: ${states.join(', ')}`)
    const report = await mirror.resync()
    totals.chunksCopied += report.chunksCopied
    const extra = report.chunks.filter((c) => !dirty.has(c))
    if (extra.length) problems.push(`resync copied chunks that were clear on disk at the crash: ${extra.slice(0, 20).join(', ')}`)
  } finally {
    await mirror.close()
  }
  // A complete resync and a clean close leave nothing dirty: the next crash starts from a clean bitmap.
  const left = readDisk(bitmap).dirtyList(chunks)
  if (left.length) problems.push(`bits still set on disk after the resync and a clean close: ${left.slice(0, 20).join(', ')}`)

  const after = members.map((p) => readDirect(p, 0, SIZE))
  if (!view(after[0], 0, SIZE).equals(view(after[1], 0, SIZE))) {
    const still: number[] = []
    for (let c = 0; c < chunks; c++) if (!view(after[0], c * chunkSize, chunkSize).equals(view(after[1], c * chunkSize, chunkSize))) still.push(c)
    problems.push(`the members differ after resync in chunks ${still.slice(0, 20).join(', ')}`)
  }

  checkSectors(problems, after[0], order, byId, chunkSize, idBase, model, totals)
  return problems
}

/**
 * Checks that each sector holds the last acknowledged write over it (or what the model
 * had), or the unacknowledged write issued after it, if any; updates the model.
 */
function checkSectors(problems: string[], data: Uint8Array, order: Write[], byId: Map<number, Write>, chunkSize: number, idBase: number, model: Uint32Array, totals: Totals): void {
  const acked = model.slice()
  const pending = new Uint32Array(SECTORS)
  for (const w of order) {
    let over = false
    for (let s = w.offset / SECTOR; s < (w.offset + w.length) / SECTOR; s++) {
      if (pending[s]) {
        problems.push(`the writer overlapped writes in flight: ${w.id} over ${pending[s]} (a fixture bug)`)
        return
      }
      if (acked[s] >= idBase) over = true
      if (w.acked) acked[s] = w.id
      else pending[s] = w.id
    }
    if (over) totals.overwrites++
  }
  const got = words(data)
  let bad = 0
  for (let s = 0; s < SECTORS; s++) {
    const id = sectorId(got, s)
    if (id === acked[s] || (pending[s] !== 0 && id === pending[s])) {
      model[s] = id
      continue
    }
    if (bad++ < 10) {
      const what = id === -1 ? 'garbage' : id === 0 ? 'zeros' : byId.has(id) ? `write ${id} (${byId.get(id)!.acked ? 'acknowledged, older' : 'unacknowledged'})` : `write ${id} of an earlier writer`
      problems.push(`sector ${s} (chunk ${Math.floor((s * SECTOR) / chunkSize)}) holds ${what}; expected write ${acked[s]}${pending[s] ? ` or the in-flight ${pending[s]}` : ''}`)
    }
  }
  if (bad > 10) problems.push(`… ${bad} bad sectors in all`)
}
