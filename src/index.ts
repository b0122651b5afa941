/**
 * md-bitmap: write-intent bitmaps compatible with Linux md, and write-behind mirrors,
 * for Node.js.
 *
 * @packageDocumentation
 */
export { MdBitmapError } from './errors'
export { PageStore, allocAligned, check, extents } from './store'
export type { CheckInfo, ExtentInfo, ExtentMapInfo, PageStoreOptions, ProblemInfo, StoreMode } from './store'
