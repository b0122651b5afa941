/**
 * Human-readable numbers for the command's reports (not for the mdadm report, whose
 * formats are replicated in `examine.ts`).
 *
 * @internal
 * @module
 */

/** Bytes in binary units with up to three significant decimals: `512 B`, `64 MiB`, `1.5 GiB`. */
export function bytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB', 'EiB']
  let i = 0
  let v = n
  while (Math.abs(v) >= 1024 && i < units.length - 1) {
    v /= 1024
    i++
  }
  if (i === 0) return `${n} B`
  const text = v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2)
  return `${text.replace(/\.0+$|(\.\d*?)0+$/, '$1')} ${units[i]}`
}

/** A percentage with one decimal. */
export function percent(part: number, whole: number): string {
  return `${whole > 0 ? ((100 * part) / whole).toFixed(1) : '0.0'}%`
}

/** Milliseconds: `0.42 ms`, `12.3 ms`, `1.52 s`. */
export function ms(v: number): string {
  if (v >= 1000) return `${(v / 1000).toFixed(2)} s`
  if (v >= 10) return `${v.toFixed(1)} ms`
  return `${v.toFixed(2)} ms`
}

/** A byte rate: `152 MiB/s`. */
export function rate(bytesPerSecond: number): string {
  return `${bytes(Math.round(bytesPerSecond))}/s`
}

/** Left-aligned columns; every row has the same number of cells. */
export function table(rows: string[][], gap = 2): string[] {
  const widths: number[] = []
  for (const r of rows) r.forEach((c, i) => (widths[i] = Math.max(widths[i] ?? 0, c.length)))
  return rows.map((r) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i] + gap))).join('').trimEnd())
}

/** The value of the p-th percentile (0..100) of `values` (nearest rank); NaN when empty. */
export function percentile(values: number[], p: number): number {
  if (values.length === 0) return NaN
  const sorted = [...values].sort((a, b) => a - b)
  const rank = Math.min(sorted.length, Math.max(1, Math.ceil((p / 100) * sorted.length)))
  return sorted[rank - 1]
}
