/**
 * The write loop of the mirror crash fixtures (fixtures/mirror-writer.ts,
 * fixtures/nbd-writer.ts), and the log it prints: one line each, with `printLine`
 * (synchronous, before the I/O it announces; see crash-child.ts):
 *
 *   I id offset length    just before mirror.write(…) is called
 *   A id                  once its promise resolved (acknowledged)
 *   X id code message     the write rejected (the parent fails the test)
 *
 * Writes in flight never overlap each other (as a filesystem's would not), but a write
 * may overlap earlier acknowledged ones whose behind copy is still on its way to a slow
 * member. Every sector carries the write's tag (src/cli/demo/tagged-data.ts), so the
 * parent can attribute any sector on disk ({@link readWriteLog}, {@link checkSectors}).
 * After the ack the caller's buffer is scribbled over: a behind write must have used its
 * own copy.
 */
import { allocAligned, type Mirror } from '../../src'
import { printLine } from '../../src/cli/demo/print-line'
import { SECTOR, sectorTag, tagSectors, wordsOf } from '../../src/cli/demo/tagged-data'

export interface Range {
  offset: number
  length: number
}

const overlaps = (a: Range, b: Range) => a.offset < b.offset + b.length && b.offset < a.offset + a.length

/**
 * Runs `workers` loops writing tagged ranges drawn by `pick` through `mirror`, ids from
 * `firstId` on, until the process is killed (or a write rejects: then it throws).
 */
export async function writeTagged(mirror: Mirror, workers: number, firstId: number, pick: () => Range): Promise<never> {
  const inFlight = new Set<Range>()
  let next = firstId
  const free = (): Range | undefined => {
    for (let tries = 0; tries < 8; tries++) {
      const r = pick()
      if (![...inFlight].some((w) => overlaps(w, r))) return r
    }
    return undefined
  }
  const worker = async (): Promise<never> => {
    for (;;) {
      const r = free()
      if (!r) {
        await new Promise((res) => setTimeout(res, 1))
        continue
      }
      const id = next++
      const buf = allocAligned(r.length)
      tagSectors(buf, id, r.offset)
      inFlight.add(r)
      printLine(`I ${id} ${r.offset} ${r.length}`)
      try {
        await mirror.write(buf, r.offset)
      } catch (e) {
        const err = e as { code?: string; message?: string }
        printLine(`X ${id} ${err.code} ${err.message}`)
        throw e
      }
      printLine(`A ${id}`)
      inFlight.delete(r)
      buf.fill(0xee)
    }
  }
  return Promise.race(Array.from({ length: workers }, worker))
}

export interface LoggedWrite extends Range {
  id: number
  acked: boolean
}

export interface WriteLog {
  /** The writes in the order they were issued. */
  order: LoggedWrite[]
  byId: Map<number, LoggedWrite>
  /** `X` lines: writes that rejected. */
  rejected: string[]
}

/** The writes a writer's lines report. */
export function readWriteLog(lines: string[]): WriteLog {
  const log: WriteLog = { order: [], byId: new Map(), rejected: [] }
  for (const l of lines) {
    const f = l.split(' ')
    if (f[0] === 'I') {
      const w = { id: Number(f[1]), offset: Number(f[2]), length: Number(f[3]), acked: false }
      log.order.push(w)
      log.byId.set(w.id, w)
    } else if (f[0] === 'A') {
      log.byId.get(Number(f[1]))!.acked = true
    } else if (f[0] === 'X') {
      log.rejected.push(l)
    }
  }
  return log
}

/**
 * Checks that each sector of `data` (a member read from offset 0) holds the last
 * acknowledged write over it (or, where the log wrote nothing, what `model` had), or
 * the unacknowledged write issued over it, if any. Appends what is wrong to `problems`,
 * updates `model` (the write id each sector holds) to the disk, and returns how many
 * writes went over sectors an earlier acknowledged write of this log (ids from
 * `firstId`) had written.
 */
export function checkSectors(problems: string[], data: Uint8Array, log: WriteLog, chunkSize: number, firstId: number, model: Uint32Array): number {
  const sectors = model.length
  const acked = model.slice()
  const pending = new Uint32Array(sectors)
  let overwrites = 0
  for (const w of log.order) {
    let over = false
    for (let s = w.offset / SECTOR; s < (w.offset + w.length) / SECTOR; s++) {
      if (pending[s]) {
        problems.push(`the writer overlapped writes in flight: ${w.id} over ${pending[s]} (a fixture bug)`)
        return overwrites
      }
      if (acked[s] >= firstId) over = true
      if (w.acked) acked[s] = w.id
      else pending[s] = w.id
    }
    if (over) overwrites++
  }
  const words = wordsOf(data)
  let bad = 0
  for (let s = 0; s < sectors; s++) {
    const id = sectorTag(words, s)
    if (id === acked[s] || (pending[s] !== 0 && id === pending[s])) {
      model[s] = id
      continue
    }
    if (bad++ < 10) {
      const w = log.byId.get(id)
      // An id of this writer's range missing from its log reached the disk without its
      // `I` line reaching the parent: the log lost lines (a harness defect), no write was lost.
      const what =
        id === -1
          ? 'garbage'
          : id === 0
            ? 'zeros'
            : w
              ? `write ${id} (${w.acked ? 'acknowledged, older' : 'unacknowledged'})`
              : id >= firstId
                ? `write ${id}, which this writer's log never announced (its I line was lost)`
                : `write ${id} of an earlier writer`
      problems.push(`sector ${s} (chunk ${Math.floor((s * SECTOR) / chunkSize)}) holds ${what}; expected write ${acked[s]}${pending[s] ? ` or the in-flight ${pending[s]}` : ''}`)
    }
  }
  if (bad > 10) problems.push(`… ${bad} bad sectors in all`)
  return overwrites
}
