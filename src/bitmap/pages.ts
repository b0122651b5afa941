/**
 * The page image of a bitmap file and the writes that carry it to disk.
 *
 * The whole file lives in memory as one aligned buffer; pages (4096 bytes) are the
 * unit of I/O. Each page has two attributes, as in Linux md:
 *
 * - DIRTY: bits were set in it; it must reach the disk before the writes those bits
 *   cover may be issued (the "unplug").
 * - NEEDWRITE: bits were cleared in it; it may be written lazily (by the daemon).
 *
 * md's third, PENDING (a write in flight), is the page's chain of writes here:
 * {@link PageImage.settled} waits for it.
 *
 * Writes of one page are chained, never concurrent: a later write must not be
 * overtaken by an earlier snapshot (an old image with a bit still clear landing after
 * the one that set it would lose the bit). Each write takes its snapshot of the page
 * when it is issued, so it carries every change made before that moment.
 *
 * @internal
 * @module
 */
import type { PageStore } from '../io/page-store'
import { allocAligned } from '../io/aligned'

export const PAGE_SIZE = 4096

const DIRTY = 1
const NEEDWRITE = 2

export class PageImage {
  readonly pages: number
  private readonly attrs: Uint8Array
  private readonly tails: Promise<void>[]
  /** Writes of each page queued or in flight (its tail not yet resolved). */
  private readonly writing: Uint32Array
  /** Page writes issued so far. */
  pagesWritten = 0

  constructor(
    private readonly store: PageStore,
    /** The whole file, aligned for direct I/O. */
    readonly image: Uint8Array,
    /** Called once per failed page write; the write's waiters are released anyway. */
    private readonly onError: (e: unknown) => void,
  ) {
    this.pages = Math.ceil(image.length / PAGE_SIZE)
    this.attrs = new Uint8Array(this.pages)
    this.tails = Array.from({ length: this.pages }, () => Promise.resolve())
    this.writing = new Uint32Array(this.pages)
  }

  /** The page holding byte `offset` of the file. */
  static pageOf(offset: number): number {
    return Math.floor(offset / PAGE_SIZE)
  }

  markDirty(page: number): void {
    this.attrs[page] |= DIRTY
  }
  markNeedWrite(page: number): void {
    this.attrs[page] |= NEEDWRITE
  }
  isDirty(page: number): boolean {
    return (this.attrs[page] & DIRTY) !== 0
  }

  /** Resolves when every write of the page issued so far has completed. */
  settled(page: number): Promise<void> {
    return this.tails[page]
  }

  /** Whether every write of the page issued so far has completed ({@link settled} has resolved), told at once. */
  isSettled(page: number): boolean {
    return this.writing[page] === 0
  }

  /** Queues a write of the page; it carries the image as it is when the write is issued. */
  write(page: number): Promise<void> {
    this.writing[page]++
    const tail = this.tails[page].then(async () => {
      await this.issue(page)
      this.writing[page]--
    })
    this.tails[page] = tail
    return tail
  }

  private async issue(page: number): Promise<void> {
    // Both attributes are satisfied by this write: the snapshot includes every change.
    this.attrs[page] &= ~(DIRTY | NEEDWRITE)
    const start = page * PAGE_SIZE
    const len = Math.min(PAGE_SIZE, this.image.length - start)
    const snapshot = allocAligned(len, this.store.alignment)
    snapshot.set(this.image.subarray(start, start + len))
    this.pagesWritten++
    try {
      await this.store.write(snapshot, start)
    } catch (e) {
      this.onError(e)
    }
  }

  /** Writes every DIRTY page and waits for them: the unplug. */
  async flushDirty(): Promise<void> {
    const writes: Promise<void>[] = []
    for (let p = 0; p < this.pages; p++) if (this.attrs[p] & DIRTY) writes.push(this.write(p))
    await Promise.all(writes)
  }

  /** Writes every NEEDWRITE page and waits for them. */
  async flushNeedWrite(): Promise<void> {
    const writes: Promise<void>[] = []
    for (let p = 0; p < this.pages; p++) if (this.attrs[p] & NEEDWRITE) writes.push(this.write(p))
    await Promise.all(writes)
  }

  /** Waits for every write issued so far. */
  async settledAll(): Promise<void> {
    await Promise.all(this.tails)
  }
}
