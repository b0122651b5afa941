//! The io_uring queue of an `Engine`: one ring, its completions signalled on the
//! engine's eventfd.

use crate::engine::{Flight, KernelQueue, Op};
use io_uring::{opcode, squeue, types, IoUring};
use std::io;
use std::os::fd::RawFd;

/// Submission-queue entries; the completion queue holds twice as many, and no more
/// operations than that are ever in the kernel at once, so completions never overflow.
const ENTRIES: u32 = 256;

pub(crate) struct Uring {
    ring: IoUring,
    /// Entries queued on the submission ring not yet handed over.
    unsubmitted: usize,
}

impl Uring {
    pub(crate) fn new(eventfd: RawFd) -> io::Result<Uring> {
        let ring = IoUring::builder().setup_cqsize(ENTRIES * 2).build(ENTRIES)?;
        ring.submitter().register_eventfd(eventfd)?;
        Ok(Uring { ring, unsubmitted: 0 })
    }

    fn entry(op: &Op) -> squeue::Entry {
        match *op {
            Op::Read { fd, buf, len, offset } => opcode::Read::new(types::Fd(fd), buf, len as u32).offset(offset).build(),
            Op::Write { fd, buf, len, offset } => opcode::Write::new(types::Fd(fd), buf, len as u32).offset(offset).build(),
            Op::DataSync { fd } => opcode::Fsync::new(types::Fd(fd)).flags(types::FsyncFlags::DATASYNC).build(),
        }
    }

    fn submit(&mut self) -> io::Result<()> {
        while self.unsubmitted > 0 {
            match self.ring.submit() {
                Ok(n) => self.unsubmitted -= n.min(self.unsubmitted),
                Err(e) if e.raw_os_error() == Some(nix::libc::EINTR) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

impl KernelQueue for Uring {
    fn capacity(&self) -> usize {
        (ENTRIES * 2) as usize
    }

    fn queue(&mut self, flight: *mut Flight) {
        // SAFETY: the flight is alive until its completion is reaped.
        let entry = Self::entry(unsafe { &(*flight).op }).user_data(flight as u64);
        loop {
            // SAFETY: the entry's buffer lives in the flight's owner until completion.
            if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                self.unsubmitted += 1;
                return;
            }
            // The submission ring is full: hand it over to make room. The completion
            // ring has room for all of them (see ENTRIES), so this cannot fail for lack
            // of completion space.
            if self.submit().is_err() {
                std::thread::yield_now();
            }
        }
    }

    fn flush(&mut self) {
        // EBUSY/EAGAIN: the kernel is short of resources; the entries stay queued and
        // go with the next flush (one comes with every reap).
        let _ = self.submit();
    }

    fn collect(&mut self, out: &mut Vec<(*mut Flight, i64)>) {
        for cqe in self.ring.completion() {
            out.push((cqe.user_data() as *mut Flight, cqe.result() as i64));
        }
    }
}
