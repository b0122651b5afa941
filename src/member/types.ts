/**
 * Mirror members: where a mirror's copies of the data live. A member is anything that
 * reads, writes and flushes aligned blocks at offsets; the mirror never needs more, so
 * local files, block devices and remote disks (NBD) all plug in the same way. A member
 * may also zero a range cheaply (`discard`, `writeZeroes`); one without them gets
 * zeroes written through `write`.
 *
 * @module
 */

/** The interface every mirror member implements. */
export interface Member {
  /** Where the member is, for messages and {@link Mirror.members}: a path or a URL. */
  readonly path: string
  /** Bytes the member holds; at least the mirror's size. */
  readonly size: number
  /** Offsets, lengths and buffer addresses must be multiples of this. */
  readonly alignment: number
  /** Reads `target.length` bytes at `offset`. */
  read(target: Uint8Array, offset: number): Promise<void>
  /** Writes `data` at `offset`; `data` is left alone until the promise settles. */
  write(data: Uint8Array, offset: number): Promise<void>
  /** Makes every completed write durable (fdatasync, or a FLUSH on a remote disk). */
  flush(): Promise<void>
  /**
   * Optional: makes `length` bytes at `offset` read as zeroes and gives their storage
   * back where it can (a hole punched in a file, an unmapping zeroing on a device, an
   * NBD `WRITE_ZEROES` that may trim). Durable, like a write, after {@link flush}.
   * Without it the mirror writes zeroes through {@link write}.
   */
  discard?(offset: number, length: number): Promise<void>
  /**
   * Optional: makes `length` bytes at `offset` read as zeroes, as cheaply as the medium
   * allows (the storage may be given back). Durable, like a write, after {@link flush}.
   * Without it the mirror writes zeroes through {@link write}.
   */
  writeZeroes?(offset: number, length: number): Promise<void>
  /** Waits for writes in flight and releases the member. */
  close(): Promise<void>
}

/** What a mirror knows of a member when it asks for it to be opened. */
export interface MemberSpec {
  /** The member's path (or URL) as the mirror records it. */
  path: string
  /** Whether the member is write-mostly. */
  writeMostly: boolean
  /** The member's slot in the mirror. */
  index: number
}

/** Opens a member; {@link Mirror.create} and {@link Mirror.open} take one to plug in other kinds. */
export type OpenMember = (spec: MemberSpec) => Promise<Member>
