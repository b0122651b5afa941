//! Direct-I/O alignment, taken from the file and never assumed.

use nix::libc;
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

/// How far into a buffer starting at `addr` the first `align`-aligned byte is.
pub fn offset_to_alignment(addr: usize, align: usize) -> usize {
    (align - addr % align) % align
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn offset_to_alignment_lands_on_boundary() {
        for addr in [0usize, 1, 511, 512, 4095, 4097, 123456] {
            let off = offset_to_alignment(addr, 4096);
            assert!(off < 4096);
            assert_eq!((addr + off) % 4096, 0);
        }
    }
}
