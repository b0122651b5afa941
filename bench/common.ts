/**
 * What the benchmark scripts share: their command-line options, percentiles, number
 * formatting and tables for the printed report, a work directory that is removed
 * however the run ends, `execFile` as a promise (for fio, dd and child runs), and
 * readings of how loaded the machine was (load average, pressure stall information)
 * to record beside the figures.
 */
import { execFile } from 'node:child_process'
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs'
import * as os from 'node:os'
import { join } from 'node:path'
import { parseArgs, promisify } from 'node:util'

export { percentile } from '../src/cli/format'
export { Prng } from '../src/cli/demo/prng'

export const KiB = 1024
export const MiB = 1024 * KiB

/** `execFile` as a promise of `{ stdout, stderr }`. */
export const execFileP = promisify(execFile)

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms))

// ---------------------------------------------------------------------------------------
// Options

/** A script's options: `flag` takes no value, `value` takes one (`--name V` or `--name=V`). */
export type OptionSpec<K extends string> = Record<K, 'flag' | 'value'>

export interface ParsedOptions<K extends string> {
  flag(name: K): boolean
  value(name: K): string | undefined
  /** The option as a number, `fallback` when absent; throws when it is not a number. */
  number(name: K, fallback: number): number
}

/**
 * Parses `argv` (the script's arguments) against `spec`; `--help`/`-h` prints `usage`
 * and exits; an unknown option or a missing value throws with the usage.
 */
export function parseOptions<K extends string>(argv: string[], spec: OptionSpec<K>, usage: string): ParsedOptions<K> {
  const options: Record<string, { type: 'boolean' | 'string'; short?: string }> = { help: { type: 'boolean', short: 'h' } }
  for (const [name, kind] of Object.entries(spec)) options[name] = { type: kind === 'flag' ? 'boolean' : 'string' }
  let values: Record<string, string | boolean | undefined>
  try {
    values = parseArgs({ args: argv, options, strict: true, allowPositionals: false }).values as Record<string, string | boolean | undefined>
  } catch (e) {
    throw new Error(`${(e as Error).message}\n${usage}`)
  }
  if (values.help) {
    console.log(usage)
    process.exit(0)
  }
  return {
    flag: (name) => values[name] === true,
    value: (name) => values[name] as string | undefined,
    number(name, fallback) {
      const v = values[name]
      if (v === undefined) return fallback
      const n = Number(v)
      if (!Number.isFinite(n)) throw new Error(`--${name} needs a number, got ${v}`)
      return n
    },
  }
}

// ---------------------------------------------------------------------------------------
// Report

/** A number with thousands separators and `digits` decimals; '–' for none. */
export function fmt(x: number | null, digits = 0): string {
  if (x === null || !Number.isFinite(x)) return '–'
  return x.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits })
}

/** "median (min–max)" of ratios (the median alone for one), each written by `format`. */
export function spread(xs: number[], digits = 2, format: (x: number) => string = (x) => x.toFixed(digits)): string {
  const s = [...xs].sort((a, b) => a - b)
  const median = s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2
  return s.length > 1 ? `${format(median)} (${format(s[0])}–${format(s[s.length - 1])})` : format(median)
}

/**
 * Rows as aligned columns: the first `textColumns` left-aligned, the others (figures)
 * right-aligned; with `rule`, a line of dashes under the header row.
 */
export function table(rows: string[][], textColumns = 1, rule = false): string {
  const w = rows[0].map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length)))
  const line = (r: string[]): string => r.map((c, i) => (i < textColumns ? c.padEnd(w[i]) : c.padStart(w[i]))).join('  ')
  const lines = rows.map(line)
  if (rule) lines.splice(1, 0, w.map((n) => '-'.repeat(n)).join('  '))
  return lines.join('\n')
}

// ---------------------------------------------------------------------------------------
// Files

/**
 * A fresh directory `prefix…` in `parent` (created if need be) for a run's files,
 * removed when the process exits, also after an error or on Ctrl-C / SIGTERM.
 * `onExit` runs first (to kill child processes, say).
 */
export function workDir(parent: string, prefix: string, onExit: () => void = () => {}): string {
  mkdirSync(parent, { recursive: true })
  const dir = mkdtempSync(join(parent, prefix))
  const cleanup = () => {
    onExit()
    rmSync(dir, { recursive: true, force: true })
  }
  process.on('exit', cleanup)
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    process.once(sig, () => {
      cleanup()
      process.exit(130)
    })
  }
  return dir
}

// ---------------------------------------------------------------------------------------
// The machine

/** Pressure stall information: the share of time something waited for CPU or I/O (avg10, %); null where the kernel has none. */
export interface Pressure {
  cpuSome10: number | null
  ioSome10: number | null
  ioFull10: number | null
}

export function pressure(): Pressure {
  const read = (resource: string, kind: string): number | null => {
    try {
      const m = new RegExp(`^${kind} avg10=([\\d.]+)`, 'm').exec(readFileSync(`/proc/pressure/${resource}`, 'utf8'))
      return m ? Number(m[1]) : null
    } catch {
      return null
    }
  }
  return { cpuSome10: read('cpu', 'some'), ioSome10: read('io', 'some'), ioFull10: read('io', 'full') }
}

/** How loaded the machine is now, in one line: PSI and the load average. */
export function loadLine(): string {
  const p = pressure()
  return `CPU pressure (some, avg10) ${p.cpuSome10 ?? '?'}%, I/O ${p.ioSome10 ?? '?'}%, load average ${os.loadavg().map((x) => x.toFixed(2)).join(' ')}`
}

/**
 * CPU seconds the whole machine has spent busy since boot, over all CPUs: user, nice,
 * system, hard and soft interrupts from `/proc/stat` (not idle, I/O wait or steal).
 * The difference over a run counts the work done for it wherever it ran: in the
 * program, in interrupt context on any CPU, on kernel threads. `/proc/stat` counts in
 * USER_HZ ticks, 100 a second on Linux whatever the kernel's own rate.
 */
export function machineBusySeconds(stat = readFileSync('/proc/stat', 'utf8')): number {
  const [user, nice, system, , , irq, softirq] = stat.slice(0, stat.indexOf('\n')).trim().split(/\s+/).slice(1).map(Number)
  return (user + nice + system + irq + softirq) / 100
}

/** The load before a run, to be compared with the load after it. */
export interface LoadReading {
  loadavg: number[]
  pressure: Pressure
}

export function readLoad(): LoadReading {
  return { loadavg: os.loadavg(), pressure: pressure() }
}

/** "load average a -> b; CPU pressure x% -> y%, I/O …": how the load changed over a run. */
export function loadChange(before: LoadReading, after: LoadReading): string {
  return (
    `load average ${before.loadavg.map((x) => x.toFixed(2)).join(' ')} -> ${after.loadavg.map((x) => x.toFixed(2)).join(' ')}; ` +
    `CPU pressure (some, avg10) ${before.pressure.cpuSome10}% -> ${after.pressure.cpuSome10}%, I/O ${before.pressure.ioSome10}% -> ${after.pressure.ioSome10}%`
  )
}

/** What the machine is: for the report's first line and the JSON output. */
export function machine(): { nproc: number; cpuModel: string | null; kernel: string; node: string } {
  return { nproc: os.availableParallelism(), cpuModel: os.cpus()[0]?.model ?? null, kernel: os.release(), node: process.version }
}
