/**
 * md-bitmap: write-intent bitmaps compatible with Linux md, and write-behind mirrors,
 * for Node.js.
 *
 * @packageDocumentation
 */
export { MdBitmapError } from './errors'
export { PageStore, allocAligned, check, extents } from './store'
export type { CheckInfo, ExtentInfo, ExtentMapInfo, PageStoreOptions, ProblemInfo, StoreMode } from './store'
export { Bitmap } from './bitmap'
export type { BitmapStats, CreateOptions, OpenOptions, Range } from './bitmap'
export { Mirror } from './mirror'
export type {
  MemberInfo,
  MemberOptions,
  MemberState,
  MirrorCreateOptions,
  MirrorOpenOptions,
  MirrorStats,
  ResyncOptions,
  ResyncProgress,
  ResyncReport,
} from './mirror'
export { FileMember, SlowMember, openFileMember } from './member'
export type { Member, MemberSpec, OpenMember } from './member'
export { COUNTER_MAX, NEEDED, RESYNC } from './counters'
export { decode as decodeSuperblock, encode as encodeSuperblock, mdadmUuid } from './superblock'
export type { Superblock, SuperblockInput } from './superblock'
