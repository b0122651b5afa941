//! Exclusive ownership of a file between processes: `flock(LOCK_EX | LOCK_NB)` on a
//! descriptor of its own, held until released or until the process dies (the kernel
//! drops a flock with the last descriptor of its open file, so a killed holder leaves
//! nothing behind). A second lock, from another process or from this one through
//! another descriptor, fails at once with `ELOCKED`, naming the holder's pid as
//! `/proc/locks` shows it.
//!
//! Nothing here blocks. A lock still held for a process that has exited (the kernel
//! keeps it until that process's I/O in flight has completed: see below) is reported
//! as such (`Ok(None)`), for the caller to try again shortly; the binding's caller
//! retries on a timer (src/io/lock.ts), so that its thread's event loop keeps running
//! meanwhile.
//!
//! Also here, because only a lock holder may do it: lifting an immutable flag that a
//! killed device-mode writer left on its file.
//!
//! ```text
//!   lock(path) ── open (O_CREAT if asked) ── flock EX|NB ─┬─ busy ──► ELOCKED (holder pid)
//!                                                        ├─ busy, the holder has exited
//!                                                        │  ──► None (its I/O still completing;
//!                                                        │  the caller tries again shortly)
//!                                                        └─ got it ── path still names the
//!                                                           locked inode? ─┬─ yes ──► held
//!                                                                          └─ no (replaced
//!                                                                             meanwhile) ──► retry
//!   held ── release(unlink?) ── unlink while still holding (if asked) ── unlock, close ──► free
//!   held ── the process dies ── the kernel drops the lock with the open file's last
//!           reference: at once, or, if an I/O engine pinned it (`Engine::pin`), when
//!           the kernel frees its ring, after its I/O in flight ──► free
//! ```

use crate::error::{IoError, Result};
use nix::errno::Errno;
use nix::libc;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// An exclusive flock on one file, held until [`FileLock::release`] or drop.
#[derive(Debug)]
pub struct FileLock {
    file: File,
    path: PathBuf,
}

const FS_IOC_GETFLAGS: libc::c_ulong = 0x8008_6601;
const FS_IOC_SETFLAGS: libc::c_ulong = 0x4008_6602;
const FS_IMMUTABLE_FL: libc::c_int = 0x10;

impl FileLock {
    /// Takes the lock on `path` (creating the file, mode 0600, if `create`); `None` when
    /// it is held for a process that has exited, whose lock goes once its last I/O
    /// completed (try again shortly); fails at once with `ELOCKED` naming a live holder.
    pub fn try_acquire(path: &Path, create: bool) -> Result<Option<FileLock>> {
        for _ in 0..16 {
            let mut o = OpenOptions::new();
            o.read(true).custom_flags(libc::O_CLOEXEC).mode(0o600);
            if create {
                // O_CREAT needs write access on some filesystems' open paths; ask for it.
                o.write(true).create(true);
            }
            let file = o.open(path).map_err(|e| {
                let e: IoError = e.into();
                IoError { message: format!("cannot open {} to lock it: {}", path.display(), e.message), ..e }
            })?;
            if let Err(errno) = lock_now(&file) {
                if errno != Errno::EWOULDBLOCK {
                    return Err(IoError::sys(errno, format!("flock {}", path.display())));
                }
                // /proc/locks names no live holder (pid 0, a pid that is gone or a
                // zombie, or no line) when the process that took the lock has exited:
                // its lock goes once its last I/O completed.
                return match holder_pid(&file).filter(|&p| p != 0 && alive(p)) {
                    Some(p) => Err(IoError { code: "ELOCKED".into(), message: format!("{} is in use: locked by process {p}", path.display()), errno: Some(errno as i32) }),
                    None => Ok(None),
                };
            }
            // The path may have been unlinked or replaced between open and flock (a
            // holder releasing with unlink): then this lock guards nothing; retry.
            let held = file.metadata().map_err(IoError::from)?;
            match std::fs::metadata(path) {
                Ok(now) if now.dev() == held.dev() && now.ino() == held.ino() => {
                    return Ok(Some(FileLock { file, path: path.to_path_buf() }));
                }
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => continue,
                Err(e) => return Err(IoError::from(e)),
            }
        }
        Err(IoError::new("ELOCKED", format!("{}: the file kept being replaced while it was being locked", path.display())))
    }

    /// The locked path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The descriptor the lock is held through (for `Engine::pin`).
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        self.file.as_raw_fd()
    }

    /// Releases the lock; with `unlink`, removes the file first, while still holding it.
    pub fn release(self, unlink: bool) -> Result<()> {
        if unlink {
            match std::fs::remove_file(&self.path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(IoError::from(e)),
            }
        }
        Ok(())
    }
}

impl Drop for FileLock {
    /// Unlocks explicitly: the open file may outlive this descriptor (pinned by an
    /// I/O engine), and the lock must not outlive a release.
    fn drop(&mut self) {
        unsafe { libc::flock(self.file.as_raw_fd(), libc::LOCK_UN) };
    }
}

fn lock_now(file: &File) -> std::result::Result<(), Errno> {
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        Ok(())
    } else {
        Err(Errno::last())
    }
}

/// Whether process `pid` is running (not gone, not a zombie).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // "PID (COMM) STATE ...": the state follows the last ')'.
        Ok(stat) => stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()).is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// The pid holding a flock on `file`'s inode, from `/proc/locks`
/// (`N: FLOCK ADVISORY WRITE PID MAJ:MIN:INODE 0 EOF`, device numbers in hex).
fn holder_pid(file: &File) -> Option<u32> {
    let meta = file.metadata().ok()?;
    let (major, minor) = (libc::major(meta.dev()), libc::minor(meta.dev()));
    let want = format!("{major:02x}:{minor:02x}:{}", meta.ino());
    let text = std::fs::read_to_string("/proc/locks").ok()?;
    text.lines().find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        // "->" marks a waiter; a lock taken with LOCK_NB never waits.
        if f.len() < 6 || f[1] != "FLOCK" || f[2] == "->" || f[5] != want {
            return None;
        }
        let pid: u32 = f[4].parse().ok()?;
        Some(pid)
    })
}

/// Clears the immutable flag of `path` if set; says whether it was set. Only the
/// holder of the file's lock may call it: the flag it lifts was left by a holder that
/// is gone.
pub fn clear_immutable(path: &Path) -> Result<bool> {
    let file = File::open(path).map_err(|e| {
        let e: IoError = e.into();
        IoError { message: format!("{}: {}", path.display(), e.message), ..e }
    })?;
    let mut flags: libc::c_int = 0;
    if unsafe { libc::ioctl(file.as_raw_fd(), FS_IOC_GETFLAGS as _, &mut flags) } < 0 {
        // A filesystem without inode flags has no immutable flag to lift.
        return Ok(false);
    }
    if flags & FS_IMMUTABLE_FL == 0 {
        return Ok(false);
    }
    let cleared = flags & !FS_IMMUTABLE_FL;
    if unsafe { libc::ioctl(file.as_raw_fd(), FS_IOC_SETFLAGS as _, &cleared) } < 0 {
        let errno = Errno::last();
        return Err(IoError::sys(
            errno,
            format!("{} was left immutable by a device-mode writer that did not close; lifting the flag needs root (CAP_LINUX_IMMUTABLE)", path.display()),
        ));
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("md-bitmap-lock-{}-{name}", std::process::id()));
        let _ = std::fs::remove_file(&dir);
        dir
    }

    #[test]
    fn a_second_lock_fails_with_the_holders_pid() {
        let p = tmp("second");
        let held = FileLock::try_acquire(&p, true).unwrap().unwrap();
        let e = FileLock::try_acquire(&p, true).unwrap_err();
        assert_eq!(e.code, "ELOCKED");
        assert!(e.message.contains(&format!("process {}", std::process::id())), "{}", e.message);
        held.release(false).unwrap();
        let again = FileLock::try_acquire(&p, false).unwrap().unwrap();
        again.release(true).unwrap();
        assert!(!p.exists());
    }

    #[test]
    fn lock_without_create_needs_the_file() {
        let p = tmp("missing");
        assert_eq!(FileLock::try_acquire(&p, false).unwrap_err().code, "ENOENT");
    }

    #[test]
    fn clear_immutable_on_a_plain_file_says_no() {
        let p = tmp("plain");
        std::fs::write(&p, b"x").unwrap();
        assert!(!clear_immutable(&p).unwrap());
        std::fs::remove_file(&p).unwrap();
    }
}
