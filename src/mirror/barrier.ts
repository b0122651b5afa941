/**
 * The resync barrier, per chunk: a resync copying a chunk and a write to that chunk
 * never overlap. Without it a copy could read the old data from the source, a write
 * could then land on every member, and the copy would put the old data back on the
 * targets: members different, bit about to be cleared.
 *
 * Writers count in; a resync locks a chunk, which holds new writers back and waits
 * for the ones inside to leave (a write leaves only once every member, write-mostly
 * ones included, completed it). A writer enters all its chunks at once, in one step,
 * so a writer never holds some chunks while it waits for others: no deadlock.
 *
 * @module
 */
export class ChunkBarrier {
  private readonly writers = new Map<number, number>()
  private readonly locked = new Set<number>()
  private waiters: (() => void)[] = []
  private inside = 0

  /** Enters chunks `first..last` for a write, once none of them is locked. */
  async enterWrite(first: number, last: number): Promise<void> {
    while (!this.tryEnterWrite(first, last)) await this.wait()
  }

  /**
   * {@link enterWrite} with no wait: enters chunks `first..last` and returns true if
   * none of them is locked; returns false, having changed nothing, if one is.
   */
  tryEnterWrite(first: number, last: number): boolean {
    if (this.anyLocked(first, last)) return false
    for (let c = first; c <= last; c++) this.writers.set(c, (this.writers.get(c) ?? 0) + 1)
    this.inside++
    return true
  }

  exitWrite(first: number, last: number): void {
    for (let c = first; c <= last; c++) {
      const n = (this.writers.get(c) ?? 0) - 1
      if (n > 0) this.writers.set(c, n)
      else this.writers.delete(c)
    }
    this.inside--
    this.wake()
  }

  /** Locks a chunk for a resync: new writers wait; resolves once no writer is inside. */
  async lockSync(chunk: number): Promise<void> {
    while (this.locked.has(chunk)) await this.wait()
    this.locked.add(chunk)
    while (this.writers.has(chunk)) await this.wait()
  }

  unlockSync(chunk: number): void {
    this.locked.delete(chunk)
    this.wake()
  }

  /** Resolves once no write is inside. */
  async idle(): Promise<void> {
    while (this.inside > 0) await this.wait()
  }

  private anyLocked(first: number, last: number): boolean {
    if (this.locked.size === 0) return false
    for (const c of this.locked) if (c >= first && c <= last) return true
    return false
  }

  private wait(): Promise<void> {
    return new Promise((resolve) => this.waiters.push(resolve))
  }

  private wake(): void {
    if (this.waiters.length) for (const w of this.waiters.splice(0)) w()
  }
}
