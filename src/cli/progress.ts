/**
 * Progress of a long operation: a bar rewritten in place (`\r`) when stderr is a
 * terminal, otherwise plain lines, at most one every few seconds, that read well in a
 * log file.
 *
 * @internal
 * @module
 */
import type { ResyncProgress } from '../mirror/types'
import { bytes, rate } from './format'
import type { Io } from './io'

export interface ProgressReporter {
  update(p: ResyncProgress): void
  /** Ends the bar's line (on a terminal); prints nothing more otherwise. */
  done(): void
}

/** A reporter on `io.err`; `lineIntervalMs` spaces the plain lines. */
export function progressReporter(io: Io, label: string, lineIntervalMs = 2000): ProgressReporter {
  let drawn = false
  let lastLine = -Infinity
  let lastText = ''
  let finished = false
  const summary = (p: ResyncProgress) => {
    const pct = p.bytesTotal > 0 ? (100 * p.bytesCopied) / p.bytesTotal : 100
    return {
      pct,
      text: `${pct.toFixed(1).padStart(5)}%  ${bytes(p.bytesCopied)} of ${bytes(p.bytesTotal)}  chunks ${p.chunksDone}/${p.chunksTotal}  ${rate(p.rate)}`,
    }
  }
  if (io.errIsTTY) {
    return {
      update(p) {
        const { pct, text } = summary(p)
        const width = Math.max(10, Math.min(40, io.columns - text.length - label.length - 6))
        const filled = Math.round((width * Math.min(100, pct)) / 100)
        const line = `${label} [${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${text}`
        io.err('\r' + line.slice(0, Math.max(1, io.columns - 1)).padEnd(Math.max(1, io.columns - 1)))
        drawn = true
      },
      done() {
        if (drawn) io.err('\n')
        drawn = false
      },
    }
  }
  return {
    update(p) {
      const { text } = summary(p)
      const now = Date.now()
      const last = p.chunksDone === p.chunksTotal
      if (finished || text === lastText || (!last && now - lastLine < lineIntervalMs)) return
      finished = last
      lastLine = now
      lastText = text
      io.err(`${label} ${text.trim()}\n`)
    },
    done() {},
  }
}
