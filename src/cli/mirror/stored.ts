/**
 * `mirror detail` of a mirror nobody holds: read from its files under its lock, without
 * opening it (no event count bumped, no member opened or marked), released at once.
 *
 * @internal
 * @module
 */
import { describeStored, type MirrorDetail, type TrackingDetail } from '../../control/detail'
import { STATE_STALE, bitVersion, dirtyCount } from '../../bitmap/superblock'
import { readMetadata } from '../../mirror/metadata'
import { lockMirror } from '../../mirror/owner'
import { readBitmapFile } from '../bitmap-file'

/** The detail of the mirror whose metadata is `metadataPath`, from its files. */
export async function storedDetail(metadataPath: string, bitmapPath: string | undefined): Promise<MirrorDetail> {
  const lock = await lockMirror(metadataPath)
  try {
    const meta = await readMetadata(metadataPath)
    const all = Math.ceil(meta.size / meta.chunkSize)
    const path = bitmapPath ?? meta.bitmap
    let dirty: number
    if (path === null) {
      dirty = meta.resyncFrom !== null || !meta.clean ? all : 0
    } else {
      const f = await readBitmapFile(path)
      // A stale bitmap, or one behind the metadata, marks every chunk at the next open.
      const stale = (f.sb.state & STATE_STALE) !== 0 || f.sb.events < meta.events
      dirty = stale ? all : dirtyCount(f.bits, f.bitsInFile, bitVersion(f.sb))
    }
    // Each tracking bitmap as its file says; one that cannot be read is listed by name and path.
    const tracking: TrackingDetail[] = []
    for (const { name, path: file } of meta.tracking ?? []) {
      try {
        const f = await readBitmapFile(file)
        tracking.push({ name, path: file, chunkSize: f.sb.chunkSize, dirtyChunks: dirtyCount(f.bits, f.bitsInFile, bitVersion(f.sb)) })
      } catch {
        tracking.push({ name, path: file })
      }
    }
    return describeStored(meta, dirty, tracking)
  } finally {
    lock.release({ unlink: true })
  }
}
