/**
 * Test access to what a {@link Bitmap} keeps private: a chunk's counter, and a daemon
 * pass on demand instead of waiting for the timer. Not part of the API: not exported
 * from the package, and stripped from the published declarations (`stripInternal`).
 *
 * @internal
 * @module
 */
import { bitmapInternals, type Bitmap } from './bitmap'

/**
 * The counter of the chunk holding `offset`: count | RESYNC | NEEDED (see `counters.ts`).
 *
 * @internal
 */
export function chunkCounter(bitmap: Bitmap, offset: number): number {
  return bitmap[bitmapInternals]().counter(offset)
}

/**
 * Runs one daemon pass now (or joins the one running); resolves with how many chunks
 * changed state.
 *
 * @internal
 */
export function daemonPass(bitmap: Bitmap): Promise<number> {
  return bitmap[bitmapInternals]().daemonPass()
}
