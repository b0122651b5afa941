/**
 * Mirror members: the {@link Member} seam and what plugs into it.
 *
 * @module
 */
export type { Member, MemberSpec, OpenMember } from './types'
export { FileMember, openFileMember } from './file'
export { DelegatingMember } from './delegating'
export { SlowMember } from './slowed'
export { zeroFill } from './zero-fill'
