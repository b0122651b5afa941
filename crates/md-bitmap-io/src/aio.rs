//! The Linux AIO queue of an `Engine` (`io_setup`/`io_submit`/`io_getevents`, raw
//! system calls): reads and writes on O_DIRECT descriptors, each control block
//! signalling the engine's eventfd (`IOCB_FLAG_RESFD`) when it completes.
//!
//! `io_submit` may block the caller (a write to a frozen filesystem waits in it until
//! the thaw; so may a full device queue or block allocation), so it is not called on the
//! JavaScript thread: one submitter thread per engine takes each flushed batch and
//! submits it, one wake-up per batch. Completions do not pass through it: the kernel
//! signals the eventfd, and `collect` (on the reaping thread) reads them with a
//! non-blocking `io_getevents`.

use crate::engine::{Flight, KernelQueue, Op};
use nix::libc;
use std::io;
use std::os::fd::RawFd;
use std::sync::{Arc, Condvar, Mutex};

/// Operations in the kernel at once (the size asked of `io_setup`).
const CAPACITY: usize = 512;

const IOCB_CMD_PREAD: u16 = 0;
const IOCB_CMD_PWRITE: u16 = 1;
const IOCB_CMD_FDSYNC: u16 = 3;
const IOCB_FLAG_RESFD: u32 = 1;

/// `struct iocb` of <linux/aio_abi.h> (little-endian field order, as on every target
/// this package builds for).
#[repr(C)]
#[derive(Default)]
pub(crate) struct Iocb {
    data: u64,
    key: u32,
    rw_flags: i32,
    opcode: u16,
    reqprio: i16,
    fildes: u32,
    buf: u64,
    nbytes: u64,
    offset: i64,
    reserved2: u64,
    flags: u32,
    resfd: u32,
}

/// `struct io_event`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct IoEvent {
    data: u64,
    obj: u64,
    res: i64,
    res2: i64,
}

/// What the engine's thread and the submitter thread share. Flights are held as
/// addresses: they are owned by the engine's kernel state until reaped.
struct Shared {
    ctx: libc::c_ulong,
    /// Control blocks flushed, not yet taken by the submitter, and whether the engine
    /// is gone (the submitter ends).
    batch: Mutex<(Vec<usize>, bool)>,
    wake: Condvar,
    /// Control blocks `io_submit` refused outright, with -errno; collected like completions.
    refused: Mutex<Vec<(usize, i64)>>,
    eventfd: RawFd,
}

pub(crate) struct Aio {
    shared: Arc<Shared>,
    /// Control blocks queued since the last flush.
    queued: Vec<usize>,
}

impl Aio {
    pub(crate) fn new(eventfd: RawFd) -> io::Result<Aio> {
        let mut ctx: libc::c_ulong = 0;
        if unsafe { libc::syscall(libc::SYS_io_setup, CAPACITY as libc::c_long, &mut ctx) } < 0 {
            return Err(io::Error::last_os_error());
        }
        let shared = Arc::new(Shared { ctx, batch: Mutex::new((Vec::new(), false)), wake: Condvar::new(), refused: Mutex::new(Vec::new()), eventfd });
        let s = shared.clone();
        std::thread::Builder::new().name("md-bitmap-aio".into()).spawn(move || s.submit_forever())?;
        Ok(Aio { shared, queued: Vec::new() })
    }
}

impl Shared {
    fn submit_forever(&self) {
        loop {
            let mut batch = {
                let mut b = self.batch.lock().unwrap();
                while b.0.is_empty() && !b.1 {
                    b = self.wake.wait(b).unwrap();
                }
                if b.0.is_empty() {
                    break;
                }
                std::mem::take(&mut b.0)
            };
            while !batch.is_empty() {
                let mut iocbs: Vec<*mut Iocb> = batch.iter().map(|&f| unsafe { &mut (*(f as *mut Flight)).iocb as *mut Iocb }).collect();
                let r = unsafe { libc::syscall(libc::SYS_io_submit, self.ctx, iocbs.len() as libc::c_long, iocbs.as_mut_ptr()) };
                if r > 0 {
                    batch.drain(..r as usize);
                    continue;
                }
                let errno = if r == 0 { libc::EAGAIN } else { io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO) };
                match errno {
                    libc::EINTR => {}
                    // Out of kernel resources: completions will free some.
                    libc::EAGAIN => std::thread::sleep(std::time::Duration::from_micros(200)),
                    // The first control block is bad (a descriptor that cannot do AIO):
                    // it fails alone; the others go on.
                    _ => {
                        self.refused.lock().unwrap().push((batch.remove(0), -(errno as i64)));
                        let one: u64 = 1;
                        unsafe { libc::write(self.eventfd, (&one as *const u64).cast(), 8) };
                    }
                }
            }
        }
        unsafe { libc::syscall(libc::SYS_io_destroy, self.ctx) };
    }
}

impl Drop for Aio {
    fn drop(&mut self) {
        self.shared.batch.lock().unwrap().1 = true;
        self.shared.wake.notify_one();
    }
}

impl KernelQueue for Aio {
    fn capacity(&self) -> usize {
        CAPACITY
    }

    fn queue(&mut self, flight: *mut Flight) {
        // SAFETY: the flight is alive until its completion is reaped.
        let f = unsafe { &mut *flight };
        let (opcode, fd, buf, len, offset) = match f.op {
            Op::Read { fd, buf, len, offset } => (IOCB_CMD_PREAD, fd, buf as u64, len, offset),
            Op::Write { fd, buf, len, offset } => (IOCB_CMD_PWRITE, fd, buf as u64, len, offset),
            Op::DataSync { fd } => (IOCB_CMD_FDSYNC, fd, 0, 0, 0),
        };
        f.iocb = Iocb {
            data: flight as u64,
            opcode,
            fildes: fd as u32,
            buf,
            nbytes: len as u64,
            offset: offset as i64,
            flags: IOCB_FLAG_RESFD,
            resfd: self.shared.eventfd as u32,
            ..Default::default()
        };
        self.queued.push(flight as usize);
    }

    fn flush(&mut self) {
        if self.queued.is_empty() {
            return;
        }
        self.shared.batch.lock().unwrap().0.append(&mut self.queued);
        self.shared.wake.notify_one();
    }

    fn collect(&mut self, out: &mut Vec<(*mut Flight, i64)>) {
        out.extend(self.shared.refused.lock().unwrap().drain(..).map(|(f, r)| (f as *mut Flight, r)));
        let mut events = [IoEvent::default(); 128];
        loop {
            let zero = libc::timespec { tv_sec: 0, tv_nsec: 0 };
            let n = unsafe { libc::syscall(libc::SYS_io_getevents, self.shared.ctx, 0 as libc::c_long, events.len() as libc::c_long, events.as_mut_ptr(), &zero) };
            if n <= 0 {
                return;
            }
            for e in &events[..n as usize] {
                out.push((e.data as *mut Flight, e.res));
            }
            if (n as usize) < events.len() {
                return;
            }
        }
    }
}
