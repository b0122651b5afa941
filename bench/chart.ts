/**
 * Grouped horizontal bar charts as standalone SVG, for docs/benchmarks.md: no
 * dependency, text that stays selectable, one bar per measured value.
 */

export interface BarGroup {
  label: string
  bars: { label: string; value: number }[]
}

export interface ChartOptions {
  title: string
  /** Unit shown after each value and on the axis. */
  unit: string
  /** Log scale: for values spanning orders of magnitude (latencies). */
  log?: boolean
  /** A note under the chart: where the data came from. */
  note?: string
}

const COLORS = ['#4c78a8', '#f58518', '#54a24b', '#e45756', '#72b7b2', '#b279a2']

function esc(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;')
}

function fmt(v: number): string {
  if (v >= 100) return Math.round(v).toLocaleString('en-US')
  if (v >= 10) return v.toFixed(1)
  return v.toFixed(2)
}

export function barChart(groups: BarGroup[], o: ChartOptions): string {
  const labelW = 250
  const plotW = 460
  const valueW = 90
  const barH = 16
  const gap = 4
  const groupGap = 18
  const top = 44
  const width = labelW + plotW + valueW + 20
  const all = groups.flatMap((g) => g.bars.map((b) => b.value)).filter((v) => v > 0)
  const max = Math.max(...all)
  const min = Math.min(...all)
  const lo = o.log ? 10 ** Math.floor(Math.log10(min)) : 0
  const hi = o.log ? 10 ** Math.ceil(Math.log10(max)) : max * 1.05
  const scale = (v: number) => (o.log ? ((Math.log10(Math.max(v, lo)) - Math.log10(lo)) / (Math.log10(hi) - Math.log10(lo))) * plotW : (v / hi) * plotW)
  const parts: string[] = []
  let y = top
  for (const g of groups) {
    parts.push(`<text x="10" y="${y + 12}" font-weight="bold">${esc(g.label)}</text>`)
    y += 18
    g.bars.forEach((b, i) => {
      const w = Math.max(1, scale(b.value))
      parts.push(`<text x="${labelW - 6}" y="${y + 12}" text-anchor="end">${esc(b.label)}</text>`)
      parts.push(`<rect x="${labelW}" y="${y}" width="${w.toFixed(1)}" height="${barH}" fill="${COLORS[i % COLORS.length]}"/>`)
      parts.push(`<text x="${labelW + w + 4}" y="${y + 12}">${fmt(b.value)} ${esc(o.unit)}</text>`)
      y += barH + gap
    })
    y += groupGap
  }
  const axisY = y - groupGap + 6
  const ticks = o.log
    ? Array.from({ length: Math.round(Math.log10(hi / lo)) + 1 }, (_, i) => lo * 10 ** i)
    : Array.from({ length: 5 }, (_, i) => (hi / 4) * i)
  parts.push(`<line x1="${labelW}" y1="${top - 4}" x2="${labelW}" y2="${axisY}" stroke="#888"/>`)
  for (const v of ticks) {
    const x = labelW + scale(v)
    parts.push(`<line x1="${x.toFixed(1)}" y1="${axisY}" x2="${x.toFixed(1)}" y2="${axisY + 4}" stroke="#888"/>`)
    parts.push(`<text x="${x.toFixed(1)}" y="${axisY + 16}" text-anchor="middle" fill="#555">${fmt(v)}</text>`)
  }
  parts.push(`<text x="${labelW + plotW / 2}" y="${axisY + 32}" text-anchor="middle" fill="#555">${esc(o.unit)}${o.log ? ' (log scale)' : ''}</text>`)
  const height = axisY + (o.note ? 58 : 42)
  if (o.note) parts.push(`<text x="10" y="${height - 10}" fill="#555" font-size="11">${esc(o.note)}</text>`)
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="sans-serif" font-size="12">`,
    `<rect width="100%" height="100%" fill="white"/>`,
    `<text x="10" y="22" font-size="15" font-weight="bold">${esc(o.title)}</text>`,
    ...parts,
    '</svg>',
    '',
  ].join('\n')
}
