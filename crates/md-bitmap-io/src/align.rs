//! Direct-I/O alignment, taken from the file and never assumed, and buffers that meet it.

use nix::libc;
use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AlignSource {
    /// statx(STATX_DIOALIGN): what the filesystem itself says it needs.
    Statx,
    /// The logical block size of the block device under the filesystem.
    BlockDevice,
    /// Neither answered: one page, which satisfies every device Linux drives.
    Default,
}

#[derive(Clone, Copy, Debug)]
pub struct DioAlignment {
    /// Alignment of the buffer's address in memory.
    pub memory: u64,
    /// Alignment of file offsets and lengths.
    pub offset: u64,
    pub source: AlignSource,
}

impl DioAlignment {
    /// One number that satisfies both constraints.
    pub fn both(&self) -> u64 {
        self.memory.max(self.offset)
    }
}

const STATX_DIOALIGN: u32 = 0x2000;

pub fn dio_alignment(file: &File) -> DioAlignment {
    unsafe {
        let mut stx: libc::statx = std::mem::zeroed();
        let r = libc::statx(file.as_raw_fd(), c"".as_ptr(), libc::AT_EMPTY_PATH, STATX_DIOALIGN, &mut stx);
        if r == 0 && stx.stx_mask & STATX_DIOALIGN != 0 && stx.stx_dio_offset_align > 0 && stx.stx_dio_mem_align > 0 {
            return DioAlignment {
                memory: stx.stx_dio_mem_align as u64,
                offset: stx.stx_dio_offset_align as u64,
                source: AlignSource::Statx,
            };
        }
    }
    if let Some(lbs) = file.metadata().ok().and_then(|m| sysfs_logical_block_size(m.dev())) {
        return DioAlignment { memory: lbs, offset: lbs, source: AlignSource::BlockDevice };
    }
    DioAlignment { memory: 4096, offset: 4096, source: AlignSource::Default }
}

fn sysfs_logical_block_size(dev: u64) -> Option<u64> {
    let (ma, mi) = (libc::major(dev), libc::minor(dev));
    if ma == 0 {
        return None;
    }
    // A partition has no queue/ of its own; its disk's is one level up.
    ["queue/logical_block_size", "../queue/logical_block_size"]
        .iter()
        .find_map(|p| std::fs::read_to_string(format!("/sys/dev/block/{ma}:{mi}/{p}")).ok())
        .and_then(|s| s.trim().parse().ok())
}

/// A zeroed heap buffer whose address is aligned for direct I/O.
pub struct AlignedBuf {
    ptr: *mut u8,
    layout: Layout,
}

unsafe impl Send for AlignedBuf {}
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    pub fn new(len: usize, align: usize) -> Self {
        let layout = Layout::from_size_align(len.max(1), align.max(1)).expect("alignment must be a power of two");
        let ptr = unsafe { alloc_zeroed(layout) };
        assert!(!ptr.is_null(), "out of memory allocating {len} bytes");
        AlignedBuf { ptr, layout }
    }
    pub fn len(&self) -> usize {
        self.layout.size()
    }
    pub fn is_empty(&self) -> bool {
        false
    }
}

impl std::ops::Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        unsafe { std::slice::from_raw_parts(self.ptr, self.layout.size()) }
    }
}
impl std::ops::DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.layout.size()) }
    }
}
impl AsRef<[u8]> for AlignedBuf {
    fn as_ref(&self) -> &[u8] {
        self
    }
}
impl Drop for AlignedBuf {
    fn drop(&mut self) {
        unsafe { dealloc(self.ptr, self.layout) }
    }
}

/// How far into a buffer starting at `addr` the first `align`-aligned byte is.
pub fn offset_to_alignment(addr: usize, align: usize) -> usize {
    (align - addr % align) % align
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn aligned_buffers_are_aligned() {
        for align in [512usize, 4096, 65536] {
            let b = AlignedBuf::new(8192, align);
            assert_eq!(b.as_ptr() as usize % align, 0);
            assert!(b.iter().all(|&x| x == 0));
        }
    }
    #[test]
    fn offset_to_alignment_lands_on_boundary() {
        for addr in [0usize, 1, 511, 512, 4095, 4097, 123456] {
            let off = offset_to_alignment(addr, 4096);
            assert!(off < 4096);
            assert_eq!((addr + off) % 4096, 0);
        }
    }
}
