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
export { NbdMember, listNbdExports, nbdOpener, openNbdOrFileMember } from './nbd/client'
export type { NbdExportInfo, NbdMemberOptions, NbdWriteOptions } from './nbd/client'
export { serveNbd } from './nbd/server'
export type { NbdServer, NbdTarget, ServeNbdOptions } from './nbd/server'
export { NbdError, formatNbdUrl, isNbdUrl, parseNbdUrl } from './nbd/protocol'
export type { BlockSize, NbdAddress } from './nbd/protocol'
export { COUNTER_MAX, NEEDED, RESYNC } from './counters'
export { decode as decodeSuperblock, encode as encodeSuperblock, mdadmUuid } from './superblock'
export type { DecodeOptions, Superblock, SuperblockInput } from './superblock'
