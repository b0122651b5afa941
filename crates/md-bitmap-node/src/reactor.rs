//! The I/O engine on Node's event loop: one `Engine` per JavaScript thread, its eventfd
//! polled by that thread's own libuv loop, and every completion of one wake-up settled
//! in one pass on the JavaScript thread (no I/O thread, no threadsafe function per I/O).
//!
//! The loop is Node's: `napi_get_uv_event_loop` gives it, and libuv's `uv_poll_*`,
//! `uv_prepare_*` and `uv_ref`/`uv_unref` (exported by the node binary to addons) are
//! declared here. Promises settled from a raw libuv callback need their reactions run:
//! each wake-up settles inside a handle scope and a callback scope (with an async
//! resource made once), and closing the callback scope drains the microtask and
//! nextTick queues, as for any other I/O callback.
//!
//! Reactor states (per JavaScript thread):
//!
//! ```text
//!   none ──first open_store──▶ idle: poll handle started, unreferenced (the loop may exit)
//!   idle ──an I/O submitted──▶ busy: poll handle referenced (the loop waits for it)
//!   busy ──wake-up: reap, settle, flush; engine.in_flight() == 0──▶ idle
//!   idle/busy ──environment torn down──▶ closed: handles closed, engine left to the process
//! ```
//!
//! Submissions are batched per loop turn (`MD_BITMAP_IO_SUBMIT=tick`, the default): a
//! prepare handle flushes the queue just before the loop waits, and every wake-up
//! flushes what the settled promises' reactions submitted, so one system call carries
//! every I/O of a turn. `MD_BITMAP_IO_SUBMIT=write` hands each I/O to the kernel as it
//! is submitted. Measured here (docs/benchmarks.md), batching took 20-25% less CPU per
//! write at depth 32, at the same throughput within the noise.

use md_bitmap_io::{Engine, IoError};
use napi::sys;
use std::cell::{Cell, RefCell};
use std::ffi::{c_int, c_void};
use std::ptr;
use std::sync::Arc;

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
    fn uv_close(handle: *mut c_void, cb: *const c_void);
    fn uv_strerror(err: c_int) -> *const std::ffi::c_char;
}

pub struct Reactor {
    env: sys::napi_env,
    engine: Arc<Engine>,
    poll: *mut c_void,
    prepare: Option<*mut c_void>,
    resource: sys::napi_ref,
    context: sys::napi_async_context,
    referenced: Cell<bool>,
    closed: Cell<bool>,
}

thread_local! {
    static REACTOR: RefCell<Option<&'static Reactor>> = const { RefCell::new(None) };
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
/// pointing at `data`. Never freed: handles live as long as their loop.
fn handle(kind: c_int, data: *mut c_void) -> *mut c_void {
    let size = unsafe { uv_handle_size(kind) };
    let words = vec![0u64; size.div_ceil(8)].into_boxed_slice();
    let h = Box::leak(words).as_mut_ptr().cast::<c_void>();
    unsafe { *h.cast::<*mut c_void>() = data };
    h
}

impl Reactor {
    /// This JavaScript thread's reactor, made on first use.
    pub fn get(env: sys::napi_env) -> Result<&'static Reactor, IoError> {
        if let Some(r) = REACTOR.with(|r| *r.borrow()) {
            return Ok(r);
        }
        let batch = std::env::var("MD_BITMAP_IO_SUBMIT").map(|v| v != "write").unwrap_or(true);
        let engine = Arc::new(Engine::from_env(batch)?);
        let r = Self::register(env, engine)?;
        REACTOR.with(|slot| *slot.borrow_mut() = Some(r));
        Ok(r)
    }

    fn register(env: sys::napi_env, engine: Arc<Engine>) -> Result<&'static Reactor, IoError> {
        unsafe {
            let mut lp = ptr::null_mut();
            status("napi_get_uv_event_loop", sys::napi_get_uv_event_loop(env, &mut lp))?;
            let mut resource = ptr::null_mut();
            status("napi_create_object", sys::napi_create_object(env, &mut resource))?;
            let mut name = ptr::null_mut();
            let label = "md-bitmap:io";
            status("napi_create_string_utf8", sys::napi_create_string_utf8(env, label.as_ptr().cast(), label.len() as isize, &mut name))?;
            let mut context = ptr::null_mut();
            status("napi_async_init", sys::napi_async_init(env, resource, name, &mut context))?;
            let mut resource_ref = ptr::null_mut();
            status("napi_create_reference", sys::napi_create_reference(env, resource, 1, &mut resource_ref))?;
            let batched = engine.batched();
            let fd = engine.eventfd();
            let reactor: &'static mut Reactor = Box::leak(Box::new(Reactor {
                env,
                engine,
                poll: ptr::null_mut(),
                prepare: None,
                resource: resource_ref,
                context,
                referenced: Cell::new(false),
                closed: Cell::new(false),
            }));
            let me = (reactor as *mut Reactor).cast::<c_void>();
            reactor.poll = handle(UV_POLL, me);
            uv("uv_poll_init", uv_poll_init(lp, reactor.poll, fd))?;
            uv("uv_poll_start", uv_poll_start(reactor.poll, UV_READABLE, on_readable))?;
            uv_unref(reactor.poll);
            if batched {
                let prepare = handle(UV_PREPARE, me);
                uv("uv_prepare_init", uv_prepare_init(lp, prepare))?;
                uv("uv_prepare_start", uv_prepare_start(prepare, before_wait))?;
                uv_unref(prepare);
                reactor.prepare = Some(prepare);
            }
            status("napi_add_env_cleanup_hook", sys::napi_add_env_cleanup_hook(env, Some(on_teardown), me))?;
            Ok(reactor)
        }
    }

    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// Call after submitting an I/O: the loop must now wait for its completion (unless
    /// it was refused at once, a misuse settled without the engine).
    pub fn submitted(&self) {
        if !self.referenced.get() && !self.closed.get() && self.engine.in_flight() > 0 {
            unsafe { uv_ref(self.poll) };
            self.referenced.set(true);
        }
    }

    /// A wake-up: every completion available settled in one pass, reactions run.
    fn settle(&self) {
        unsafe {
            let env = self.env;
            let mut handles = ptr::null_mut();
            sys::napi_open_handle_scope(env, &mut handles);
            let mut resource = ptr::null_mut();
            sys::napi_get_reference_value(env, self.resource, &mut resource);
            let mut scope = ptr::null_mut();
            sys::napi_open_callback_scope(env, resource, self.context, &mut scope);
            self.engine.reap();
            // Runs the microtasks and nextTicks the settlements queued.
            sys::napi_close_callback_scope(env, scope);
            sys::napi_close_handle_scope(env, handles);
        }
        if self.engine.batched() {
            self.engine.flush();
        }
        if self.engine.in_flight() == 0 && self.referenced.get() {
            unsafe { uv_unref(self.poll) };
            self.referenced.set(false);
        }
    }
}

extern "C" fn on_readable(handle: *mut c_void, _status: c_int, _events: c_int) {
    // SAFETY: the handle's data is the leaked reactor that registered it.
    let reactor = unsafe { &*(*handle.cast::<*const Reactor>()) };
    reactor.settle();
}

extern "C" fn before_wait(handle: *mut c_void) {
    // SAFETY: as in on_readable.
    let reactor = unsafe { &*(*handle.cast::<*const Reactor>()) };
    reactor.engine.flush();
}

unsafe extern "C" fn on_teardown(arg: *mut c_void) {
    let reactor = unsafe { &*arg.cast::<Reactor>() };
    reactor.closed.set(true);
    unsafe {
        uv_close(reactor.poll, ptr::null());
        if let Some(p) = reactor.prepare {
            uv_close(p, ptr::null());
        }
    }
    REACTOR.with(|slot| *slot.borrow_mut() = None);
}
