/**
 * The failing write of the kick tests (bitmap-device.spec.ts and its child
 * fixtures/bitmap-kick-listener.ts): the device is cut after page 0, so a write of
 * page 1 fails and kicks the bitmap.
 */
import type { Bitmap } from '../../src'

/**
 * Starts a startWrite whose bit is in page 1 (chunk 35000) and, one per tick until the
 * bitmap is kicked, startWrites into page 0 (the superblock's page, still writable),
 * then one more. Returns them unawaited: the failing one, and page 0's.
 */
export async function failPageOne(b: Bitmap, chunkSize: number): Promise<{ failing: Promise<void>; page0: Promise<void>[] }> {
  const failing = b.startWrite(35000 * chunkSize, 512)
  const page0: Promise<void>[] = []
  for (let c = 1000; !b.stats().kicked && c < 30000; c++) {
    page0.push(b.startWrite(c * chunkSize, 512))
    await new Promise((r) => setImmediate(r))
  }
  page0.push(b.startWrite(999 * chunkSize, 512))
  return { failing, page0 }
}
