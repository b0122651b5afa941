//! The block device under a file's filesystem, found from the file's `st_dev` through
//! sysfs, and the filesystem's identity from statfs.

use crate::error::{IoError, Result};
use nix::libc;
use nix::sys::statfs::statfs;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug)]
pub struct BlockDevice {
    pub path: PathBuf,
    pub major: u32,
    pub minor: u32,
}

/// The block device whose number is `dev`, or `None` when the number is not a block
/// device's (major 0: btrfs, tmpfs, overlayfs, FUSE and network filesystems use
/// anonymous device numbers, because they do not sit on one block device).
pub fn block_device_of(dev: u64) -> Option<BlockDevice> {
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    if major == 0 {
        return None;
    }
    let uevent = std::fs::read_to_string(format!("/sys/dev/block/{major}:{minor}/uevent")).ok()?;
    let name = uevent.lines().find_map(|l| l.strip_prefix("DEVNAME="))?;
    Some(BlockDevice { path: PathBuf::from("/dev").join(name), major, minor })
}

const BLKSSZGET: libc::c_ulong = 0x1268;

/// The logical block size of an open block device: the unit of its direct I/O.
pub fn logical_block_size(dev: &File) -> Option<u64> {
    let mut size: libc::c_int = 0;
    let r = unsafe { libc::ioctl(dev.as_raw_fd(), BLKSSZGET as _, &mut size) };
    (r == 0 && size > 0).then_some(size as u64)
}

pub const EXT4_MAGIC: i64 = 0xEF53;
pub const XFS_MAGIC: i64 = 0x5846_5342;
pub const BTRFS_MAGIC: i64 = 0x9123_683E;
pub const TMPFS_MAGIC: i64 = 0x0102_1994;

#[derive(Clone, Debug)]
pub struct FsInfo {
    pub magic: i64,
    pub name: String,
}

pub fn fs_info(path: &Path) -> Result<FsInfo> {
    let st = statfs(path).map_err(|e| IoError::sys(e, format!("statfs {}", path.display())))?;
    let magic = st.filesystem_type().0 as i64;
    let name = match magic {
        EXT4_MAGIC => "ext4",
        XFS_MAGIC => "xfs",
        BTRFS_MAGIC => "btrfs",
        TMPFS_MAGIC => "tmpfs",
        0x8584_58f6 => "ramfs",
        0x6969 => "nfs",
        0x794c_7630 => "overlayfs",
        0x6573_5546 => "fuse",
        0xF2F5_2010 => "f2fs",
        0x2fc1_2fc1 => "zfs",
        0x4d44 => "vfat",
        0x5346_544e => "ntfs",
        _ => "unknown",
    };
    Ok(FsInfo { magic, name: name.to_string() })
}

// _IOR('X', 31, struct fsxattr), where struct fsxattr is 28 bytes and starts with fsx_xflags.
const FS_IOC_FSGETXATTR: libc::c_ulong = 0x801C_581F;
const FS_XFLAG_REALTIME: u32 = 0x1;

/// Whether an XFS file lives on the realtime device rather than the data device
/// its st_dev names; its FIEMAP addresses then point into another device.
pub fn is_xfs_realtime(file: &File) -> bool {
    let mut attr = [0u32; 7];
    let r = unsafe { libc::ioctl(file.as_raw_fd(), FS_IOC_FSGETXATTR as _, attr.as_mut_ptr()) };
    r == 0 && attr[0] & FS_XFLAG_REALTIME != 0
}
