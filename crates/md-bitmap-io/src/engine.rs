//! The I/O engine: how page-store reads, writes and fdatasyncs reach the kernel and
//! how their completions come back, with no thread hop per I/O where the kernel allows.
//!
//! An `Engine` serves one event loop (the binding makes one per JavaScript thread).
//! Its kind is chosen when it is made, best first; `MD_BITMAP_IO_ENGINE=uring|aio|threads`
//! forces one, and `reason()` says why a better one was not used:
//! - `Uring`: io_uring. Reads, writes and fdatasyncs are queued on the ring and handed
//!   to the kernel in one `io_uring_enter` per batch; no thread of ours waits on them.
//! - `Aio`: Linux AIO, for reads and writes on O_DIRECT descriptors; `io_submit` runs
//!   on one submitter thread, since it can block (`aio.rs`); fdatasync goes to the I/O
//!   threads.
//! - `Threads`: a few I/O threads (`pool.rs`) run each operation as a blocking call.
//!
//! Work that is more than one system call or would block the submitter (device-mode
//! pages split over extents, buffered writes under AIO) runs on the I/O threads
//! whatever the kind (`Route::Pool`). Every route completes the same way: the operation
//! is recorded as completed and one eventfd is signalled (io_uring and AIO signal it
//! themselves, registered with the ring and with each iocb's `IOCB_FLAG_RESFD`; the
//! threads write it once when their completion queue turns non-empty). The event loop
//! polls that eventfd and calls `reap()`, which settles every completion available in
//! one pass on the loop's thread, so the callbacks (`Done`) run there.
//!
//! One operation, from `submit` to its `Done`:
//!
//! ```text
//!   submit ──▶ queued ──flush()──▶ in the kernel ──kernel completes──▶ completed
//!      │         ▲ (no room on the ring: backlog, queued as slots free up)   │
//!      │         └──────────── short transfer: the rest is queued again ◀─┤
//!      └──(Route::Pool)──▶ on an I/O thread ──returns──▶ completed        │
//!                                                                          ▼
//!                   reap() on the loop's thread: Done(result) ◀── eventfd signalled
//! ```
//!
//! `in_flight()` counts operations from `submit` until their `Done` has run; the
//! binding keeps the loop alive (its poll handle referenced) while it is non-zero.
//! Submission is per write (`flush` inside `submit`) or batched (`submit` only queues,
//! and flushes once `batch_limit` operations are queued, or at once while the kernel
//! holds fewer than `batch_limit` of them, so an idle device is never kept waiting for a
//! batch; the owner calls `flush()` once per loop turn and after each `reap()`).
//! An event loop may reap with `reap_before_rearm()` and call `rearm()` after its flush:
//! the eventfd is then drained once the next submissions are in the kernel, off the
//! path from a completion to them, and signalled again if a completion came meanwhile.
//! Invariants: every operation's `Done` runs exactly once, on the thread that calls
//! `reap()`; a buffer passed in an `Op` is owned by its `Done` closure, so it stays
//! alive until the kernel is finished with it.

use crate::aio::Aio;
use crate::error::{IoError, Result};
use crate::pool::IoPool;
use crate::uring::Uring;
use nix::libc;
use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Under batched submission, queued operations go to the kernel once this many are
/// queued, not only at the end of the loop turn. A whole turn's worth at once (up to
/// the depth) leaves the device idle while the JavaScript thread works through the
/// completions that made it: measured in docs/benchmarks.md ("I/O engine: submission
/// batches"). 4 since completion work is deferred to the reap (uring.rs), which hands
/// over every completion since the last reap at once: in two runs at depth 32, batches
/// of 4 reached 0.95 and 0.97 of fio, batches of 8 0.90 and 0.78 ("Deferred completion
/// work and batches of 4").
pub const DEFAULT_BATCH_LIMIT: usize = 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EngineKind {
    Uring,
    Aio,
    Threads,
}

impl EngineKind {
    pub fn name(self) -> &'static str {
        match self {
            EngineKind::Uring => "uring",
            EngineKind::Aio => "aio",
            EngineKind::Threads => "threads",
        }
    }
    fn parse(s: &str) -> Option<EngineKind> {
        match s {
            "uring" => Some(EngineKind::Uring),
            "aio" => Some(EngineKind::Aio),
            "threads" => Some(EngineKind::Threads),
            _ => None,
        }
    }
}

/// One positional operation on a descriptor. The buffer must stay alive and untouched
/// until the operation's `Done` runs (its owner is moved into the `Done`).
#[derive(Clone, Copy, Debug)]
pub enum Op {
    Read { fd: RawFd, buf: *mut u8, len: usize, offset: u64 },
    Write { fd: RawFd, buf: *const u8, len: usize, offset: u64 },
    DataSync { fd: RawFd },
}
// SAFETY: the pointers are only dereferenced by the kernel or by one I/O thread while
// the operation is in flight, and the owner keeps the buffer alive meanwhile.
unsafe impl Send for Op {}

impl Op {
    /// The same operation less its first `n` bytes (after a short transfer).
    fn advanced(self, n: usize) -> Op {
        match self {
            Op::Read { fd, buf, len, offset } => Op::Read { fd, buf: buf.wrapping_add(n), len: len - n, offset: offset + n as u64 },
            Op::Write { fd, buf, len, offset } => Op::Write { fd, buf: buf.wrapping_add(n), len: len - n, offset: offset + n as u64 },
            Op::DataSync { .. } => self,
        }
    }
    fn len(&self) -> usize {
        match self {
            Op::Read { len, .. } | Op::Write { len, .. } => *len,
            Op::DataSync { .. } => 0,
        }
    }

    /// Runs the operation as blocking calls (on an I/O thread), to the last byte.
    fn run_blocking(self) -> io::Result<()> {
        let mut op = self;
        loop {
            let r = unsafe {
                match op {
                    Op::Read { fd, buf, len, offset } => libc::pread(fd, buf.cast(), len, offset as libc::off_t),
                    Op::Write { fd, buf, len, offset } => libc::pwrite(fd, buf.cast(), len, offset as libc::off_t),
                    Op::DataSync { fd } => libc::fdatasync(fd) as isize,
                }
            };
            match blocking_result(&op, r) {
                Transfer::Done(r) => return r,
                Transfer::Short(n) => op = op.advanced(n),
                Transfer::Retry => {}
            }
        }
    }
}

enum Transfer {
    Done(io::Result<()>),
    Short(usize),
    Retry,
}

/// What a blocking call's return means for `op`: -1 with the error in `errno` (any
/// other negative value is not a blocking call's), else a byte count.
fn blocking_result(op: &Op, ret: isize) -> Transfer {
    if ret < 0 {
        let e = io::Error::last_os_error();
        return if e.raw_os_error() == Some(libc::EINTR) { Transfer::Retry } else { Transfer::Done(Err(e)) };
    }
    transferred(op, ret as usize)
}

/// What a kernel completion's result (io_uring's `res`, AIO's `res`) means for `op`:
/// `-errno` (so -1 is EPERM, never "see errno"), else a byte count.
fn kernel_result(op: &Op, res: i64) -> Transfer {
    if res < 0 {
        let errno = (-res) as i32;
        return if errno == libc::EINTR || errno == libc::EAGAIN { Transfer::Retry } else { Transfer::Done(Err(io::Error::from_raw_os_error(errno))) };
    }
    transferred(op, res as usize)
}

/// What `n` bytes transferred (or a sync's 0) means for `op`.
fn transferred(op: &Op, n: usize) -> Transfer {
    match op {
        Op::DataSync { .. } => Transfer::Done(Ok(())),
        _ if n >= op.len() => Transfer::Done(Ok(())),
        Op::Read { .. } if n == 0 => Transfer::Done(Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the file ended before the read did"))),
        Op::Write { .. } if n == 0 => Transfer::Done(Err(io::Error::new(io::ErrorKind::WriteZero, "the write made no progress"))),
        _ => Transfer::Short(n),
    }
}

/// What runs when an operation completes, on the thread that calls `reap()`.
pub type Done = Box<dyn FnOnce(io::Result<()>) + Send>;

/// Where an operation runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// The engine's kernel interface (io_uring or AIO); the I/O threads under `Threads`.
    Kernel,
    /// The I/O threads, whatever the kind.
    Pool,
}

/// An operation handed to the kernel, boxed so its address (the user data the kernel
/// gives back) is stable. Also holds the AIO control block, which must stay put.
pub(crate) struct Flight {
    pub(crate) op: Op,
    done: Done,
    pub(crate) iocb: crate::aio::Iocb,
}

/// The ring or the AIO context: queue, hand over, collect.
pub(crate) trait KernelQueue: Send {
    /// How many operations may be in the kernel at once.
    fn capacity(&self) -> usize;
    /// Queues one operation; it reaches the kernel at the next `flush`.
    fn queue(&mut self, flight: *mut Flight);
    /// Hands queued operations to the kernel (or to the thread that submits them).
    fn flush(&mut self);
    /// Collects every completion available now as (flight, result); an operation the
    /// kernel refused outright comes back here too, with -errno.
    fn collect(&mut self, out: &mut Vec<(*mut Flight, i64)>);
    /// Whether completion work waits for `collect` (io_uring's DEFER_TASKRUN).
    fn deferred(&self) -> bool {
        false
    }
    /// After the eventfd is drained: whether completions wait to be collected whose
    /// signal the drain may have taken (the loop then signals itself). The kernel makes
    /// them visible before it signals. Where the queue only has a hint (io_uring's
    /// TASKRUN flag, which can be stale), it has the kernel run the work and signal
    /// what it posts instead, and answers false. None: cannot tell (AIO), and the
    /// eventfd must be drained before each `collect`.
    fn ready(&mut self) -> Option<bool> {
        None
    }
    /// Keeps a reference to `fd`'s open file until `unpin`, or until every operation of
    /// a process that died has completed (see `Engine::pin`). None: not supported.
    fn pin(&mut self, _fd: RawFd) -> Option<u32> {
        None
    }
    fn unpin(&mut self, _slot: u32) {}
    /// Whether completion work seems to wait, from memory shared with the kernel alone
    /// (no system call; may be stale either way for an instant). None: no such memory.
    fn hint(&mut self) -> Option<bool> {
        None
    }
    /// Test-only fault: see `Uring::raise_stale_taskrun`.
    #[cfg(test)]
    fn raise_stale_taskrun(&mut self) {}
    /// Test-only fault: see `Uring::miscount_queued`.
    #[cfg(test)]
    fn miscount_queued(&mut self) {}
}

struct KernelState {
    queue: Box<dyn KernelQueue>,
    /// Operations queued or in the kernel.
    on_kernel: usize,
    /// Operations waiting for room on the kernel queue.
    backlog: VecDeque<*mut Flight>,
    /// Operations queued since the last flush.
    unflushed: usize,
}
// SAFETY: the raw flights are owned by the state (created by Box::into_raw in `submit`
// and reclaimed exactly once in `reap`); the state is only used under its mutex.
unsafe impl Send for KernelState {}

/// Completions from the I/O threads, and the eventfd the event loop polls.
struct Completions {
    queue: Mutex<Vec<(Done, io::Result<()>)>>,
    eventfd: OwnedFd,
}

impl Completions {
    fn push(&self, done: Done, r: io::Result<()>) {
        let was_empty = {
            let mut q = self.queue.lock().unwrap();
            q.push((done, r));
            q.len() == 1
        };
        // One signal per batch: the reaper takes the whole queue when it wakes.
        if was_empty {
            self.signal();
        }
    }
    fn signal(&self) {
        let one: u64 = 1;
        unsafe { libc::write(self.eventfd.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }
}

pub struct Engine {
    kind: EngineKind,
    reason: Option<String>,
    batch: bool,
    /// Under `batch`, a flush also happens as soon as this many operations are queued.
    batch_limit: usize,
    kernel: Option<Mutex<KernelState>>,
    completions: Arc<Completions>,
    in_flight: AtomicUsize,
    /// Whether `rearm` drains the eventfd (the kernel queue tells without a system call
    /// whether completions wait; see `KernelQueue::ready`), not `reap_before_rearm`.
    drains_late: bool,
}

impl Engine {
    /// The engine `MD_BITMAP_IO_ENGINE` asks for, else the best this kernel allows.
    /// `batch`: submissions wait for `flush()` (the owner calls it once per loop turn).
    /// `one_thread`: the thread calling this is the only one that will submit, flush,
    /// reap and pin (an io_uring ring then defers completion work to the reap; see uring.rs).
    pub fn from_env(batch: bool, one_thread: bool) -> Result<Engine> {
        let forced = match std::env::var("MD_BITMAP_IO_ENGINE") {
            Ok(v) if !v.is_empty() => Some(EngineKind::parse(&v).ok_or_else(|| {
                IoError::new("EINVAL", format!("MD_BITMAP_IO_ENGINE must be 'uring', 'aio' or 'threads', got '{v}'"))
            })?),
            _ => None,
        };
        Self::new(forced, batch, one_thread)
    }

    /// `forced`: that kind or an error saying why it is unavailable; `None`: the best
    /// available, with the reasons the better ones were refused.
    pub fn new(forced: Option<EngineKind>, batch: bool, one_thread: bool) -> Result<Engine> {
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(IoError::last("eventfd for I/O completions"));
        }
        let completions = Arc::new(Completions { queue: Mutex::new(Vec::new()), eventfd: unsafe { OwnedFd::from_raw_fd(fd) } });
        let make = |kind: EngineKind| -> io::Result<Option<Box<dyn KernelQueue>>> {
            Ok(match kind {
                EngineKind::Uring => Some(Box::new(Uring::new(fd, one_thread)?)),
                EngineKind::Aio => Some(Box::new(Aio::new(fd)?)),
                EngineKind::Threads => None,
            })
        };
        let mut refusals = Vec::new();
        let order: &[EngineKind] = match forced {
            Some(k) => &[k][..],
            None => &[EngineKind::Uring, EngineKind::Aio, EngineKind::Threads][..],
        };
        for &kind in order {
            match make(kind) {
                Ok(mut queue) => {
                    let drains_late = queue.as_mut().is_none_or(|q| q.ready().is_some());
                    let kernel = queue.map(|queue| Mutex::new(KernelState { queue, on_kernel: 0, backlog: VecDeque::new(), unflushed: 0 }));
                    let reason = match forced {
                        Some(_) => Some("forced by MD_BITMAP_IO_ENGINE".to_string()),
                        None if refusals.is_empty() => None,
                        None => Some(refusals.join("; ")),
                    };
                    return Ok(Engine { kind, reason, batch, batch_limit: batch_limit_from_env(), kernel, completions, in_flight: AtomicUsize::new(0), drains_late });
                }
                Err(e) => {
                    let what = if kind == EngineKind::Uring { "io_uring_setup" } else { "io_setup" };
                    if forced.is_some() {
                        let mut err: IoError = e.into();
                        err.message = format!("MD_BITMAP_IO_ENGINE={}: {what} refused: {}", kind.name(), err.message);
                        return Err(err);
                    }
                    refusals.push(format!("{what} refused: {e}"));
                }
            }
        }
        unreachable!("the thread engine cannot be refused")
    }

    pub fn kind(&self) -> EngineKind {
        self.kind
    }
    /// Whether completion work waits for the reap (an io_uring ring used from one
    /// thread, on a kernel that allows it; see uring.rs).
    pub fn deferred_completions(&self) -> bool {
        self.kernel.as_ref().is_some_and(|k| k.lock().unwrap().queue.deferred())
    }
    /// Why a better kind was not used (or that the kind was forced).
    pub fn reason(&self) -> Option<&str> {
        self.reason.as_deref()
    }
    /// The descriptor the event loop polls for readability; then call `reap()`.
    pub fn eventfd(&self) -> RawFd {
        self.completions.eventfd.as_raw_fd()
    }
    /// Operations submitted whose `Done` has not run yet.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }
    /// Whether completion work seems to wait, read without a system call (crate::spin);
    /// None where the engine cannot tell that way (AIO, the I/O threads).
    /// Completions of the I/O threads count too (they are in memory already).
    pub fn completion_hint(&self) -> Option<bool> {
        let kernel = self.kernel.as_ref()?.lock().unwrap().queue.hint()?;
        Some(kernel || !self.completions.queue.lock().unwrap().is_empty())
    }
    /// Operations queued for or in the kernel (not those on the I/O threads).
    pub fn in_kernel(&self) -> usize {
        self.kernel.as_ref().map_or(0, |k| k.lock().unwrap().on_kernel)
    }
    /// Whether submissions wait for `flush()`.
    pub fn batched(&self) -> bool {
        self.batch
    }

    /// Starts `op`; `done` runs with its result in a later `reap()`.
    pub fn submit(&self, op: Op, route: Route, done: Done) {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        match (&self.kernel, route) {
            (Some(kernel), Route::Kernel) => {
                let flight = Box::into_raw(Box::new(Flight { op, done, iocb: Default::default() }));
                let mut k = kernel.lock().unwrap();
                if k.on_kernel < k.queue.capacity() {
                    k.on_kernel += 1;
                    k.queue.queue(flight);
                    k.unflushed += 1;
                } else {
                    k.backlog.push_back(flight);
                }
                // Batched: hand over once a batch is queued, or at once while the kernel
                // holds less than a batch of this engine's operations (the device would
                // otherwise idle until the end of the turn; at depth 1, every write).
                let handed = k.on_kernel - k.unflushed;
                if !self.batch || k.unflushed >= self.batch_limit || (self.batch_limit != usize::MAX && handed < self.batch_limit) {
                    k.unflushed = 0;
                    k.queue.flush();
                }
            }
            _ => self.run_on_pool(move || op.run_blocking(), done),
        }
    }

    /// Runs `work` on an I/O thread; `done` runs with its result in a later `reap()`.
    pub fn spawn(&self, work: impl FnOnce() -> io::Result<()> + Send + 'static, done: Done) {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.run_on_pool(work, done)
    }

    fn run_on_pool(&self, work: impl FnOnce() -> io::Result<()> + Send + 'static, done: Done) {
        let completions = self.completions.clone();
        IoPool::global().spawn(move || {
            let r = work();
            completions.push(done, r);
        });
    }

    /// Hands every queued operation to the kernel.
    pub fn flush(&self) {
        if let Some(kernel) = &self.kernel {
            let mut k = kernel.lock().unwrap();
            k.unflushed = 0;
            k.queue.flush();
        }
    }

    /// Pins `fd`'s open file to this engine until [`Engine::unpin`]: if the process dies
    /// with operations in the kernel, the file is released only once they completed.
    /// Under io_uring a killed process's writes can land after it is gone (the ring is
    /// torn down later, by the kernel); a lock held on a pinned file is held until the
    /// ring is freed, after them, so a new owner does not start while they land (not
    /// always: see uring.rs; the wait at a store's open, fence.rs, is what closes the
    /// window). AIO contexts and I/O threads are waited for by the process's death, so
    /// there nothing needs pinning (None).
    pub fn pin(&self, fd: RawFd) -> Option<u32> {
        self.kernel.as_ref()?.lock().unwrap().queue.pin(fd)
    }
    /// Releases a file pinned by [`Engine::pin`].
    pub fn unpin(&self, slot: u32) {
        if let Some(kernel) = &self.kernel {
            kernel.lock().unwrap().queue.unpin(slot);
        }
    }

    /// Settles every completion available now, in one pass: each operation's `Done`
    /// runs here, on the caller's thread. Returns how many settled.
    pub fn reap(&self) -> usize {
        self.drain_signal();
        self.settle_available()
    }

    /// `reap` for an event loop that calls [`Engine::rearm`] once the wake-up's own work
    /// is done (the settlements' reactions, and the flush of what they submitted): the
    /// eventfd is then drained after the next submissions have reached the kernel, not
    /// on the way from a completion to them. Where the kernel queue cannot tell whether
    /// completions wait without a system call (AIO), this drains first, as `reap` does.
    pub fn reap_before_rearm(&self) -> usize {
        if !self.drains_late {
            self.drain_signal();
        }
        self.settle_available()
    }

    /// After [`Engine::reap_before_rearm`] and the flush: drains the eventfd, then signals
    /// it again if a completion arrived meanwhile whose signal the drain took (it is
    /// collected at the next wake-up, which comes at once).
    pub fn rearm(&self) {
        if !self.drains_late {
            return;
        }
        self.drain_signal();
        let kernel_ready = self.kernel.as_ref().is_some_and(|k| k.lock().unwrap().queue.ready() == Some(true));
        if kernel_ready || !self.completions.queue.lock().unwrap().is_empty() {
            self.completions.signal();
        }
    }

    fn drain_signal(&self) {
        let mut count: u64 = 0;
        unsafe { libc::read(self.eventfd(), (&mut count as *mut u64).cast(), 8) };
    }

    fn settle_available(&self) -> usize {
        let mut ready: Vec<(Done, io::Result<()>)> = Vec::new();
        if let Some(kernel) = &self.kernel {
            let mut k = kernel.lock().unwrap();
            let mut results = Vec::new();
            k.queue.collect(&mut results);
            for (flight, res) in results {
                // SAFETY: every flight the kernel gives back came from Box::into_raw in
                // `submit` and is given back once.
                let f = unsafe { &mut *flight };
                match kernel_result(&f.op, res) {
                    Transfer::Done(r) => {
                        k.on_kernel -= 1;
                        let f = unsafe { Box::from_raw(flight) };
                        ready.push((f.done, r));
                    }
                    Transfer::Short(n) => {
                        f.op = f.op.advanced(n);
                        k.queue.queue(flight);
                    }
                    Transfer::Retry => k.queue.queue(flight),
                }
            }
            while k.on_kernel < k.queue.capacity() {
                let Some(flight) = k.backlog.pop_front() else { break };
                k.on_kernel += 1;
                k.queue.queue(flight);
            }
            if !self.batch {
                k.queue.flush();
            }
        }
        ready.append(&mut self.completions.queue.lock().unwrap());
        let n = ready.len();
        for (done, r) in ready {
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            done(r);
        }
        n
    }

    /// For the core's tests and other Rust users with no event loop: a thread that
    /// waits on the eventfd and reaps, so `Done`s run on that thread. (The Node binding
    /// in a runtime with no libuv loop keeps `Done`s on the JavaScript thread instead:
    /// its completion thread only polls, and hands each wake-up over to be reaped there.)
    pub fn reap_on_own_thread(self: &Arc<Self>) {
        let engine = self.clone();
        std::thread::Builder::new()
            .name("md-bitmap-reap".into())
            .spawn(move || loop {
                let mut pfd = libc::pollfd { fd: engine.eventfd(), events: libc::POLLIN, revents: 0 };
                unsafe { libc::poll(&mut pfd, 1, -1) };
                engine.reap();
                if engine.batch {
                    engine.flush();
                }
            })
            .expect("cannot start the completion thread");
    }
}


/// How many queued operations make a batch go to the kernel before the loop turn ends:
/// `MD_BITMAP_IO_SUBMIT=N`, or `tick` for none (only the turn's end flushes); default
/// [`DEFAULT_BATCH_LIMIT`].
fn batch_limit_from_env() -> usize {
    match std::env::var("MD_BITMAP_IO_SUBMIT").as_deref() {
        Ok("tick") => usize::MAX,
        Ok(v) => v.parse().ok().filter(|&n| n > 0).unwrap_or(DEFAULT_BATCH_LIMIT),
        Err(_) => DEFAULT_BATCH_LIMIT,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set_errno(e: i32) {
        unsafe { *libc::__errno_location() = e };
    }
    fn errno_of(t: Transfer) -> Option<i32> {
        match t {
            Transfer::Done(Err(e)) => e.raw_os_error(),
            _ => None,
        }
    }
    const WRITE: Op = Op::Write { fd: 0, buf: std::ptr::null(), len: 4096, offset: 0 };

    #[test]
    fn a_kernel_result_of_minus_one_is_eperm_whatever_errno_holds() {
        // errno left over from an unrelated call must not leak into a completion.
        for stale in [0, libc::EINTR, libc::ENOENT] {
            set_errno(stale);
            assert_eq!(errno_of(kernel_result(&WRITE, -1)), Some(libc::EPERM), "stale errno {stale}");
        }
        assert_eq!(errno_of(kernel_result(&WRITE, -(libc::EIO as i64))), Some(libc::EIO));
        assert!(matches!(kernel_result(&WRITE, -(libc::EAGAIN as i64)), Transfer::Retry));
        assert!(matches!(kernel_result(&WRITE, 4096), Transfer::Done(Ok(()))));
        assert!(matches!(kernel_result(&WRITE, 512), Transfer::Short(512)));
    }

    #[test]
    fn a_blocking_calls_minus_one_takes_its_error_from_errno() {
        set_errno(libc::EIO);
        assert_eq!(errno_of(blocking_result(&WRITE, -1)), Some(libc::EIO));
        set_errno(libc::EINTR);
        assert!(matches!(blocking_result(&WRITE, -1), Transfer::Retry));
        assert!(matches!(blocking_result(&Op::DataSync { fd: 0 }, 0), Transfer::Done(Ok(()))));
        assert!(matches!(blocking_result(&WRITE, 0), Transfer::Done(Err(_))));
    }

    #[test]
    fn a_failed_pwrite_reports_its_errno_through_the_blocking_path() {
        // A real failing call: writing to a read-only descriptor is EBADF.
        let f = std::fs::File::open("/proc/self/exe").unwrap();
        let buf = [0u8; 16];
        let op = Op::Write { fd: f.as_raw_fd(), buf: buf.as_ptr(), len: buf.len(), offset: 0 };
        assert_eq!(op.run_blocking().unwrap_err().raw_os_error(), Some(libc::EBADF));
    }

    /// Whether the engine's eventfd is signalled within `ms` (0: now).
    fn signalled_within(engine: &Engine, ms: i32) -> bool {
        let mut pfd = libc::pollfd { fd: engine.eventfd(), events: libc::POLLIN, revents: 0 };
        unsafe { libc::poll(&mut pfd, 1, ms) == 1 }
    }

    fn completions_within(engine: &Engine, ms: i32) -> usize {
        signalled_within(engine, ms);
        engine.reap()
    }

    /// A write of one 512-byte page of `file` at page `i`; counts its success in `done`.
    fn submit_page(engine: &Engine, file: &std::fs::File, page: &[u8], i: usize, done: &Arc<AtomicUsize>) {
        let d = done.clone();
        let op = Op::Write { fd: file.as_raw_fd(), buf: page.as_ptr(), len: page.len(), offset: (i * 512) as u64 };
        engine.submit(op, Route::Kernel, Box::new(move |r| {
            r.unwrap();
            d.fetch_add(1, Ordering::SeqCst);
        }));
    }

    /// Batched submission: while the kernel holds less than a batch of the engine's
    /// operations, each goes to the kernel at once (no flush needed); once it holds a
    /// batch, operations wait for `flush()` until `DEFAULT_BATCH_LIMIT` are queued.
    /// Reads of an empty pipe hold the kernel busy (io_uring waits on the pipe for them).
    #[test]
    fn operations_wait_for_a_batch_only_while_the_kernel_holds_one() {
        for one_thread in [false, true] {
            let engine = Engine::new(Some(EngineKind::Uring), true, one_thread).expect("io_uring is available on this machine");
            // This kernel (6.1 or later) takes the deferred mode for a ring used from one thread.
            assert_eq!(engine.deferred_completions(), one_thread, "deferred completion work");
            let file = unlinked_temp_file();
            let done = Arc::new(AtomicUsize::new(0));
            let page = vec![7u8; 512];
            // Idle kernel: the first write goes at once.
            submit_page(&engine, &file, &page, 0, &done);
            assert_eq!(completions_within(&engine, 2000), 1, "a write to an idle kernel waited for a flush");
            // A batch of pipe reads the kernel keeps until the pipe has data.
            let mut fds = [0; 2];
            assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
            let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
            let mut sinks = [[0u8; 1]; DEFAULT_BATCH_LIMIT];
            let reads = Arc::new(AtomicUsize::new(0));
            for sink in sinks.iter_mut() {
                let r = reads.clone();
                engine.submit(Op::Read { fd: rd.as_raw_fd(), buf: sink.as_mut_ptr(), len: 1, offset: u64::MAX }, Route::Kernel, Box::new(move |res| {
                    res.unwrap();
                    r.fetch_add(1, Ordering::SeqCst);
                }));
            }
            assert_eq!(completions_within(&engine, 200), 0, "a read of an empty pipe completed");
            // Now a partial batch waits.
            for i in 1..DEFAULT_BATCH_LIMIT {
                submit_page(&engine, &file, &page, i, &done);
            }
            assert_eq!(completions_within(&engine, 200), 0, "a partial batch reached a busy kernel unflushed");
            submit_page(&engine, &file, &page, DEFAULT_BATCH_LIMIT, &done);
            let mut settled = 0;
            for _ in 0..50 {
                settled += completions_within(&engine, 100);
                if settled == DEFAULT_BATCH_LIMIT {
                    break;
                }
            }
            assert_eq!(settled, DEFAULT_BATCH_LIMIT, "the full batch did not complete");
            assert_eq!(done.load(Ordering::SeqCst), DEFAULT_BATCH_LIMIT + 1);
            // Release the reads: one byte each.
            let bytes = [1u8; DEFAULT_BATCH_LIMIT];
            assert_eq!(unsafe { libc::write(wr.as_raw_fd(), bytes.as_ptr().cast(), bytes.len()) }, bytes.len() as isize);
            for _ in 0..50 {
                completions_within(&engine, 100);
                if reads.load(Ordering::SeqCst) == DEFAULT_BATCH_LIMIT {
                    break;
                }
            }
            assert_eq!(reads.load(Ordering::SeqCst), DEFAULT_BATCH_LIMIT);
            assert_eq!(engine.in_flight(), 0);
        }
    }

    /// AIO has no way to hold its kernel busy on demand here; its idle-kernel half.
    #[test]
    fn under_aio_a_write_to_an_idle_kernel_goes_without_a_flush() {
        let engine = Engine::new(Some(EngineKind::Aio), true, false).expect("AIO is available on this machine");
        let file = unlinked_temp_file();
        let done = Arc::new(AtomicUsize::new(0));
        let page = vec![7u8; 512];
        submit_page(&engine, &file, &page, 0, &done);
        assert_eq!(completions_within(&engine, 2000), 1);
        assert_eq!(done.load(Ordering::SeqCst), 1);
    }

    /// `reap_before_rearm` leaves the eventfd to `rearm`: a completion that arrived after
    /// the settlements, whose signal the drain takes, is signalled again (not lost); with
    /// nothing left, the eventfd is quiet (no empty wake-up).
    #[test]
    fn rearm_keeps_the_signal_of_a_completion_that_came_after_the_reap() {
        for (kind, one_thread) in [(EngineKind::Uring, true), (EngineKind::Uring, false), (EngineKind::Threads, false)] {
            let engine = Engine::new(Some(kind), true, one_thread).unwrap();
            let file = unlinked_temp_file();
            let done = Arc::new(AtomicUsize::new(0));
            let page = vec![7u8; 512];
            submit_page(&engine, &file, &page, 0, &done);
            engine.flush();
            assert!(signalled_within(&engine, 2000), "{}: no signal", kind.name());
            assert_eq!(engine.reap_before_rearm(), 1);
            // A completion between the reap and the rearm: its signal is drained by rearm.
            submit_page(&engine, &file, &page, 1, &done);
            engine.flush();
            std::thread::sleep(std::time::Duration::from_millis(100));
            engine.rearm();
            assert!(signalled_within(&engine, 0), "{}: the second completion's signal was lost", kind.name());
            assert_eq!(engine.reap_before_rearm(), 1, "{}: the second completion", kind.name());
            engine.rearm();
            assert!(!signalled_within(&engine, 0), "{}: signalled with nothing to reap", kind.name());
            assert_eq!(done.load(Ordering::SeqCst), 2);
            assert_eq!(engine.in_flight(), 0);
        }
    }

    /// The kernel can leave `IORING_SQ_TASKRUN` raised with no completion work queued
    /// (uring.rs, top comment); nothing lowers it until the next completion's work runs. A
    /// wake-up must still end, and must not signal the loop again on the flag's word
    /// alone (an idle loop would spin), and the next completion must still be seen.
    /// Test-only fault (`raise_stale_taskrun`): the kernel's race cannot be made to
    /// happen on demand, so the flag is raised by hand where the race leaves it.
    #[test]
    fn a_stale_taskrun_flag_neither_spins_the_reap_nor_wakes_the_loop() {
        let (tx, rx) = std::sync::mpsc::channel::<&'static str>();
        // A deferred ring is used only from the thread that made it.
        let worker = std::thread::spawn(move || {
            let engine = Engine::new(Some(EngineKind::Uring), true, true).unwrap();
            assert!(engine.deferred_completions(), "this kernel takes the deferred mode");
            let file = unlinked_temp_file();
            let done = Arc::new(AtomicUsize::new(0));
            let page = vec![7u8; 512];
            // One wake-up as the Node reactor runs it.
            let wake_up = |engine: &Engine| {
                let n = engine.reap_before_rearm();
                engine.flush();
                engine.rearm();
                n
            };
            submit_page(&engine, &file, &page, 0, &done);
            assert!(signalled_within(&engine, 2000));
            assert_eq!(wake_up(&engine), 1);
            engine.kernel.as_ref().unwrap().lock().unwrap().queue.raise_stale_taskrun();
            // The stale flag before a wake-up's reap (a signal with it, or another
            // operation's): the reap returns.
            assert_eq!(wake_up(&engine), 0);
            tx.send("reaped").unwrap();
            // And the loop is not woken for it again and again.
            let mut woken = 0;
            for _ in 0..3 {
                if signalled_within(&engine, 50) {
                    woken += 1;
                    wake_up(&engine);
                }
            }
            assert_eq!(woken, 0, "the loop was woken for a stale flag");
            // The next completion is seen.
            submit_page(&engine, &file, &page, 1, &done);
            assert!(signalled_within(&engine, 2000), "the next completion was not signalled");
            let mut settled = wake_up(&engine);
            for _ in 0..20 {
                if settled == 1 {
                    break;
                }
                signalled_within(&engine, 100);
                settled += wake_up(&engine);
            }
            assert_eq!(settled, 1);
            assert_eq!(done.load(Ordering::SeqCst), 2);
            assert_eq!(engine.in_flight(), 0);
            tx.send("done").unwrap();
        });
        for what in ["the reap after the stale flag", "the wake-ups after it"] {
            match rx.recv_timeout(std::time::Duration::from_secs(10)) {
                Ok(_) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => panic!("{what}: still running after 10 s (spinning on the stale flag)"),
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => std::panic::resume_unwind(worker.join().unwrap_err()),
            }
        }
    }

    /// Test-only fault (`miscount_queued`): a ring that takes nothing from a submission
    /// (0 entries consumed) cannot be made on demand here (no SQPOLL thread consumes
    /// entries behind the count), so the count is put one above the ring's by hand.
    #[test]
    fn a_submission_the_kernel_takes_nothing_of_ends_the_flush_instead_of_spinning() {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let worker = std::thread::spawn(move || {
            let engine = Engine::new(Some(EngineKind::Uring), true, true).unwrap();
            let file = unlinked_temp_file();
            let done = Arc::new(AtomicUsize::new(0));
            let page = vec![3u8; 512];
            engine.kernel.as_ref().unwrap().lock().unwrap().queue.miscount_queued();
            // An idle ring: the write goes to the kernel at once, with the miscount.
            submit_page(&engine, &file, &page, 0, &done);
            engine.flush();
            tx.send(()).unwrap();
            // The write itself reached the kernel, and the next one does too.
            assert_eq!(completions_within(&engine, 2000), 1);
            submit_page(&engine, &file, &page, 1, &done);
            engine.flush();
            assert_eq!(completions_within(&engine, 2000), 1);
            assert_eq!(done.load(Ordering::SeqCst), 2);
            assert_eq!(engine.in_flight(), 0);
        });
        match rx.recv_timeout(std::time::Duration::from_secs(10)) {
            Ok(()) => worker.join().unwrap(),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => panic!("the submission still running after 10 s (spinning on a count the ring does not have)"),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => std::panic::resume_unwind(worker.join().unwrap_err()),
        }
    }

    fn unlinked_temp_file() -> std::fs::File {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir();
        // Unique per call: tests run in parallel, and one's removal must not be another's.
        let path = dir.join(format!("md-bitmap-engine-batch-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::SeqCst)));
        let f = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        f
    }
}
