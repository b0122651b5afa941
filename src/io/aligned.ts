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
 * (never a copy, never an external buffer). Large buffers that are reused do direct
 * I/O faster from {@link allocHugePageBuffers}.
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
 * `count` zero-filled buffers of `size` bytes each, carved one after another from whole
 * 2 MiB pages of memory that the kernel is asked to back with transparent huge pages
 * (`MADV_HUGEPAGE`; crates/md-bitmap-io/src/huge_pages.rs). A direct read or write hands
 * the device each buffer as one physically contiguous segment, which on a virtio disk
 * ran 1.1–2.5× as fast as a buffer of scattered small pages (docs/benchmarks.md, "The
 * disk's two speeds are the buffer's pages" and "Huge-page buffers for callers"). For
 * large I/O buffers (a MiB and more) that are allocated once and reused.
 *
 * Each buffer starts `align` bytes (default 4096) or a multiple of them after the
 * previous one's start, so every one suits direct I/O with that alignment. The memory
 * is the buffers' bytes rounded up to whole 2 MiB pages, plus 2 MiB of address space
 * (never touched) to align them: ask for several buffers at once rather than one at a
 * time when each is smaller than 2 MiB. Where THP is `never` (or the kernel refuses the
 * advice) the memory is ordinary, and the buffers work as any other.
 *
 * ```ts
 * const bufs = allocHugePageBuffers(1 << 20, 8) // eight 1 MiB buffers on four huge pages
 * ```
 */
export function allocHugePageBuffers(size: number, count: number, align = 4096): Uint8Array[] {
  return hugePageBuffers(size, count, align, true)
}

/**
 * For the buffer pool, whose buffers are overwritten in full: {@link allocHugePageBuffers}
 * with the bytes not zeroed where the advice was refused (else they read as zero
 * anyway), and with `wholePages: false` no rounding up: the memory is the buffers' bytes
 * alone, its whole 2 MiB pages on huge pages and the rest (a last part shorter than
 * 2 MiB) on small ones, so that a length that does not divide 2 MiB costs no more
 * memory than its bytes.
 */
export function allocHugePageBuffersUninit(size: number, count: number, align: number, wholePages: boolean): Uint8Array[] {
  return hugePageBuffers(size, count, align, false, wholePages)
}

function hugePageBuffers(size: number, count: number, align: number, zeroed: boolean, wholePages = true): Uint8Array[] {
  checkAlloc(size, align)
  if (!Number.isSafeInteger(count) || count < 1) throw new MdBitmapError('EINVAL', `count must be a positive integer, got ${count}`)
  if (align > HUGE_PAGE) throw new MdBitmapError('EINVAL', `alignment must be at most ${HUGE_PAGE} (a huge page), got ${align}`)
  const stride = Math.ceil(size / align) * align
  const bytes = wholePages ? Math.max(1, Math.ceil((stride * count) / HUGE_PAGE)) * HUGE_PAGE : stride * count
  const region = zeroed ? allocAligned(bytes, HUGE_PAGE) : allocAlignedUninit(bytes, HUGE_PAGE)
  // Advises the whole 2 MiB pages inside the region (crates/md-bitmap-io/src/huge_pages.rs).
  binding().adviseHugePages(region)
  return Array.from({ length: count }, (_, i) => region.subarray(i * stride, i * stride + size))
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
