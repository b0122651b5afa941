//! Waiting out the writes of a dead process before a file is used.
//!
//! A process killed with writes in its io_uring ring does not wait for them: its death
//! closes the ring's descriptor, and the kernel completes and frees the ring later, on
//! its own (uring.rs). Its locks come free when the files holding them are dropped,
//! which the ring's pin delays but does not tie to the last write for certain. A
//! write of the dead owner could then land after the next owner read the file, and
//! undo what that owner wrote or copied: a page of bitmap with a bit cleared over the
//! new owner's set one, a member chunk changed after the resync made it equal.
//!
//! So a store waits, when it opens a regular file, until no direct write to the file is
//! in progress in any process: `fallocate` takes the inode lock and waits for every
//! direct I/O in flight on the inode (`inode_dio_wait`) on ext4 and XFS before it does
//! anything else. Buffered writes hold the inode lock while they copy, so they are
//! waited for too.
//!
//! ```text
//!   open ──regular file──▶ first data byte (SEEK_DATA; 0 if none)
//!        ──fallocate(KEEP_SIZE, that byte, 1)──▶ returns once the writes in flight landed
//!        ──▶ the store is used
//! ```
//!
//! The range is one byte of data already allocated, so nothing changes but the file's
//! times (a file with no data at all gets its first block allocated, reading zeroes).
//! Best effort: a filesystem that refuses fallocate, a read-only descriptor or an
//! immutable file skips the wait, and other filesystems may not wait in fallocate; the
//! ring's pin of the lock file (uring.rs) is then what narrows the window. btrfs needs
//! none (its fallocate waits only for the writes in the range it allocates): it will not
//! start a copy-on-write allocation without blocking, so io_uring runs every write there
//! on one of its worker threads, which are threads of the writing process, and a killed
//! process ends only once they are done (crash-settle.spec.ts measures it). Block
//! devices need no fence: a member device is opened exclusively, and a dead process's
//! writes keep its exclusive open until they completed.

use nix::libc;
use std::fs::File;
use std::os::fd::AsRawFd;

/// Returns once no direct write to `file` is in flight, in this process or any other
/// (see the module comment for where this holds). Errors are ignored: best effort.
pub fn wait_for_writes_in_flight(file: &File) {
    if !file.metadata().is_ok_and(|m| m.file_type().is_file()) {
        return;
    }
    let fd = file.as_raw_fd();
    // SAFETY: plain system calls on a descriptor we own; no memory is passed.
    unsafe {
        let first = libc::lseek(fd, 0, libc::SEEK_DATA);
        let offset = if first < 0 { 0 } else { first };
        libc::fallocate(fd, libc::FALLOC_FL_KEEP_SIZE, offset, 1);
    }
}
