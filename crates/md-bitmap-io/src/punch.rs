//! Releasing a range of a mirror member: afterwards the range reads as zeroes, and its
//! storage is given back where the medium allows it.
//!
//! - A regular file: `fallocate(PUNCH_HOLE | KEEP_SIZE)`; the file keeps its size, the
//!   range becomes a hole.
//! - A block device: `fallocate(PUNCH_HOLE | KEEP_SIZE)` too, which the kernel turns
//!   into a zeroing that unmaps (a discard that guarantees zeroes); where the device
//!   cannot do that (`EOPNOTSUPP`), `BLKZEROOUT`, which writes zeroes if it must.
//!
//! The file is opened anew for the call (not exclusively: a member's own store may
//! hold a block device exclusively), so it never races with the store's descriptors;
//! ordering against writes to the same range is the caller's.

use crate::error::{IoError, Result};
use crate::extents::with_path;
use nix::libc;
use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;

/// BLKZEROOUT = _IO(0x12, 127): zeroes a byte range `[start, length]` of a block device.
const BLKZEROOUT: libc::c_ulong = 0x127f;

/// Makes `[offset, offset + length)` of the file or block device at `path` read as
/// zeroes, giving its storage back where possible (see the module comment). Fails with
/// `EOPNOTSUPP` where a regular file's filesystem cannot punch holes, `EINVAL` for
/// anything that is neither a regular file nor a block device, and `EOUT_OF_RANGE`
/// for a range past the end.
pub fn punch_hole(path: &Path, offset: u64, length: u64) -> Result<()> {
    let file = OpenOptions::new().write(true).open(path).map_err(|e| with_path(e.into(), path))?;
    let meta = file.metadata().map_err(|e| with_path(e.into(), path))?;
    let block = meta.file_type().is_block_device();
    if !block && !meta.is_file() {
        return Err(IoError::new("EINVAL", format!("{} is neither a regular file nor a block device", path.display())));
    }
    let size = if block { block_device_size(&file, path)? } else { meta.len() };
    let end = offset.checked_add(length).filter(|&e| e <= size && offset <= i64::MAX as u64 && length <= i64::MAX as u64);
    if end.is_none() {
        return Err(IoError::new(
            "EOUT_OF_RANGE",
            format!("releasing {length} bytes at {offset} of {} goes past its end ({size} bytes)", path.display()),
        ));
    }
    if length == 0 {
        return Ok(());
    }
    let what = || format!("releasing {length} bytes at {offset} of {}", path.display());
    let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    // SAFETY: a plain system call on a descriptor we own.
    let r = unsafe { libc::fallocate(file.as_raw_fd(), mode, offset as libc::off_t, length as libc::off_t) };
    if r == 0 {
        return Ok(());
    }
    let errno = nix::errno::Errno::last();
    if block && errno == nix::errno::Errno::EOPNOTSUPP {
        let range: [u64; 2] = [offset, length];
        // SAFETY: BLKZEROOUT reads two u64s from the pointer, which outlives the call.
        let r = unsafe { libc::ioctl(file.as_raw_fd(), BLKZEROOUT as _, range.as_ptr()) };
        if r == 0 {
            return Ok(());
        }
        return Err(IoError::last(format!("{} (BLKZEROOUT)", what())));
    }
    Err(IoError::sys(errno, what()))
}

fn block_device_size(file: &std::fs::File, path: &Path) -> Result<u64> {
    // BLKGETSIZE64 = _IOR(0x12, 114, size_t)
    const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
    let mut size: u64 = 0;
    // SAFETY: the ioctl writes one u64 into `size`.
    let r = unsafe { libc::ioctl(file.as_raw_fd(), BLKGETSIZE64 as _, &mut size) };
    if r < 0 {
        return Err(IoError::last(format!("BLKGETSIZE64 {}", path.display())));
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, SeekFrom, Write};
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn punches_a_hole_that_reads_as_zeroes_and_frees_blocks() {
        let dir = std::env::temp_dir().join(format!("md-bitmap-punch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("data");
        let mut f = std::fs::File::create(&path).unwrap();
        f.write_all(&vec![0xabu8; 1 << 20]).unwrap();
        f.sync_all().unwrap();
        let before = std::fs::metadata(&path).unwrap().blocks();
        match punch_hole(&path, 256 << 10, 512 << 10) {
            // A filesystem that cannot punch holes says so; nothing else to check there.
            Err(e) if e.code == "EOPNOTSUPP" => return,
            r => r.unwrap(),
        }
        let m = std::fs::metadata(&path).unwrap();
        assert_eq!(m.len(), 1 << 20, "the size is kept");
        assert!(m.blocks() < before, "blocks were given back: {} → {}", before, m.blocks());
        let mut all = Vec::new();
        let mut f = std::fs::File::open(&path).unwrap();
        f.seek(SeekFrom::Start(0)).unwrap();
        f.read_to_end(&mut all).unwrap();
        assert!(all[..256 << 10].iter().all(|&b| b == 0xab));
        assert!(all[256 << 10..768 << 10].iter().all(|&b| b == 0));
        assert!(all[768 << 10..].iter().all(|&b| b == 0xab));
        assert_eq!(punch_hole(&path, 1 << 20, 4096).unwrap_err().code, "EOUT_OF_RANGE");
        assert_eq!(punch_hole(&dir, 0, 4096).unwrap_err().code, "EISDIR");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
