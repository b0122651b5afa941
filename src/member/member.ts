/**
 * Mirror members: where a mirror's copies of the data live. A member is anything that
 * reads, writes and flushes aligned blocks at offsets; the mirror never needs more, so
 * local files, block devices and remote disks (NBD) all plug in the same way.
 *
 * @module
 */
import { open as openFile, stat } from 'node:fs/promises'
import { MdBitmapError } from '../errors'
import { PageStore } from '../io/page-store'

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

/**
 * A member on a local regular file or a whole block device, through the native
 * direct-I/O store. The file may be sparse; a block device is opened exclusively.
 */
export class FileMember implements Member {
  private constructor(
    readonly path: string,
    private readonly store: PageStore,
  ) {}

  /** Opens an existing file or block device. */
  static async open(path: string): Promise<FileMember> {
    return new FileMember(path, await PageStore.open(path, { mode: 'data' }))
  }

  /**
   * Creates `path` as a sparse file of `size` bytes if it does not exist; an existing
   * file is kept. Returns whether the file was created.
   */
  static async ensure(path: string, size: number): Promise<boolean> {
    const st = await stat(path).catch((e: NodeJS.ErrnoException) => {
      if (e.code === 'ENOENT') return undefined
      throw new MdBitmapError(e.code ?? 'EIO', `cannot stat member ${path}: ${e.message}`, { cause: e })
    })
    if (st) return false
    const fh = await openFile(path, 'wx').catch((e: NodeJS.ErrnoException) => {
      throw new MdBitmapError(e.code ?? 'EIO', `cannot create member ${path}: ${e.message}`, { cause: e })
    })
    try {
      await fh.truncate(size)
      await fh.sync()
    } finally {
      await fh.close()
    }
    return true
  }

  get size(): number {
    return this.store.size
  }
  get alignment(): number {
    return this.store.alignment
  }
  /** `'direct'`, or `'buffered'` where the filesystem refuses O_DIRECT. */
  get mode(): string {
    return this.store.mode
  }

  read(target: Uint8Array, offset: number): Promise<void> {
    return this.store.read(target, offset)
  }
  write(data: Uint8Array, offset: number): Promise<void> {
    return this.store.write(data, offset)
  }
  flush(): Promise<void> {
    return this.store.sync()
  }
  close(): Promise<void> {
    return this.store.close()
  }
}

/** The default {@link OpenMember}: local files and block devices. */
export const openFileMember: OpenMember = (spec) => FileMember.open(spec.path)

/**
 * A member whose writes complete `delayMs` later than the inner member's: a stand-in
 * for a distant write-mostly replica in demos, tests and benchmarks. The data is real;
 * only the completion is late.
 */
export class SlowMember implements Member {
  constructor(
    private readonly inner: Member,
    /** Extra milliseconds before each write completes. */
    public delayMs: number,
  ) {}
  get path(): string {
    return this.inner.path
  }
  get size(): number {
    return this.inner.size
  }
  get alignment(): number {
    return this.inner.alignment
  }
  read(target: Uint8Array, offset: number): Promise<void> {
    return this.inner.read(target, offset)
  }
  async write(data: Uint8Array, offset: number): Promise<void> {
    if (this.delayMs > 0) await new Promise((r) => setTimeout(r, this.delayMs))
    await this.inner.write(data, offset)
  }
  flush(): Promise<void> {
    return this.inner.flush()
  }
  close(): Promise<void> {
    return this.inner.close()
  }
}
