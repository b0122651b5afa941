//! The Linux AIO queue of an `Engine` (`io_setup`/`io_submit`/`io_getevents`, raw
//! system calls): reads and writes on O_DIRECT descriptors, each control block
//! signalling the engine's eventfd (`IOCB_FLAG_RESFD`) when it completes.

use crate::engine::{Flight, KernelQueue, Op};
use nix::libc;
use std::io;
use std::os::fd::RawFd;

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

pub(crate) struct Aio {
    ctx: libc::c_ulong,
    eventfd: RawFd,
    /// Control blocks queued, not yet handed to `io_submit`.
    queued: Vec<*mut Flight>,
}
// SAFETY: the queued flights are owned by the engine's kernel state, used under its lock.
unsafe impl Send for Aio {}

impl Aio {
    pub(crate) fn new(eventfd: RawFd) -> io::Result<Aio> {
        let mut ctx: libc::c_ulong = 0;
        if unsafe { libc::syscall(libc::SYS_io_setup, CAPACITY as libc::c_long, &mut ctx) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Aio { ctx, eventfd, queued: Vec::new() })
    }
}

impl Drop for Aio {
    fn drop(&mut self) {
        unsafe { libc::syscall(libc::SYS_io_destroy, self.ctx) };
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
            resfd: self.eventfd as u32,
            ..Default::default()
        };
        self.queued.push(flight);
    }

    fn flush(&mut self, refused: &mut Vec<(*mut Flight, i64)>) {
        while !self.queued.is_empty() {
            let mut iocbs: Vec<*mut Iocb> = self.queued.iter().map(|&f| unsafe { &mut (*f).iocb as *mut Iocb }).collect();
            let r = unsafe { libc::syscall(libc::SYS_io_submit, self.ctx, iocbs.len() as libc::c_long, iocbs.as_mut_ptr()) };
            if r > 0 {
                self.queued.drain(..r as usize);
                continue;
            }
            let errno = if r == 0 { libc::EAGAIN } else { io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO) };
            match errno {
                libc::EINTR => {}
                // Out of kernel resources: the rest goes with the next flush.
                libc::EAGAIN => return,
                // The first control block is bad (a descriptor that cannot do AIO, a
                // misaligned buffer): it fails alone; the others go on.
                _ => refused.push((self.queued.remove(0), -(errno as i64))),
            }
        }
    }

    fn collect(&mut self, out: &mut Vec<(*mut Flight, i64)>) {
        let mut events = [IoEvent::default(); 128];
        loop {
            let zero = libc::timespec { tv_sec: 0, tv_nsec: 0 };
            let n = unsafe { libc::syscall(libc::SYS_io_getevents, self.ctx, 0 as libc::c_long, events.len() as libc::c_long, events.as_mut_ptr(), &zero) };
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
