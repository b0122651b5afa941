/**
 * File members: a mirror's copy of the data on a local regular file (sparse allowed)
 * or a whole block device, through the native direct-I/O page store.
 *
 * @module
 */
import type { MdBitmapError } from '../errors'
import { createSparseFile } from '../io/files'
import { PageStore } from '../io/page-store'
import type { Member, OpenMember } from './types'

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
    return new FileMember(path, await PageStore.open(path, { mode: 'plain' }))
  }

  /**
   * Creates `path` as a sparse file of `size` bytes if it does not exist; an existing
   * file is kept. Returns whether the file was created.
   */
  static async ensure(path: string, size: number): Promise<boolean> {
    try {
      await createSparseFile(path, size)
      return true
    } catch (e) {
      if ((e as MdBitmapError).code === 'EEXIST') return false
      throw e
    }
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
