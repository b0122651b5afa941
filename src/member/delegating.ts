/**
 * The one base for member wrappers: every call goes to the wrapped member unless a
 * subclass overrides it. Slowed members, timing probes and fault injectors extend it
 * and override only what they change.
 *
 * @module
 */
import type { Member } from './types'
import { zeroFill } from './zero-fill'

/** A {@link Member} that passes every call to `inner`; extend it and override what you change. */
export class DelegatingMember implements Member {
  constructor(
    /** The wrapped member. */
    protected readonly inner: Member,
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
  write(data: Uint8Array, offset: number): Promise<void> {
    return this.inner.write(data, offset)
  }
  flush(): Promise<void> {
    return this.inner.flush()
  }
  discard(offset: number, length: number): Promise<void> {
    return this.inner.discard ? this.inner.discard(offset, length) : zeroFill(this, offset, length)
  }
  writeZeroes(offset: number, length: number): Promise<void> {
    return this.inner.writeZeroes ? this.inner.writeZeroes(offset, length) : zeroFill(this, offset, length)
  }
  close(): Promise<void> {
    return this.inner.close()
  }
}
