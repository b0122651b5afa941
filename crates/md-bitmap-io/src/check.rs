//! `check(path)`: may this file be written page by page in place (file mode), and may
//! its blocks be written straight on the device under the filesystem (device mode)?
//! Every problem found is named, with where it is, instead of stopping at the first.

use crate::device::{block_device_of, fs_info, is_xfs_realtime, BlockDevice, FsInfo, BTRFS_MAGIC};
use crate::error::{IoError, Result};
use crate::extents::*;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

#[derive(Clone, Debug)]
pub struct Problem {
    pub code: &'static str,
    pub message: String,
    /// Byte range in the file the problem concerns, where it has one.
    pub offset: Option<u64>,
    pub length: Option<u64>,
    pub blocks_file_mode: bool,
    pub blocks_device_mode: bool,
}

#[derive(Clone, Debug)]
pub struct CheckReport {
    pub file_size: u64,
    pub fs: FsInfo,
    pub device: Option<BlockDevice>,
    /// `None` when the filesystem cannot map its blocks (see the EFIEMAP_UNSUPPORTED problem).
    pub map: Option<ExtentMap>,
    pub problems: Vec<Problem>,
}

impl CheckReport {
    pub fn file_mode_ok(&self) -> bool {
        !self.problems.iter().any(|p| p.blocks_file_mode)
    }
    pub fn device_mode_ok(&self) -> bool {
        !self.problems.iter().any(|p| p.blocks_device_mode)
    }
    /// One line naming every problem that blocks the given mode, for error messages.
    pub fn summary(&self, device_mode: bool) -> String {
        self.problems
            .iter()
            .filter(|p| if device_mode { p.blocks_device_mode } else { p.blocks_file_mode })
            .map(|p| format!("{} ({})", p.code, p.message))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

fn problem(code: &'static str, message: String, range: Option<(u64, u64)>, file: bool, device: bool) -> Problem {
    Problem {
        code,
        message,
        offset: range.map(|r| r.0),
        length: range.map(|r| r.1),
        blocks_file_mode: file,
        blocks_device_mode: device,
    }
}

pub fn check(path: &Path) -> Result<CheckReport> {
    let file = File::open(path).map_err(|e| with_path(e.into(), path))?;
    check_open(&file, path, None)
}

/// Checks an open file. `device_align` is the device's logical block size when the
/// caller already opened the device; otherwise 512, the smallest any device uses.
pub fn check_open(file: &File, path: &Path, device_align: Option<u64>) -> Result<CheckReport> {
    let meta = file.metadata().map_err(|e| with_path(e.into(), path))?;
    let fs = fs_info(path)?;
    let device = block_device_of(meta.dev());
    let mut problems = Vec::new();
    if !meta.is_file() {
        return Err(IoError::new("ENOT_REGULAR_FILE", format!("{} is not a regular file", path.display())));
    }

    if fs.magic == BTRFS_MAGIC {
        problems.push(problem(
            "EDEVICE_NOT_PHYSICAL",
            "btrfs reports logical addresses in its own chunk space, not offsets on a device, and may keep several copies".into(),
            None, false, true,
        ));
    } else if device.is_none() {
        problems.push(problem(
            "EDEVICE_NOT_SINGLE",
            format!("the {} filesystem is not on one block device (its st_dev {}:{} is anonymous)", fs.name, nix::libc::major(meta.dev()), nix::libc::minor(meta.dev())),
            None, false, true,
        ));
    }
    if is_xfs_realtime(file) {
        problems.push(problem(
            "EDEVICE_NOT_SINGLE",
            "the file is on the XFS realtime device, not the device st_dev names".into(),
            None, false, true,
        ));
    }

    let map = match extents_of(file, path) {
        Ok(m) => Some(m),
        Err(e) if e.code == "EFIEMAP_UNSUPPORTED" => {
            // Nothing on a block device to write directly; file mode still works, buffered.
            problems.push(problem("EFIEMAP_UNSUPPORTED", e.message, None, false, true));
            None
        }
        Err(e) => return Err(e),
    };

    if let Some(map) = &map {
        let align = device_align.unwrap_or(512);
        let mut covered = 0u64;
        for e in &map.extents {
            if e.logical >= map.file_size {
                break; // preallocated past EOF: never written by a page store
            }
            if e.logical > covered {
                problems.push(hole(covered, e.logical - covered));
            }
            covered = covered.max(e.end());
            let range = Some((e.logical, e.length));
            let f = e.flags;
            let named: [(u32, &'static str, &str, bool); 7] = [
                (FIEMAP_EXTENT_UNWRITTEN, "EEXTENT_UNWRITTEN", "allocated but never written (fallocate): the first write would convert it, a metadata change; write the whole file once", true),
                (FIEMAP_EXTENT_DELALLOC, "EEXTENT_DELALLOC", "delayed allocation: no block is assigned yet; fsync the file", true),
                (FIEMAP_EXTENT_DATA_INLINE, "EEXTENT_INLINE", "data stored inline in the filesystem's metadata", true),
                (FIEMAP_EXTENT_DATA_TAIL, "EEXTENT_INLINE", "data packed in a shared tail block", true),
                (FIEMAP_EXTENT_ENCODED | FIEMAP_EXTENT_DATA_ENCRYPTED, "EEXTENT_ENCODED", "data is compressed or encrypted on disk, so its bytes are not the file's bytes", true),
                (FIEMAP_EXTENT_SHARED, "EEXTENT_SHARED", "blocks shared with another file (reflink or snapshot): a write would copy them elsewhere; make a private copy (cp --reflink=never)", true),
                (FIEMAP_EXTENT_UNKNOWN, "EEXTENT_UNKNOWN", "the filesystem does not say where this data is", false),
            ];
            for (bits, code, why, blocks_file) in named {
                if f & bits != 0 {
                    problems.push(problem(code, format!("extent at {}+{}: {}", e.logical, e.length, why), range, blocks_file, true));
                }
            }
            if f & FIEMAP_EXTENT_NOT_ALIGNED != 0 || e.physical % align != 0 || e.logical % align != 0 || e.length % align != 0 {
                problems.push(problem(
                    "EEXTENT_NOT_ALIGNED",
                    format!("extent at {}+{} (physical {}) is not aligned to the device's {}-byte blocks", e.logical, e.length, e.physical, align),
                    range, false, true,
                ));
            }
        }
        if covered < map.file_size {
            problems.push(hole(covered, map.file_size - covered));
        }
        if map.source == MapSource::Fibmap {
            problems.push(problem(
                "EFIEMAP_UNSUPPORTED",
                "mapped with FIBMAP, which cannot see unwritten or shared blocks; device mode needs FIEMAP".into(),
                None, false, true,
            ));
        }
    }
    Ok(CheckReport { file_size: meta.len(), fs, device, map, problems })
}

fn hole(offset: u64, length: u64) -> Problem {
    problem(
        "EEXTENT_HOLE",
        format!("hole at {}+{}: no blocks allocated; write the whole file once (not truncate or seek past the end)", offset, length),
        Some((offset, length)),
        true,
        true,
    )
}
