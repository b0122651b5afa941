//! Where a file holds data: the allocated ranges of a byte range, as `lseek(SEEK_DATA)`
//! and `lseek(SEEK_HOLE)` see them — the answer a sparse-aware reader (cp, qemu,
//! nbdcopy) acts on. A range this does not list reads as zeroes.
//!
//! Unlike the extent map (FIEMAP), this is the filesystem's own notion of data: an
//! unwritten (preallocated) extent is a hole unless it has dirty pages in the page
//! cache, and data not yet written back is data. Filesystems without the two seeks
//! (and block devices) answer the generic way: everything up to the end is data.
//!
//! One call walks the whole range (the file opened once, two seeks per data range),
//! so a caller asks once per question, not once per extent.

use crate::error::{IoError, Result};
use crate::extents::with_path;
use nix::errno::Errno;
use nix::libc;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

/// The data ranges of `[offset, offset + length)`, and how far the answer reaches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocated {
    /// `(offset, length)` of each data range, sorted, disjoint, clipped to the range asked.
    pub ranges: Vec<(u64, u64)>,
    /// Where the answer ends: `offset + length` (or the file's end, if nearer), or less
    /// when `max_ranges` ranges were found first. Past it, nothing is said.
    pub end: u64,
}

/// `lseek(fd, from, whence)`; `None` for ENXIO (no data, or no hole, at or after `from`).
fn seek(file: &File, from: u64, whence: libc::c_int, path: &Path) -> Result<Option<u64>> {
    // SAFETY: a plain system call on a descriptor we own.
    let r = unsafe { libc::lseek(file.as_raw_fd(), from as libc::off_t, whence) };
    if r >= 0 {
        return Ok(Some(r as u64));
    }
    match Errno::last() {
        Errno::ENXIO => Ok(None),
        e => Err(IoError::sys(e, format!("lseek({}, {from}) of {}", if whence == libc::SEEK_DATA { "SEEK_DATA" } else { "SEEK_HOLE" }, path.display()))),
    }
}

/// The data ranges of `[offset, offset + length)` of the file at `path` (see the
/// module comment), at most `max_ranges` of them (`end` then says where the answer
/// stops). The range is clipped to the file's size; `max_ranges` 0 means no limit.
pub fn allocated_ranges(path: &Path, offset: u64, length: u64, max_ranges: usize) -> Result<Allocated> {
    let file = File::open(path).map_err(|e| with_path(e.into(), path))?;
    if offset > i64::MAX as u64 || length > i64::MAX as u64 - offset {
        return Err(IoError::new("EOUT_OF_RANGE", format!("{length} bytes at {offset} of {} is past any file's end", path.display())));
    }
    let size = seek(&file, 0, libc::SEEK_END, path)?.unwrap_or(0);
    let end = (offset + length).min(size);
    let mut ranges = Vec::new();
    let mut at = offset;
    while at < end {
        if max_ranges != 0 && ranges.len() == max_ranges {
            return Ok(Allocated { ranges, end: at });
        }
        let data = match seek(&file, at, libc::SEEK_DATA, path)? {
            Some(d) if d < end => d,
            _ => break,
        };
        // Every file has an implicit hole at its end, so SEEK_HOLE after data finds one.
        let hole = seek(&file, data, libc::SEEK_HOLE, path)?.unwrap_or(size).min(end);
        ranges.push((data, hole - data));
        at = hole;
    }
    Ok(Allocated { ranges, end: end.max(offset) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, SeekFrom, Write};

    #[test]
    fn lists_data_between_holes_clipped_to_the_range_and_capped() {
        let dir = std::env::temp_dir().join(format!("md-bitmap-allocated-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("sparse");
        let mut f = File::create(&path).unwrap();
        const M: u64 = 1 << 20;
        f.set_len(16 * M).unwrap();
        for at in [M, 5 * M, 9 * M] {
            f.seek(SeekFrom::Start(at)).unwrap();
            f.write_all(&vec![0xab; M as usize]).unwrap();
        }
        f.sync_all().unwrap();
        let all = allocated_ranges(&path, 0, 16 * M, 0).unwrap();
        if all.ranges == vec![(0, 16 * M)] {
            // A filesystem without SEEK_DATA: all data, which is what the generic answer says.
            std::fs::remove_dir_all(&dir).unwrap();
            return;
        }
        assert_eq!(all, Allocated { ranges: vec![(M, M), (5 * M, M), (9 * M, M)], end: 16 * M });
        let part = allocated_ranges(&path, M + M / 2, 4 * M, 0).unwrap();
        assert_eq!(part, Allocated { ranges: vec![(M + M / 2, M / 2), (5 * M, M / 2)], end: M + M / 2 + 4 * M });
        let capped = allocated_ranges(&path, 0, 16 * M, 2).unwrap();
        assert_eq!(capped, Allocated { ranges: vec![(M, M), (5 * M, M)], end: 6 * M });
        let past = allocated_ranges(&path, 10 * M, 100 * M, 0).unwrap();
        assert_eq!(past, Allocated { ranges: vec![], end: 16 * M });
        assert_eq!(allocated_ranges(&dir.join("missing"), 0, 1, 0).unwrap_err().code, "ENOENT");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
