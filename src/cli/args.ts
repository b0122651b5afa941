/**
 * Argument parsing for the `md-bitmap` command: node's `util.parseArgs` with usage
 * errors (exit 2) instead of its exceptions, and byte sizes with K/M/G/T suffixes.
 *
 * @internal
 * @module
 */
import { parseArgs } from 'node:util'
import { usage } from './errors'

/** An option: a string value or a boolean switch; `multiple`: repeatable, its values gathered in an array. */
export type OptionSpec = { type: 'string' | 'boolean'; short?: string; multiple?: boolean }

/** Options every command takes. */
export const COMMON_OPTIONS = { help: { type: 'boolean', short: 'h' } } as const

export interface Parsed {
  values: Record<string, string | boolean | undefined>
  positionals: string[]
}

/**
 * Parses `argv` (the words after the command) against `options`; unknown options,
 * missing values and too many or too few positionals are usage errors.
 */
export function parse(command: string, argv: string[], options: Record<string, OptionSpec>, positionals: { min: number; max: number; names: string }): Parsed {
  let parsed
  try {
    parsed = parseArgs({ args: argv, options: { ...COMMON_OPTIONS, ...options }, allowPositionals: true, strict: true })
  } catch (e) {
    throw usage(cleanParseError((e as Error).message), command)
  }
  const values = parsed.values as Record<string, string | boolean | undefined>
  if (values.help) return { values, positionals: parsed.positionals }
  const n = parsed.positionals.length
  if (n < positionals.min) throw usage(`${command} needs ${positionals.names}`, command)
  if (n > positionals.max) throw usage(`${command}: unexpected argument "${parsed.positionals[positionals.max]}"`, command)
  return { values, positionals: parsed.positionals }
}

function cleanParseError(message: string): string {
  // parseArgs messages end with advice about '--' that does not apply here.
  return message.replace(/\. To specify a positional argument.*$/s, '').replace(/\.$/, '')
}

const UNITS: Record<string, number> = { '': 1, K: 2 ** 10, M: 2 ** 20, G: 2 ** 30, T: 2 ** 40, P: 2 ** 50 }

/**
 * A byte size: digits (optionally with a fraction) and an optional K, M, G, T or P
 * suffix, powers of 1024, case-insensitive, with an optional `iB`/`B` (`10G`, `64MiB`,
 * `1.5g`, `4096`). The result must be a whole number of bytes.
 */
export function parseSize(text: string, option: string, command: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(?:i?b)?\s*$/i.exec(text)
  const bytes = m ? Number(m[1]) * UNITS[m[2].toUpperCase()] : NaN
  if (!m || !Number.isSafeInteger(bytes)) {
    throw usage(`${option} "${text}" is not a size: give bytes with an optional K, M, G or T suffix (powers of 1024), e.g. 10G`, command)
  }
  return bytes
}

/** `--lock-wait MS` (serve, resync): the open's `lockWaitMs`, or undefined when not given. */
export function lockWaitOf(values: Parsed['values'], command: string): number | undefined {
  return values['lock-wait'] === undefined ? undefined : parseInteger(values['lock-wait'] as string, '--lock-wait', command, 0, 3_600_000)
}

/** A non-negative integer option within [min, max]. */
export function parseInteger(text: string, option: string, command: string, min: number, max: number): number {
  const n = /^\s*\d+\s*$/.test(text) ? Number(text) : NaN
  if (!Number.isSafeInteger(n) || n < min || n > max) {
    throw usage(`${option} "${text}" must be an integer from ${min} to ${max}`, command)
  }
  return n
}

/** A non-negative number (fractions allowed) within [min, max]. */
export function parseNumber(text: string, option: string, command: string, min: number, max: number): number {
  const n = /^\s*\d+(\.\d+)?\s*$/.test(text) ? Number(text) : NaN
  if (!Number.isFinite(n) || n < min || n > max) {
    throw usage(`${option} "${text}" must be a number from ${min} to ${max}`, command)
  }
  return n
}
