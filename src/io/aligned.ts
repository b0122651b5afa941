/**
 * Aligned buffers: memory whose address suits direct I/O.
 *
 * @module
 */
import { MdBitmapError } from '../errors'
import { binding } from '../native'

/**
 * A zero-filled `Uint8Array` of `size` bytes whose address is a multiple of `align`,
 * as direct I/O needs. It is a view into a slightly larger, ordinary `ArrayBuffer`
 * (never a copy, never an external buffer).
 */
export function allocAligned(size: number, align = 4096): Uint8Array {
  checkAlloc(size, align)
  return alignedView(new Uint8Array(size + align), size, align)
}

/**
 * Like {@link allocAligned}, but the bytes are not zeroed (`Buffer.allocUnsafeSlow`
 * memory): only for a buffer that is overwritten in full at once (a copy, a read target).
 */
export function allocAlignedUninit(size: number, align = 4096): Uint8Array {
  checkAlloc(size, align)
  return alignedView(Buffer.allocUnsafeSlow(size + align), size, align)
}

/** A transparent huge page: 2 MiB (x86-64, and arm64 with 4 KiB pages). */
export const HUGE_PAGE = 2 << 20

/**
 * `count` buffers of `size` bytes each, not zeroed, carved one after another from
 * whole 2 MiB pages of memory that the kernel is asked to back with transparent huge
 * pages (`MADV_HUGEPAGE`; crates/md-bitmap-io/src/huge_pages.rs). A direct read or
 * write then hands the device each buffer as one physically contiguous segment, which
 * on a virtio disk ran 2–2.5× as fast as into a buffer of scattered small pages
 * (docs/benchmarks.md). For large I/O buffers that are reused (the buffer pool's of a
 * MiB and more): the memory is the buffers' bytes rounded up to 2 MiB, plus 2 MiB of
 * address space (never touched) to align them. Where THP is off the memory is ordinary.
 */
export function allocHugePageBuffers(size: number, count: number): Uint8Array[] {
  checkAlloc(size, HUGE_PAGE)
  const whole = Math.ceil((size * count) / HUGE_PAGE) * HUGE_PAGE
  const region = allocAlignedUninit(whole, HUGE_PAGE)
  binding().adviseHugePages(region)
  return Array.from({ length: count }, (_, i) => region.subarray(i * size, (i + 1) * size))
}

function checkAlloc(size: number, align: number): void {
  if (!Number.isSafeInteger(size) || size < 0) throw new MdBitmapError('EINVAL', `size must be a non-negative integer, got ${size}`)
  if (!Number.isInteger(align) || align <= 0 || (align & (align - 1)) !== 0) {
    throw new MdBitmapError('EINVAL', `alignment must be a power of two, got ${align}`)
  }
}

function alignedView(backing: Uint8Array, size: number, align: number): Uint8Array {
  const offset = binding().alignmentOffset(backing, align)
  return new Uint8Array(backing.buffer, backing.byteOffset + offset, size)
}

/**
 * Where each ArrayBuffer's memory starts, modulo {@link START_MODULUS}: asked of the
 * addon once per buffer, not once per check (the mirror checks every write). An
 * ArrayBuffer's memory does not move once native code or `view.buffer` has seen it:
 * V8 moves a small typed array's bytes out of its heap for good at that moment.
 */
const starts = new WeakMap<ArrayBufferLike, number>()
const START_MODULUS = 1 << 20

/** Whether `view` starts at an address that is a multiple of `align`. */
export function isAligned(view: Uint8Array, align: number): boolean {
  const buffer = view.buffer
  // Alignments the cache cannot answer (and bad ones, which the addon refuses), and empty buffers.
  if (align > START_MODULUS || (align & (align - 1)) !== 0 || buffer.byteLength === 0) return binding().alignmentOffset(view, align) === 0
  let start = starts.get(buffer)
  if (start === undefined) {
    start = (START_MODULUS - binding().alignmentOffset(new Uint8Array(buffer), START_MODULUS)) % START_MODULUS
    starts.set(buffer, start)
  }
  return (start + view.byteOffset) % align === 0
}
