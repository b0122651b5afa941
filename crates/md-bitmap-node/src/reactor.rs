//! The I/O engine on a JavaScript thread: one `Engine` per thread, every completion of
//! one wake-up settled in one pass on that thread (no I/O thread, no threadsafe
//! function per I/O). Two ways to learn of a wake-up (`Reaper`):
//!
//! - `loop` (the default): the engine's eventfd polled by the thread's own libuv loop.
//!   `napi_get_uv_event_loop` gives the loop, and libuv's `uv_poll_*`, `uv_prepare_*`
//!   and `uv_ref`/`uv_unref` (exported by the node binary to addons) are declared here.
//!   Promises settled from a raw libuv callback need their reactions run: each wake-up
//!   settles inside a handle scope and a callback scope (with an async resource made
//!   once), and closing the callback scope drains the microtask and nextTick queues, as
//!   for any other I/O callback.
//! - `thread`: where the runtime gives no libuv loop (`napi_get_uv_event_loop` fails),
//!   or forced by `MD_BITMAP_IO_REAPER=thread`: one completion thread polls the eventfd
//!   and hands over through ONE threadsafe function, called once per wake-up; it does not
//!   poll again until the JavaScript side has reaped (the eventfd is level-triggered, so
//!   polling sooner would spin, and calling again would queue calls). The threadsafe
//!   function's call runs in its own callback scope, so reactions run as in `loop`.
//!
//! Reactor states (per JavaScript thread; `loop` and `thread` alike, the keep-alive
//! being the poll handle or the threadsafe function, referenced or not):
//!
//! ```text
//!   none ──first open_store──▶ idle: watching the eventfd, unreferenced (the loop may exit)
//!   idle ──an I/O submitted──▶ busy: referenced (the loop waits for the completion)
//!   busy ──wake-up: reap, settle, wake idle-waiters, flush; in_flight() == 0──▶ idle
//!   idle/busy ──environment torn down──▶ draining: the eventfd no longer watched
//!       (poll handle closed / completion thread stopped and joined, threadsafe function
//!       released); completions reaped right here until in_flight() == 0, with every
//!       settlement and waiter dropped without calling into the environment
//!   draining ──nothing in flight──▶ gone: the reactor and its async resource freed (its
//!       handles once the loop has closed them); the engine (ring, eventfd) goes with
//!       the last store that holds it
//! ```
//!
//! `thread` mode, the completion thread and the JavaScript side:
//!
//! ```text
//!   armed ──eventfd readable──▶ handed over: armed = false, one non-blocking call
//!   handed over ──the call runs on JS: reap, settle, wake idle-waiters──▶ armed
//!   any ──stop (teardown)──▶ stopped: the thread returns (joined)
//! ```
//!
//! Submissions, `loop`: batched (the default): the engine hands its queue to the kernel
//! whenever 4 I/Os are queued (`MD_BITMAP_IO_SUBMIT=N`; `tick`: never mid-turn), and
//! each I/O at once while the kernel holds fewer than 4 (at depth 1, every one), a
//! prepare handle flushes the rest just before the loop waits, and every wake-up
//! flushes what the settled promises' reactions submitted, then drains the eventfd
//! (`Engine::rearm`: after the flush, so the drain is not on the way from a completion
//! to the next submission). `MD_BITMAP_IO_SUBMIT=write`
//! hands each I/O to the kernel as it is submitted. Measured here (docs/benchmarks.md):
//! batching takes less CPU per write than `write` at depth 32, and batches of 4 keep
//! the device busier than whole turns or batches of 8.
//!
//! Before the loop waits, `loop` only: after that flush, the prepare handle spins for
//! completion work, up to `MD_BITMAP_IO_SPIN_US` (default 200 µs, 0 off), while at
//! least 8 operations are in the kernel and the wake-up before was a pipeline's (it
//! settled some and submitted no more), backing off after spins that found nothing
//! (md_bitmap_io::spin has the state machine and the measurements). The spin reads
//! shared memory only; libuv's poll then finds the eventfd signalled and does not
//! sleep. The handle exists when batching or spinning is on.
//!
//! Submissions, `thread`: per write, always. There is no per-turn hook to flush from,
//! and flushing at the end of the handed-over call would miss most of a turn's I/O:
//! the reactions that submit the next writes run when the threadsafe function's
//! callback scope closes, after that call has returned, and I/O started from timers or
//! other callbacks never passes through it at all.
//!
//! Idle-waiters (`when`): work waiting for a condition that only a settlement can make
//! true (a store's pending writes reaching zero, for `waitIdle` and `close`); checked
//! after every reap, so no thread waits on the core's condition variable for them.
//!
//! Teardown (a worker thread terminated, or the main thread's environment freed): the
//! kernel may still be reading from or writing into buffers that JavaScript owns and
//! that go with the thread's heap, so teardown blocks until every operation in flight
//! has completed. Their `Done`s run during the drain; `torn_down()` tells them not to
//! touch the environment.

use md_bitmap_io::spin::{Spin, SpinCounts};
use md_bitmap_io::{Engine, IoError};
use napi::sys;
use std::cell::{Cell, RefCell};
use std::ffi::{c_int, c_void};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::ptr;
use std::sync::{Arc, Condvar, Mutex};

const UV_POLL: c_int = 8;
const UV_PREPARE: c_int = 9;
const UV_READABLE: c_int = 1;

extern "C" {
    fn uv_handle_size(kind: c_int) -> usize;
    fn uv_poll_init(lp: *mut sys::uv_loop_s, handle: *mut c_void, fd: c_int) -> c_int;
    fn uv_poll_start(handle: *mut c_void, events: c_int, cb: extern "C" fn(*mut c_void, c_int, c_int)) -> c_int;
    fn uv_prepare_init(lp: *mut sys::uv_loop_s, handle: *mut c_void) -> c_int;
    fn uv_prepare_start(handle: *mut c_void, cb: extern "C" fn(*mut c_void)) -> c_int;
    fn uv_ref(handle: *mut c_void);
    fn uv_unref(handle: *mut c_void);
    fn uv_close(handle: *mut c_void, cb: extern "C" fn(*mut c_void));
    fn uv_strerror(err: c_int) -> *const std::ffi::c_char;
}

/// How a reactor learns that completions are ready.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReaperKind {
    Loop,
    Thread,
}

impl ReaperKind {
    pub fn name(self) -> &'static str {
        match self {
            ReaperKind::Loop => "loop",
            ReaperKind::Thread => "thread",
        }
    }
}

/// The `thread` reaper's shared state: the completion thread and the JavaScript side.
struct Handover {
    /// Whether the thread may poll the eventfd (false from a hand-over until the reap).
    armed: Mutex<bool>,
    rearmed: Condvar,
    /// Written once to stop the thread while it polls.
    stop: OwnedFd,
}

struct Tsfn(sys::napi_threadsafe_function);
// SAFETY: a threadsafe function is made to be called from any thread.
unsafe impl Send for Tsfn {}

enum Wake {
    Loop { poll: *mut c_void, prepare: Option<*mut c_void> },
    Thread { tsfn: sys::napi_threadsafe_function, handover: Arc<Handover>, thread: RefCell<Option<std::thread::JoinHandle<()>>> },
}

struct Waiter {
    ready: Box<dyn Fn() -> bool>,
    then: Box<dyn FnOnce()>,
}

pub struct Reactor {
    env: sys::napi_env,
    engine: Arc<Engine>,
    kind: ReaperKind,
    reason: Option<String>,
    wake: Wake,
    resource: sys::napi_ref,
    context: sys::napi_async_context,
    referenced: Cell<bool>,
    closed: Cell<bool>,
    waiters: RefCell<Vec<Waiter>>,
    /// `loop` only: the bounded spin before the loop sleeps (md_bitmap_io::spin).
    spin: RefCell<Spin>,
    /// Operations settled and submitted since the loop last got ready to wait.
    settled: Cell<u64>,
    submissions: Cell<u64>,
}

thread_local! {
    static REACTOR: Cell<Option<&'static Reactor>> = const { Cell::new(None) };
    static TORN_DOWN: Cell<bool> = const { Cell::new(false) };
}

/// Whether this thread's environment is being torn down: settlements must not call
/// into it (their promises are gone with it).
pub fn torn_down() -> bool {
    TORN_DOWN.with(|t| t.get())
}

fn status(what: &str, s: sys::napi_status) -> Result<(), IoError> {
    if s == sys::Status::napi_ok {
        Ok(())
    } else {
        Err(IoError::new("EINTERNAL", format!("{what} failed (napi status {s})")))
    }
}

fn uv(what: &str, r: c_int) -> Result<(), IoError> {
    if r == 0 {
        return Ok(());
    }
    let msg = unsafe { std::ffi::CStr::from_ptr(uv_strerror(r)) }.to_string_lossy().into_owned();
    Err(IoError::new("EINTERNAL", format!("{what}: {msg}")))
}

/// A libuv handle of `kind`, zeroed, its `data` (the first field of every handle)
/// pointing at `data`. Freed by `on_closed` once its close completes (libuv may touch
/// it until then).
fn handle(kind: c_int, data: *mut c_void) -> *mut c_void {
    // calloc: freed by `on_closed` with no need to know the handle's kind or size.
    let h = unsafe { libc::calloc(1, uv_handle_size(kind)) };
    assert!(!h.is_null(), "out of memory for a libuv handle");
    unsafe { *h.cast::<*mut c_void>() = data };
    h
}

/// A handle's close callback: libuv is done with it, so its memory goes.
extern "C" fn on_closed(handle: *mut c_void) {
    unsafe { libc::free(handle) };
}

/// Which of `fds` are readable, after waiting up to `timeout_ms` (-1: forever) for one.
fn readable<const N: usize>(fds: [c_int; N], timeout_ms: c_int) -> [bool; N] {
    let mut pfds = fds.map(|fd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 });
    if unsafe { libc::poll(pfds.as_mut_ptr(), N as libc::nfds_t, timeout_ms) } <= 0 {
        return [false; N];
    }
    pfds.map(|p| p.revents != 0)
}

impl Reactor {
    /// This JavaScript thread's reactor, made on first use.
    pub fn get(env: sys::napi_env) -> Result<&'static Reactor, IoError> {
        if let Some(r) = REACTOR.with(|r| r.get()) {
            return Ok(r);
        }
        let forced = match std::env::var("MD_BITMAP_IO_REAPER") {
            Ok(v) if v == "thread" => Some(ReaperKind::Thread),
            Ok(v) if v == "loop" => Some(ReaperKind::Loop),
            Ok(v) if !v.is_empty() => {
                return Err(IoError::new("EINVAL", format!("MD_BITMAP_IO_REAPER must be 'loop' or 'thread', got '{v}'")))
            }
            _ => None,
        };
        let mut lp = ptr::null_mut();
        let got_loop = unsafe { sys::napi_get_uv_event_loop(env, &mut lp) };
        let (kind, reason) = match (forced, got_loop == sys::Status::napi_ok && !lp.is_null()) {
            (Some(ReaperKind::Thread), _) => (ReaperKind::Thread, Some("forced by MD_BITMAP_IO_REAPER".to_string())),
            (_, false) => (ReaperKind::Thread, Some(format!("the runtime gives no libuv loop (napi_get_uv_event_loop: napi status {got_loop})"))),
            (Some(ReaperKind::Loop), true) => (ReaperKind::Loop, Some("forced by MD_BITMAP_IO_REAPER".to_string())),
            (None, true) => (ReaperKind::Loop, None),
        };
        // The thread reaper has no per-turn hook to flush a batch from: per write.
        let batch = kind == ReaperKind::Loop && std::env::var("MD_BITMAP_IO_SUBMIT").map(|v| v != "write").unwrap_or(true);
        // This thread alone submits, reaps and pins (the thread reaper only polls).
        let engine = Arc::new(Engine::from_env(batch, true)?);
        let spin = match kind {
            ReaperKind::Loop => Spin::from_env()?,
            ReaperKind::Thread => Spin::new(std::time::Duration::ZERO),
        };
        let r = Self::register(env, lp, engine, kind, reason, spin)?;
        REACTOR.with(|slot| slot.set(Some(r)));
        TORN_DOWN.with(|t| t.set(false));
        Ok(r)
    }

    fn register(env: sys::napi_env, lp: *mut sys::uv_loop_s, engine: Arc<Engine>, kind: ReaperKind, reason: Option<String>, spin: Spin) -> Result<&'static Reactor, IoError> {
        unsafe {
            let mut resource = ptr::null_mut();
            status("napi_create_object", sys::napi_create_object(env, &mut resource))?;
            let mut name = ptr::null_mut();
            let label = "md-bitmap:io";
            status("napi_create_string_utf8", sys::napi_create_string_utf8(env, label.as_ptr().cast(), label.len() as isize, &mut name))?;
            let mut context = ptr::null_mut();
            status("napi_async_init", sys::napi_async_init(env, resource, name, &mut context))?;
            let mut resource_ref = ptr::null_mut();
            status("napi_create_reference", sys::napi_create_reference(env, resource, 1, &mut resource_ref))?;
            let wake = match kind {
                ReaperKind::Loop => Wake::Loop { poll: ptr::null_mut(), prepare: None },
                ReaperKind::Thread => {
                    let fd = libc::eventfd(0, libc::EFD_CLOEXEC);
                    if fd < 0 {
                        return Err(IoError::last("eventfd to stop the completion thread"));
                    }
                    let handover = Arc::new(Handover { armed: Mutex::new(true), rearmed: Condvar::new(), stop: OwnedFd::from_raw_fd(fd) });
                    Wake::Thread { tsfn: ptr::null_mut(), handover, thread: RefCell::new(None) }
                }
            };
            let reactor: &'static mut Reactor = Box::leak(Box::new(Reactor {
                env,
                engine,
                kind,
                reason,
                wake,
                resource: resource_ref,
                context,
                referenced: Cell::new(false),
                closed: Cell::new(false),
                waiters: RefCell::new(Vec::new()),
                spin: RefCell::new(spin),
                settled: Cell::new(0),
                submissions: Cell::new(0),
            }));
            let me = (reactor as *mut Reactor).cast::<c_void>();
            let fd = reactor.engine.eventfd();
            let before_waits = reactor.engine.batched() || !reactor.spin.borrow().limit().is_zero();
            match &mut reactor.wake {
                Wake::Loop { poll, prepare } => {
                    *poll = handle(UV_POLL, me);
                    uv("uv_poll_init", uv_poll_init(lp, *poll, fd))?;
                    uv("uv_poll_start", uv_poll_start(*poll, UV_READABLE, on_readable))?;
                    uv_unref(*poll);
                    if before_waits {
                        let p = handle(UV_PREPARE, me);
                        uv("uv_prepare_init", uv_prepare_init(lp, p))?;
                        uv("uv_prepare_start", uv_prepare_start(p, before_wait))?;
                        uv_unref(p);
                        *prepare = Some(p);
                    }
                }
                Wake::Thread { tsfn, handover, thread } => {
                    status(
                        "napi_create_threadsafe_function",
                        sys::napi_create_threadsafe_function(env, ptr::null_mut(), resource, name, 0, 1, ptr::null_mut(), None, me, Some(on_handover), tsfn),
                    )?;
                    status("napi_unref_threadsafe_function", sys::napi_unref_threadsafe_function(env, *tsfn))?;
                    let (engine, handover, call) = (reactor.engine.clone(), handover.clone(), Tsfn(*tsfn));
                    let t = std::thread::Builder::new()
                        .name("md-bitmap-reap".into())
                        .spawn(move || completion_thread(&engine, &handover, call))
                        .map_err(|e| IoError::new("EINTERNAL", format!("cannot start the completion thread: {e}")))?;
                    *thread.borrow_mut() = Some(t);
                }
            }
            status("napi_add_env_cleanup_hook", sys::napi_add_env_cleanup_hook(env, Some(on_teardown), me))?;
            Ok(reactor)
        }
    }

    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }
    pub fn kind(&self) -> ReaperKind {
        self.kind
    }
    /// Why the reaper is not `loop` (or that it was forced).
    pub fn reason(&self) -> Option<&str> {
        self.reason.as_deref()
    }
    /// The spin's limit (zero: off) and what it did on this thread.
    pub fn spin(&self) -> (std::time::Duration, SpinCounts) {
        let s = self.spin.borrow();
        (s.limit(), s.counts())
    }

    /// Call after submitting an I/O: the loop must now wait for its completion (unless
    /// it was refused at once, a misuse settled without the engine).
    pub fn submitted(&self) {
        self.submissions.set(self.submissions.get() + 1);
        if !self.referenced.get() && !self.closed.get() && self.engine.in_flight() > 0 {
            self.keep_alive(true);
        }
    }

    fn keep_alive(&self, on: bool) {
        unsafe {
            match &self.wake {
                Wake::Loop { poll, .. } if on => uv_ref(*poll),
                Wake::Loop { poll, .. } => uv_unref(*poll),
                Wake::Thread { tsfn, .. } if on => {
                    sys::napi_ref_threadsafe_function(self.env, *tsfn);
                }
                Wake::Thread { tsfn, .. } => {
                    sys::napi_unref_threadsafe_function(self.env, *tsfn);
                }
            }
        }
        self.referenced.set(on);
    }

    /// Runs `then` once `ready()` holds: now if it does, else after the reap that makes
    /// it true. `ready` must only turn true through a settlement of this engine.
    pub fn when(&self, ready: impl Fn() -> bool + 'static, then: impl FnOnce() + 'static) {
        if ready() {
            then()
        } else {
            self.waiters.borrow_mut().push(Waiter { ready: Box::new(ready), then: Box::new(then) });
        }
    }

    fn wake_waiters(&self) {
        if self.waiters.borrow().is_empty() {
            return;
        }
        let waiting = std::mem::take(&mut *self.waiters.borrow_mut());
        let mut still = Vec::new();
        for w in waiting {
            if (w.ready)() {
                (w.then)()
            } else {
                still.push(w)
            }
        }
        // Waiters added by the `then`s ran after the take: keep them too.
        let mut list = self.waiters.borrow_mut();
        still.append(&mut list);
        *list = still;
    }

    /// One reap: every completion available settled, then the waiters it satisfied.
    /// The eventfd is drained by `after_wake`, once the next submissions are made.
    fn reap(&self) {
        let n = self.engine.reap_before_rearm();
        self.settled.set(self.settled.get() + n as u64);
        self.wake_waiters();
    }

    /// After a wake-up's settlements: flush what they submitted, drain the eventfd (and
    /// signal it again if a completion came meanwhile), let the loop go if idle.
    fn after_wake(&self) {
        if self.engine.batched() {
            self.engine.flush();
        }
        self.engine.rearm();
        if self.engine.in_flight() == 0 && self.referenced.get() {
            self.keep_alive(false);
        }
    }

    /// A `loop` wake-up: every completion available settled in one pass, reactions run.
    fn settle(&self) {
        unsafe {
            let env = self.env;
            let mut handles = ptr::null_mut();
            sys::napi_open_handle_scope(env, &mut handles);
            let mut resource = ptr::null_mut();
            sys::napi_get_reference_value(env, self.resource, &mut resource);
            let mut scope = ptr::null_mut();
            sys::napi_open_callback_scope(env, resource, self.context, &mut scope);
            self.reap();
            // Runs the microtasks and nextTicks the settlements queued.
            sys::napi_close_callback_scope(env, scope);
            sys::napi_close_handle_scope(env, handles);
        }
        self.after_wake();
    }

    /// Teardown: stop watching, drain the kernel, free the reactor.
    fn tear_down(&'static self) {
        self.closed.set(true);
        TORN_DOWN.with(|t| t.set(true));
        match &self.wake {
            Wake::Loop { poll, prepare } => unsafe {
                // Freed by on_closed when the loop runs the close callbacks (a worker's
                // teardown does; at a process's exit the memory goes with it).
                uv_close(*poll, on_closed);
                if let Some(p) = prepare {
                    uv_close(*p, on_closed);
                }
            },
            Wake::Thread { tsfn, handover, thread } => {
                {
                    let _armed = handover.armed.lock().unwrap();
                    let one: u64 = 1;
                    unsafe { libc::write(handover.stop.as_raw_fd(), (&one as *const u64).cast(), 8) };
                    handover.rearmed.notify_all();
                }
                if let Some(t) = thread.borrow_mut().take() {
                    let _ = t.join();
                }
                unsafe { sys::napi_release_threadsafe_function(*tsfn, sys::ThreadsafeFunctionReleaseMode::abort) };
            }
        }
        // The kernel (or an I/O thread) may still be using buffers of this thread's
        // heap: wait for every operation, running its Done here (torn_down() is set, so
        // none calls into the environment).
        while self.engine.in_flight() > 0 {
            self.engine.flush();
            readable([self.engine.eventfd()], 100);
            self.engine.reap();
        }
        self.waiters.borrow_mut().clear();
        // The async resource of the wake-ups' callback scopes, made in `register`. No
        // destroy hook runs for it: the environment no longer calls into JavaScript.
        unsafe {
            sys::napi_async_destroy(self.env, self.context);
            sys::napi_delete_reference(self.env, self.resource);
        }
        REACTOR.with(|slot| slot.set(None));
        // SAFETY: leaked in `register`; nothing refers to it any more: the handles are
        // closed (their close callback frees only the handle), the completion thread is
        // joined, the threadsafe function released, and the thread-local slot cleared.
        drop(unsafe { Box::from_raw(self as *const Reactor as *mut Reactor) });
    }
}

/// The `thread` reaper's loop: wait until armed, poll, disarm, hand over once.
fn completion_thread(engine: &Engine, handover: &Handover, call: Tsfn) {
    let stop = handover.stop.as_raw_fd();
    let stopped = || readable([stop], 0)[0];
    loop {
        {
            let mut armed = handover.armed.lock().unwrap();
            while !*armed && !stopped() {
                armed = handover.rearmed.wait(armed).unwrap();
            }
        }
        let [ready, stop_now] = readable([engine.eventfd(), stop], -1);
        if stop_now {
            return;
        }
        if !ready {
            continue; // interrupted
        }
        *handover.armed.lock().unwrap() = false;
        let s = unsafe { sys::napi_call_threadsafe_function(call.0, ptr::null_mut(), sys::ThreadsafeFunctionCallMode::nonblocking) };
        if s == sys::Status::napi_closing {
            return;
        }
    }
}

unsafe extern "C" fn on_handover(env: sys::napi_env, _js: sys::napi_value, context: *mut c_void, _data: *mut c_void) {
    if env.is_null() || torn_down() {
        return;
    }
    // SAFETY: the context is the reactor, alive until teardown (checked above).
    let reactor = unsafe { &*context.cast::<Reactor>() };
    // Node runs this call inside the threadsafe function's own callback scope: the
    // settlements' reactions run when it closes, after this returns.
    reactor.reap();
    reactor.after_wake();
    if let Wake::Thread { handover, .. } = &reactor.wake {
        *handover.armed.lock().unwrap() = true;
        handover.rearmed.notify_one();
    }
}

extern "C" fn on_readable(handle: *mut c_void, _status: c_int, _events: c_int) {
    // SAFETY: the handle's data is the reactor that registered it, alive until its
    // teardown, which closes the handle first.
    let reactor = unsafe { &*(*handle.cast::<*const Reactor>()) };
    reactor.settle();
}

extern "C" fn before_wait(handle: *mut c_void) {
    // SAFETY: as in on_readable.
    let reactor = unsafe { &*(*handle.cast::<*const Reactor>()) };
    let engine = &reactor.engine;
    if engine.batched() {
        engine.flush();
    }
    // The clock starts at the spin's first reading: no time is taken when it does not spin.
    let t0 = std::cell::OnceCell::new();
    let (settled, submitted) = (reactor.settled.replace(0), reactor.submissions.replace(0));
    reactor.spin.borrow_mut().before_wait(settled, submitted, || engine.in_kernel(), || engine.completion_hint(), || t0.get_or_init(std::time::Instant::now).elapsed().as_nanos() as u64);
}

unsafe extern "C" fn on_teardown(arg: *mut c_void) {
    // SAFETY: the reactor registered this hook with itself as the argument.
    let reactor: &'static Reactor = unsafe { &*arg.cast::<Reactor>() };
    reactor.tear_down();
}
