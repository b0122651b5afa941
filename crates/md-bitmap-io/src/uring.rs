//! The io_uring queue of an `Engine`: one ring, its completions signalled on the
//! engine's eventfd.
//!
//! Completion work, when the engine is driven from one thread (`one_thread`: a
//! JavaScript thread's reactor submits, reaps and pins there, and nothing else touches
//! the ring): the ring is made with `IORING_SETUP_SINGLE_ISSUER | DEFER_TASKRUN`. A
//! finished write's completion work then waits, queued in the kernel, until that thread
//! asks for it (`collect` enters the ring with `GETEVENTS`): the first one queued
//! signals the eventfd, and no completion interrupts the thread while it runs
//! JavaScript, as the default mode's task work does (a signal-like notification per
//! completion, each an inter-processor interrupt and a VM exit on a virtual machine).
//! Measured on this project's 2-vCPU machine (docs/benchmarks.md, "Deferred completion
//! work and batches of 4"): 4 KiB O_DIRECT writes at depth 32 went from 0.75 to
//! 0.92–0.94 of fio's rate in a scratch series, and to 0.91–0.97 in `bench:io`. A kernel
//! older than 6.1 refuses the flags; the ring is then made without them. Rings shared
//! between threads (the core's tests reap on a thread of their own) never use them:
//! only the thread that made such a ring may reap from it.
//!
//! The ring's `IORING_SQ_TASKRUN` flag (raised when completion work is queued) is a
//! hint, never proof. The kernel queues a completion's work first and raises the flag
//! after; a reap on the other CPU in between runs the work and lowers the flag, which
//! the completing CPU then raises again over an empty queue. Nothing lowers it until the
//! next completion's work runs. A reap that looped while the flag was up spun there for
//! ever once the last write had completed: the JavaScript thread at 100 % CPU inside
//! `collect`, its timers never run (the hangs of `bench:io` on 2026-11-30, caught by
//! the engine soak; docs/benchmarks.md). So a round of `collect` that finds nothing
//! ends the loop, and a raised flag is answered by running the work with the eventfd
//! on, never by signalling it ourselves: the kernel signals what the work posts, and a
//! stale flag costs one call. Submission trusts no count either: an `io_uring_enter`
//! that takes none of the entries asked for ends the flush with EAGAIN (the entries
//! stay queued for the next one) rather than entering again for ever.
//!
//! `collect` under the deferred mode, one wake-up:
//!
//! ```text
//!   muted: eventfd off ──enter GETEVENTS (runs up to a kernel batch of work)──▶
//!     collect the posted entries ──eventfd on, full fence──▶ TASKRUN?
//!       no ──────────────────────────────▶ done
//!       yes, entries came this round ────▶ muted again (more work than one batch,
//!                                          or work queued while muted)
//!       yes, none came this round ───────▶ enter GETEVENTS unmuted ──▶ done
//!                                          (stale flag: nothing; late work: the
//!                                          kernel signals it, reaped next wake-up)
//! ```
//!
//! The ring also pins files (`pin`): a descriptor placed in its fixed-file table is
//! referenced by the ring until unpinned or until the ring is freed. A process killed
//! with I/O in flight closes the ring's descriptor, but the kernel frees the ring only
//! once that I/O has completed, and drops the pinned files then; a lock file pinned
//! this way stays locked while the dead process's writes are in flight. Measured by
//! hand (a writer throttled to 256 KiB/s by a blkio cgroup, killed holding a lock): the
//! lock came free ~4 s after the kill, with its writes, in 12 runs alone; under a full
//! suite's load the outcome varied (once a write landed after the lock came free), so
//! no test asserts it: this narrows the window, it is not proven to close it. What
//! closes it on ext4 and XFS is the wait at every store's open (fence.rs), on btrfs the
//! process's death itself (every write there runs on io_uring's worker threads, which
//! it waits for), and on a block device its exclusive open, which the dead process
//! keeps until its writes completed (all tested in crash-settle.spec.ts). The crash specs settle the
//! filesystem (a freeze) after each kill, to read the files as the crash left them.

use crate::engine::{Flight, KernelQueue, Op};
use io_uring::{opcode, squeue, types, IoUring};
use std::io;
use std::os::fd::RawFd;

/// Submission-queue entries; the completion queue holds twice as many, and no more
/// operations than that are ever in the kernel at once, so completions never overflow.
const ENTRIES: u32 = 256;

/// Slots of the fixed-file table, for pinned files.
const PIN_SLOTS: u32 = 256;

/// `io_uring_enter` flag: wait for (here: run the deferred work of) completions.
const IORING_ENTER_GETEVENTS: u32 = 1;

pub(crate) struct Uring {
    ring: IoUring,
    /// Entries queued on the submission ring not yet handed over.
    unsubmitted: usize,
    /// Free slots of the fixed-file table; None if the kernel refused the table.
    free_slots: Option<Vec<u32>>,
    /// Completion work waits for `collect` (`IORING_SETUP_DEFER_TASKRUN`).
    deferred: bool,
}

impl Uring {
    /// `one_thread`: every use of the ring is on the calling thread (see the top comment).
    pub(crate) fn new(eventfd: RawFd, one_thread: bool) -> io::Result<Uring> {
        let build = |deferred: bool| {
            let mut b = IoUring::builder();
            b.setup_cqsize(ENTRIES * 2);
            if deferred {
                b.setup_single_issuer().setup_defer_taskrun().setup_taskrun_flag();
            }
            b.build(ENTRIES)
        };
        let (ring, deferred) = match one_thread {
            true => match build(true) {
                Ok(r) => (r, true),
                Err(e) if e.raw_os_error() == Some(nix::libc::EINVAL) => (build(false)?, false),
                Err(e) => return Err(e),
            },
            false => (build(false)?, false),
        };
        ring.submitter().register_eventfd(eventfd)?;
        // Sparse tables need Linux 5.19; without one, nothing is pinned.
        let free_slots = ring.submitter().register_files_sparse(PIN_SLOTS).ok().map(|()| (0..PIN_SLOTS).rev().collect());
        Ok(Uring { ring, unsubmitted: 0, free_slots, deferred })
    }

    fn entry(op: &Op) -> squeue::Entry {
        match *op {
            Op::Read { fd, buf, len, offset } => opcode::Read::new(types::Fd(fd), buf, len as u32).offset(offset).build(),
            Op::Write { fd, buf, len, offset } => opcode::Write::new(types::Fd(fd), buf, len as u32).offset(offset).build(),
            Op::DataSync { fd } => opcode::Fsync::new(types::Fd(fd)).flags(types::FsyncFlags::DATASYNC).build(),
        }
    }

    /// Enters the ring to run the completion work it deferred (up to a batch the kernel
    /// chooses; it raises TASKRUN again for the rest). Does not block.
    fn run_deferred_work(&mut self) {
        // SAFETY: no submission, no argument; GETEVENTS with min_complete 0 does not block.
        let _ = unsafe { self.ring.submitter().enter::<nix::libc::sigset_t>(0, 0, IORING_ENTER_GETEVENTS, None) };
    }

    /// Hands the queued entries to the kernel. An `io_uring_enter` that takes none of
    /// them (0: the kernel sees no entry queued, so our count disagrees with the ring)
    /// ends the round with EAGAIN instead of entering again for ever; the count is then
    /// the ring's own, and whatever is queued goes with the next flush.
    fn submit(&mut self) -> io::Result<()> {
        while self.unsubmitted > 0 {
            match self.ring.submit() {
                Ok(0) => {
                    self.unsubmitted = self.ring.submission().len();
                    return Err(io::Error::from_raw_os_error(nix::libc::EAGAIN));
                }
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

    fn pin(&mut self, fd: RawFd) -> Option<u32> {
        let slot = self.free_slots.as_mut()?.pop()?;
        match self.ring.submitter().register_files_update(slot, &[fd]) {
            Ok(_) => Some(slot),
            Err(_) => {
                self.free_slots.as_mut()?.push(slot);
                None
            }
        }
    }

    fn unpin(&mut self, slot: u32) {
        if self.ring.submitter().register_files_update(slot, &[-1]).is_ok() {
            if let Some(free) = self.free_slots.as_mut() {
                free.push(slot);
            }
        }
    }

    fn deferred(&self) -> bool {
        self.deferred
    }

    fn hint(&mut self) -> Option<bool> {
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        Some(!self.ring.completion().is_empty() || (self.deferred && self.ring.submission().taskrun()))
    }

    fn ready(&mut self) -> Option<bool> {
        // A completion posted outside a reap (an operation that finished inside its
        // submission) is on the completion ring before its signal.
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        if !self.ring.completion().is_empty() {
            return Some(true);
        }
        // Deferred work raises TASKRUN before it signals, but the flag may be stale (see
        // the top comment): not a reason to signal. Run what waits, with the eventfd on:
        // the kernel signals whatever that posts, and a stale flag costs this one call.
        if self.deferred && self.ring.submission().taskrun() {
            self.run_deferred_work();
        }
        Some(false)
    }

    fn collect(&mut self, out: &mut Vec<(*mut Flight, i64)>) {
        if !self.deferred {
            for cqe in self.ring.completion() {
                out.push((cqe.user_data() as *mut Flight, cqe.result() as i64));
            }
            return;
        }
        // The deferred work is run with the eventfd muted: the entries it posts are
        // collected right here, and signalling them would only wake the loop again for
        // nothing. Work queued meanwhile (its signal muted too) raises the ring's TASKRUN
        // flag, which is checked once the eventfd is on again (a full fence between, as
        // the kernel raises the flag before it looks at the mute): then run it too. A
        // round that collects nothing with the flag up is the flag gone stale, or work
        // queued after that round's call: run it once more unmuted and stop, so the
        // kernel signals what it posts (collected at the next wake-up) and a stale flag
        // ends here instead of being run for ever.
        loop {
            self.ring.completion().disable_eventfd();
            self.run_deferred_work();
            let before = out.len();
            for cqe in self.ring.completion() {
                out.push((cqe.user_data() as *mut Flight, cqe.result() as i64));
            }
            self.ring.completion().enable_eventfd();
            std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
            if !self.ring.submission().taskrun() {
                return;
            }
            if out.len() == before {
                self.run_deferred_work();
                return;
            }
        }
    }

    /// Test-only fault: the count of queued entries one above the ring's, the state in
    /// which the kernel takes none of what `submit` asks it to (see `submit`).
    #[cfg(test)]
    fn miscount_queued(&mut self) {
        self.unsubmitted += 1;
    }

    /// Test-only fault: raises `IORING_SQ_TASKRUN` in the ring's shared memory with no
    /// completion work queued, the state the kernel's race leaves (top comment). The
    /// flag's place is the kernel's (`sq_off.flags`, from a throwaway ring's parameters);
    /// the ring is mapped a second time to reach it.
    #[cfg(test)]
    fn raise_stale_taskrun(&mut self) {
        use nix::libc;
        use std::os::fd::AsRawFd;
        // struct io_uring_params: 10 words, then sq_off (head, tail, ring_mask,
        // ring_entries, flags, ...), then cq_off; 120 bytes in all.
        let mut params = [0u32; 30];
        let probe = unsafe { libc::syscall(libc::SYS_io_uring_setup, 1u32, params.as_mut_ptr()) };
        assert!(probe >= 0, "io_uring_setup for the probe: {}", io::Error::last_os_error());
        unsafe { libc::close(probe as i32) };
        let flags_at = params[10 + 4] as usize;
        let len = flags_at + 4;
        // IORING_OFF_SQ_RING is 0.
        let base = unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, self.ring.as_raw_fd(), 0) };
        assert_ne!(base, libc::MAP_FAILED, "mapping the ring: {}", io::Error::last_os_error());
        let flags = unsafe { &*(base.cast::<u8>().add(flags_at).cast::<std::sync::atomic::AtomicU32>()) };
        // IORING_SQ_TASKRUN is 1 << 2 in the kernel's uapi header.
        flags.fetch_or(1 << 2, std::sync::atomic::Ordering::SeqCst);
        unsafe { libc::munmap(base, len) };
    }
}
