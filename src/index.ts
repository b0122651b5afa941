/**
 * md-bitmap: write-intent bitmaps compatible with Linux md, and write-behind mirrors,
 * for Node.js.
 *
 * @packageDocumentation
 */
export { ErrnoCode, LibraryErrorCode, MD_BITMAP_ERROR_CODES, MdBitmapError } from './errors'
export type { MdBitmapErrorCode } from './errors'
export { PageStore } from './io/page-store'
export { allocAligned, allocHugePageBuffers } from './io/aligned'
export { check, extents } from './io/file-check'
export type { CheckInfo, ExtentInfo, ExtentMapInfo, ProblemInfo } from './io/file-check'
export type { IoEngine, IoReaper, PageStoreOptions, StoreMode, SpinStats, StoreRequest, WriteThroughStats } from './io/page-store'
export { Bitmap } from './bitmap/bitmap'
export type { BitmapCreateOptions, BitmapEvents, BitmapOpenOptions, BitmapOpenReport, BitmapStats, ByteRange } from './bitmap/bitmap'
export { Mirror } from './mirror/mirror'
export type { TrackedBitmapInfo, TrackingRecord, TrackOptions } from './mirror/tracking'
export type {
  CheckOptions,
  CheckProgress,
  CheckReport,
  MemberFaultyEvent,
  MemberInfo,
  MemberOptions,
  MemberState,
  MirrorCreateOptions,
  MirrorEvents,
  MirrorOpenOptions,
  MirrorStats,
  ResyncOptions,
  ResyncProgress,
  ResyncReport,
} from './mirror/types'
export { DelegatingMember, FileMember, SlowMember, openFileMember } from './member'
export type { Member, MemberSpec, OpenMember } from './member'
export { NbdMember, listNbdExports, nbdOpener, openNbdOrFileMember } from './nbd/client'
export type { NbdExportInfo, NbdMemberOptions, NbdWriteOptions } from './nbd/client'
export { serveNbd } from './nbd/server'
export type { NbdServer, NbdTarget, ServeNbdOptions } from './nbd/server'
export { NbdError } from './nbd/protocol/errors'
export { formatNbdUrl, isNbdUrl, parseNbdUrl } from './nbd/protocol/url'
export type { NbdAddress } from './nbd/protocol/url'
export type { BlockSize } from './nbd/protocol/handshake'
export { parsePskFile, readClientTlsCredentials, readPskFile, readServerTlsCredentials } from './nbd/tls-credentials'
export type { NbdClientTlsOptions, NbdServerTlsCredentials } from './nbd/tls-credentials'
export { formatNbdUrlTls, parseNbdUrlTls } from './nbd/tls-url'
export type { NbdUrlTls } from './nbd/tls-url'
export { BASE_ALLOCATION, DIRTY_BITMAP_PREFIX, MD_STATE_DIRTY, NBD_STATE_HOLE, NBD_STATE_ZERO, QEMU_STATE_DIRTY, WRITE_INTENT, allocationContext, dirtyBitmapContext, mirrorMetaContexts, writeIntentContext } from './nbd/block-status'
export type { BlockStatusMember, BlockStatusMirror } from './nbd/block-status'
export type { MetaContext } from './nbd/meta-context'
export type { StatusExtent } from './nbd/protocol/structured-reply'
export { COUNTER_MAX, NEEDED, RESYNC } from './bitmap/counters'
export { decode as decodeSuperblock, encode as encodeSuperblock, mdadmUuid } from './bitmap/superblock'
export type { DecodeOptions, Superblock, SuperblockInput } from './bitmap/superblock'
