//! The extent map of a file: where its bytes live on the device under the filesystem.
//!
//! FIEMAP is asked first (with FIEMAP_FLAG_SYNC, so delayed allocations are resolved
//! before we look); FIBMAP, one block at a time, is the fallback for filesystems that
//! only implement `bmap`. FIBMAP cannot tell unwritten or shared blocks apart, so a map
//! built from it says `source: Fibmap` and callers should trust it less.

use crate::error::{IoError, Result};
use nix::errno::Errno;
use nix::libc;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

pub const FIEMAP_FLAG_SYNC: u32 = 0x1;

pub const FIEMAP_EXTENT_LAST: u32 = 0x1;
pub const FIEMAP_EXTENT_UNKNOWN: u32 = 0x2;
pub const FIEMAP_EXTENT_DELALLOC: u32 = 0x4;
pub const FIEMAP_EXTENT_ENCODED: u32 = 0x8;
pub const FIEMAP_EXTENT_DATA_ENCRYPTED: u32 = 0x80;
pub const FIEMAP_EXTENT_NOT_ALIGNED: u32 = 0x100;
pub const FIEMAP_EXTENT_DATA_INLINE: u32 = 0x200;
pub const FIEMAP_EXTENT_DATA_TAIL: u32 = 0x400;
pub const FIEMAP_EXTENT_UNWRITTEN: u32 = 0x800;
pub const FIEMAP_EXTENT_MERGED: u32 = 0x1000;
pub const FIEMAP_EXTENT_SHARED: u32 = 0x2000;

const FLAG_NAMES: [(u32, &str); 11] = [
    (FIEMAP_EXTENT_LAST, "last"),
    (FIEMAP_EXTENT_UNKNOWN, "unknown"),
    (FIEMAP_EXTENT_DELALLOC, "delalloc"),
    (FIEMAP_EXTENT_ENCODED, "encoded"),
    (FIEMAP_EXTENT_DATA_ENCRYPTED, "encrypted"),
    (FIEMAP_EXTENT_NOT_ALIGNED, "not_aligned"),
    (FIEMAP_EXTENT_DATA_INLINE, "inline"),
    (FIEMAP_EXTENT_DATA_TAIL, "tail"),
    (FIEMAP_EXTENT_UNWRITTEN, "unwritten"),
    (FIEMAP_EXTENT_MERGED, "merged"),
    (FIEMAP_EXTENT_SHARED, "shared"),
];

/// One extent, in bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Extent {
    pub logical: u64,
    pub physical: u64,
    pub length: u64,
    pub flags: u32,
}

impl Extent {
    pub fn flag_names(&self) -> Vec<&'static str> {
        FLAG_NAMES.iter().filter(|(bit, _)| self.flags & bit != 0).map(|(_, n)| *n).collect()
    }
    pub fn end(&self) -> u64 {
        self.logical + self.length
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapSource {
    Fiemap,
    Fibmap,
}

#[derive(Clone, Debug)]
pub struct ExtentMap {
    pub file_size: u64,
    /// The filesystem block size (FIGETBSZ, else st_blksize).
    pub block_size: u64,
    pub source: MapSource,
    pub extents: Vec<Extent>,
}

// struct fiemap is 32 bytes, struct fiemap_extent 56; _IOWR('f', 11, struct fiemap).
const FS_IOC_FIEMAP: libc::c_ulong = 0xC020_660B;
const FIBMAP: libc::c_ulong = 1;
const FIGETBSZ: libc::c_ulong = 2;
const FIEMAP_HEADER: usize = 32;
const FIEMAP_EXTENT_SIZE: usize = 56;
const EXTENTS_PER_CALL: usize = 256;

fn ne_u64(b: &[u8], at: usize) -> u64 {
    u64::from_ne_bytes(b[at..at + 8].try_into().unwrap())
}
fn ne_u32(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(b[at..at + 4].try_into().unwrap())
}

/// Maps a file's extents, FIEMAP first, FIBMAP as a fallback.
/// Fails with `EFIEMAP_UNSUPPORTED` when the filesystem supports neither (tmpfs).
pub fn extents(path: &Path) -> Result<ExtentMap> {
    let file = File::open(path).map_err(|e| with_path(e.into(), path))?;
    extents_of(&file, path)
}

pub fn extents_of(file: &File, path: &Path) -> Result<ExtentMap> {
    let meta = file.metadata().map_err(|e| with_path(e.into(), path))?;
    if !meta.is_file() {
        return Err(IoError::new(
            "ENOT_REGULAR_FILE",
            format!("{} is not a regular file; extent maps exist only for regular files", path.display()),
        ));
    }
    let block_size = block_size_of(file).unwrap_or(meta.blksize());
    let file_size = meta.len();
    match fiemap(file, file_size) {
        Ok(extents) => Ok(ExtentMap { file_size, block_size, source: MapSource::Fiemap, extents }),
        Err(e) if e == Errno::EOPNOTSUPP || e == Errno::ENOTTY || e == Errno::EINVAL => {
            match fibmap(file, file_size, block_size) {
                Ok(extents) => Ok(ExtentMap { file_size, block_size, source: MapSource::Fibmap, extents }),
                Err(Errno::EPERM) => Err(IoError::new(
                    "EFIEMAP_UNSUPPORTED",
                    format!(
                        "{}: the filesystem does not support FIEMAP, and its FIBMAP fallback needs CAP_SYS_RAWIO (run as root)",
                        path.display()
                    ),
                )),
                Err(_) => Err(IoError::new(
                    "EFIEMAP_UNSUPPORTED",
                    format!(
                        "{}: the filesystem supports neither FIEMAP nor FIBMAP (tmpfs and other memory or network filesystems); its blocks cannot be mapped",
                        path.display()
                    ),
                )),
            }
        }
        Err(e) => Err(IoError::sys(e, format!("FIEMAP on {}", path.display()))),
    }
}

fn block_size_of(file: &File) -> Option<u64> {
    let mut bsz: libc::c_int = 0;
    let r = unsafe { libc::ioctl(file.as_raw_fd(), FIGETBSZ as _, &mut bsz) };
    (r == 0 && bsz > 0).then_some(bsz as u64)
}

fn fiemap(file: &File, file_size: u64) -> std::result::Result<Vec<Extent>, Errno> {
    let mut out = Vec::new();
    let mut start = 0u64;
    // u64 storage keeps the kernel's 8-byte fields aligned.
    let mut buf = vec![0u64; (FIEMAP_HEADER + FIEMAP_EXTENT_SIZE * EXTENTS_PER_CALL) / 8];
    let mut flags = FIEMAP_FLAG_SYNC;
    while start < file_size {
        buf.iter_mut().for_each(|w| *w = 0);
        let bytes: &mut [u8] =
            unsafe { std::slice::from_raw_parts_mut(buf.as_mut_ptr() as *mut u8, buf.len() * 8) };
        bytes[0..8].copy_from_slice(&start.to_ne_bytes());
        bytes[8..16].copy_from_slice(&(u64::MAX - start).to_ne_bytes());
        bytes[16..20].copy_from_slice(&flags.to_ne_bytes());
        bytes[24..28].copy_from_slice(&(EXTENTS_PER_CALL as u32).to_ne_bytes());
        let r = unsafe { libc::ioctl(file.as_raw_fd(), FS_IOC_FIEMAP as _, bytes.as_mut_ptr()) };
        if r < 0 {
            return Err(Errno::last());
        }
        // The first call synced the file; later calls need not do it again.
        flags = 0;
        let mapped = ne_u32(bytes, 20) as usize;
        if mapped == 0 {
            break;
        }
        let mut last = false;
        for i in 0..mapped {
            let at = FIEMAP_HEADER + i * FIEMAP_EXTENT_SIZE;
            let e = Extent {
                logical: ne_u64(bytes, at),
                physical: ne_u64(bytes, at + 8),
                length: ne_u64(bytes, at + 16),
                flags: ne_u32(bytes, at + 40),
            };
            last |= e.flags & FIEMAP_EXTENT_LAST != 0;
            start = e.end();
            out.push(e);
        }
        if last {
            break;
        }
    }
    Ok(out)
}

fn fibmap(file: &File, file_size: u64, block_size: u64) -> std::result::Result<Vec<Extent>, Errno> {
    let blocks = file_size.div_ceil(block_size);
    let mut out: Vec<Extent> = Vec::new();
    for b in 0..blocks {
        let mut blk: libc::c_int = b.try_into().map_err(|_| Errno::EFBIG)?;
        let r = unsafe { libc::ioctl(file.as_raw_fd(), FIBMAP as _, &mut blk) };
        if r < 0 {
            return Err(Errno::last());
        }
        if blk == 0 {
            continue; // a hole
        }
        let physical = blk as u64 * block_size;
        let logical = b * block_size;
        match out.last_mut() {
            Some(e) if e.end() == logical && e.physical + e.length == physical => e.length += block_size,
            _ => out.push(Extent { logical, physical, length: block_size, flags: FIEMAP_EXTENT_MERGED }),
        }
    }
    if let Some(e) = out.last_mut() {
        e.flags |= FIEMAP_EXTENT_LAST;
    }
    Ok(out)
}

pub(crate) fn with_path(mut e: IoError, path: &Path) -> IoError {
    e.message = format!("{}: {}", path.display(), e.message);
    e
}
