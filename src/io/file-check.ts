/**
 * What a file is made of on disk: its extent map (FIEMAP, or FIBMAP), and whether it
 * may be written in place (file mode) or on its block device directly (device mode).
 *
 * @module
 */
import type { CheckInfo, ExtentMapInfo } from '../native/binding'
import { binding, native } from '../native'

export type { CheckInfo, ExtentInfo, ExtentMapInfo, ProblemInfo } from '../native/binding'

/**
 * The extents of a file, from FIEMAP (or FIBMAP where FIEMAP is missing).
 * Rejects with `EFIEMAP_UNSUPPORTED` on filesystems that cannot map blocks (tmpfs).
 */
export function extents(path: string): Promise<ExtentMapInfo> {
  return native(() => binding().extents(path))
}

/**
 * Judges a file for in-place page writes (`fileModeOk`) and for device mode
 * (`deviceModeOk`), listing every problem found with its code and where it is.
 */
export function check(path: string): Promise<CheckInfo> {
  return native(() => binding().check(path))
}
