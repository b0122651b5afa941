//! The Node binding of md-bitmap-io: a few coarse operations, every one that touches a
//! disk done without blocking the JavaScript thread and returned as a promise. Page
//! reads, writes and syncs go through this thread's I/O engine (`reactor.rs`) and are
//! settled on the JavaScript thread, as are `waitIdle` and `close` (from the reap that
//! ends the last I/O in flight); opening and checking run on the I/O threads.
//! Errors reach JavaScript as instances of the class the TypeScript layer registers
//! (`setErrorClass`: `MdBitmapError`), else as `Error` objects, their `code` the core's
//! (an errno name, or one of the project's own such as `EEXTENT_HOLE`).

pub mod allocated;
pub mod punch;
mod reactor;

use md_bitmap_io::{self as io, IoError, PageStore, Requested};
use reactor::Reactor;
use napi::bindgen_prelude::*;
use napi::{check_status, sys, Env, JsValue};
use napi_derive::napi;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

thread_local! {
    /// This thread's error class (`setErrorClass`), called as `new Class(code, message,
    /// { errno })`; until one is set, errors are plain `Error`s with `code` and `errno`.
    static ERROR_CLASS: std::cell::Cell<sys::napi_ref> = const { std::cell::Cell::new(std::ptr::null_mut()) };
}

/// Makes every error this thread's addon throws or rejects with an instance of `class`
/// (the TypeScript layer's `MdBitmapError`), so no promise needs a handler of its own
/// to convert them.
#[napi(ts_args_type = "errorClass: new (code: string, message: string, options?: { errno?: number }) => Error")]
pub fn set_error_class(env: &Env, error_class: Unknown) -> Result<()> {
    let mut r = std::ptr::null_mut();
    check_status!(unsafe { sys::napi_create_reference(env.raw(), error_class.raw(), 1, &mut r) }, "napi_create_reference")?;
    let old = ERROR_CLASS.with(|c| c.replace(r));
    if !old.is_null() {
        unsafe { sys::napi_delete_reference(env.raw(), old) };
    }
    Ok(())
}

/// `new ErrorClass(code, message, { errno })`, when a class is set.
fn typed_error_object<'e>(env: &'e Env, e: &IoError) -> Option<Object<'e>> {
    let class_ref = ERROR_CLASS.with(|c| c.get());
    if class_ref.is_null() {
        return None;
    }
    let raw = env.raw();
    unsafe {
        let mut class = std::ptr::null_mut();
        if sys::napi_get_reference_value(raw, class_ref, &mut class) != sys::Status::napi_ok || class.is_null() {
            return None;
        }
        let mut options = Object::new(env).ok()?;
        if let Some(n) = e.errno {
            options.set("errno", n).ok()?;
        }
        let args = [env.create_string(&e.code).ok()?.raw(), env.create_string(&e.message).ok()?.raw(), options.raw()];
        let mut out = std::ptr::null_mut();
        if sys::napi_new_instance(raw, class, args.len(), args.as_ptr(), &mut out) != sys::Status::napi_ok {
            return None;
        }
        Some(Object::from_raw(raw, out))
    }
}

/// The JS error object for a core error, made on the JS thread, so `code` is the core's.
fn js_error_object<'e>(env: &'e Env, e: &IoError) -> Result<Object<'e>> {
    if let Some(obj) = typed_error_object(env, e) {
        return Ok(obj);
    }
    env.create_error(Error::new(Status::GenericFailure, e.message.clone())).and_then(|mut obj| {
        obj.set("code", e.code.as_str())?;
        if let Some(n) = e.errno {
            obj.set("errno", n)?;
        }
        Ok(obj)
    })
}

/// The JS error for a core error, as a napi `Error` to return or reject with.
fn js_error(env: &Env, e: &IoError) -> Error {
    js_error_object(env, e).map(|obj| Error::from(obj.to_unknown())).unwrap_or_else(|err| err)
}

/// A promise settled by the engine's `reap()` on the JS thread: a raw napi deferred,
/// with no threadsafe function behind it.
struct Settle {
    env: sys::napi_env,
    deferred: sys::napi_deferred,
}
// SAFETY: a `Settle` rides inside an I/O's completion, which may pass through an I/O
// thread's queue, but it is only used (settled) on the JS thread that made it.
unsafe impl Send for Settle {}

impl Settle {
    /// A new promise and its settler; tells the reactor an I/O is about to be submitted.
    fn new<'e>(env: &'e Env) -> Result<(Settle, Object<'e>)> {
        let mut deferred = std::ptr::null_mut();
        let mut promise = std::ptr::null_mut();
        check_status!(unsafe { sys::napi_create_promise(env.raw(), &mut deferred, &mut promise) }, "napi_create_promise")?;
        Ok((Settle { env: env.raw(), deferred }, Object::from_raw(env.raw(), promise)))
    }

    /// Settles with `r`; nothing when the environment is being torn down (the promise
    /// goes with it, and napi must not be called on it).
    fn settle(self, r: io::Result<()>) {
        if reactor::torn_down() {
            return;
        }
        let env = Env::from_raw(self.env);
        unsafe {
            match r {
                Ok(()) => {
                    let mut undefined = std::ptr::null_mut();
                    sys::napi_get_undefined(self.env, &mut undefined);
                    sys::napi_resolve_deferred(self.env, self.deferred, undefined);
                }
                Err(e) => {
                    let value = match js_error_object(&env, &e) {
                        Ok(obj) => obj.raw(),
                        Err(err) => napi::JsError::from(err).into_value(self.env),
                    };
                    sys::napi_reject_deferred(self.env, self.deferred, value);
                }
            }
        }
    }

    /// Resolves with `v` (nothing when the environment is being torn down).
    fn resolve_bool(self, v: bool) {
        if reactor::torn_down() {
            return;
        }
        unsafe {
            let mut value = std::ptr::null_mut();
            sys::napi_get_boolean(self.env, v, &mut value);
            sys::napi_resolve_deferred(self.env, self.deferred, value);
        }
    }
}

/// This thread's reactor, or the error that keeps it from being made.
pub(crate) fn reactor(env: &Env) -> Result<&'static Reactor> {
    Reactor::get(env.raw()).map_err(|e| js_error(env, &e))
}

/// Runs `work` on the I/O threads and settles a promise with its result, converted on
/// the JS thread by `convert`.
fn run<T, R, W, C>(env: &Env, work: W, convert: C) -> Result<Object<'_>>
where
    T: Send + 'static,
    R: ToNapiValue + 'static,
    W: FnOnce() -> io::Result<T> + Send + 'static,
    C: FnOnce(&Env, T) -> Result<R> + Send + 'static,
{
    let (deferred, promise) = env.create_deferred()?;
    let job = move || {
        let result = work();
        deferred.resolve(move |env| match result {
            Ok(v) => convert(&env, v),
            Err(e) => Err(js_error(&env, &e)),
        });
    };
    io::pool::IoPool::global().spawn(job);
    Ok(promise)
}

fn invalid(env: &Env, message: String) -> Error {
    js_error(env, &IoError::new("EINVAL", message))
}

fn offset_arg(env: &Env, what: &str, v: f64) -> Result<u64> {
    if v.is_finite() && v >= 0.0 && v.fract() == 0.0 && v <= 9007199254740991.0 {
        Ok(v as u64)
    } else {
        Err(invalid(env, format!("{what} must be a non-negative safe integer, got {v}")))
    }
}

/// One extent of a file: a run of bytes stored contiguously on the device.
#[napi(object)]
pub struct ExtentInfo {
    /// Where the extent starts in the file, in bytes.
    pub logical: f64,
    /// Where it starts on the device under the filesystem, in bytes.
    pub physical: f64,
    /// Its length in bytes.
    pub length: f64,
    /// The FIEMAP flags set on it, by name: `last`, `unknown`, `delalloc`, `encoded`,
    /// `encrypted`, `not_aligned`, `inline`, `tail`, `unwritten`, `merged`, `shared`.
    pub flags: Vec<String>,
}

/// The extent map of a file: where its bytes live on the device.
#[napi(object)]
pub struct ExtentMapInfo {
    /// The file's size in bytes.
    pub file_size: f64,
    /// The filesystem block size in bytes (FIGETBSZ, else st_blksize).
    pub block_size: f64,
    /// "fiemap" or "fibmap".
    #[napi(ts_type = "'fiemap' | 'fibmap'")]
    pub source: String,
    /// The extents, in file order.
    pub extents: Vec<ExtentInfo>,
}

/// One problem that `check` found with a file.
#[napi(object)]
pub struct ProblemInfo {
    /// A stable code naming the problem, e.g. `EEXTENT_HOLE` or `EEXTENT_UNWRITTEN`.
    pub code: String,
    /// What is wrong, in words.
    pub message: String,
    /// Where in the file the problem starts, in bytes, when it concerns a byte range.
    pub offset: Option<f64>,
    /// How many bytes the problem concerns, when it concerns a byte range.
    pub length: Option<f64>,
    /// Whether the problem rules out file mode.
    pub blocks_file_mode: bool,
    /// Whether the problem rules out device mode.
    pub blocks_device_mode: bool,
}

/// What `check` found about a file: whether file mode and device mode may use it.
#[napi(object)]
pub struct CheckInfo {
    /// The file's size in bytes.
    pub file_size: f64,
    /// The name of the filesystem the file is on, e.g. `ext4`, `xfs`, `btrfs`, `tmpfs`.
    pub fs_type: String,
    /// The block device under the filesystem (e.g. `/dev/loop0`), when it sits on one.
    pub device: Option<String>,
    /// True when no problem rules out file mode.
    pub file_mode_ok: bool,
    /// True when no problem rules out device mode.
    pub device_mode_ok: bool,
    /// Every problem found, each named by its code.
    pub problems: Vec<ProblemInfo>,
    /// The extent map, when the filesystem can map its blocks.
    pub map: Option<ExtentMapInfo>,
}

fn map_info(m: io::ExtentMap) -> ExtentMapInfo {
    ExtentMapInfo {
        file_size: m.file_size as f64,
        block_size: m.block_size as f64,
        source: match m.source {
            io::MapSource::Fiemap => "fiemap",
            io::MapSource::Fibmap => "fibmap",
        }
        .into(),
        extents: m
            .extents
            .iter()
            .map(|e| ExtentInfo {
                logical: e.logical as f64,
                physical: e.physical as f64,
                length: e.length as f64,
                flags: e.flag_names().into_iter().map(String::from).collect(),
            })
            .collect(),
    }
}

#[napi(ts_return_type = "Promise<ExtentMapInfo>")]
pub fn extents(env: &Env, path: String) -> Result<Object<'_>> {
    run(env, move || io::extents(&PathBuf::from(path)), |_, m| Ok(map_info(m)))
}

#[napi(ts_return_type = "Promise<CheckInfo>")]
pub fn check(env: &Env, path: String) -> Result<Object<'_>> {
    run(env, move || io::check(&PathBuf::from(path)), |_, r| {
        Ok(CheckInfo {
            file_size: r.file_size as f64,
            fs_type: r.fs.name.clone(),
            device: r.device.as_ref().map(|d| d.path.display().to_string()),
            file_mode_ok: r.file_mode_ok(),
            device_mode_ok: r.device_mode_ok(),
            problems: r
                .problems
                .iter()
                .map(|p| ProblemInfo {
                    code: p.code.into(),
                    message: p.message.clone(),
                    offset: p.offset.map(|v| v as f64),
                    length: p.length.map(|v| v as f64),
                    blocks_file_mode: p.blocks_file_mode,
                    blocks_device_mode: p.blocks_device_mode,
                })
                .collect(),
            map: r.map.map(map_info),
        })
    })
}

/// How far into `view` the first byte aligned to `align` is. JavaScript over-allocates
/// an ArrayBuffer and takes an aligned view at this offset: V8 never moves an
/// ArrayBuffer's backing store, so the view stays aligned, and no external buffer
/// (which some runtimes refuse) is involved.
#[napi]
pub fn alignment_offset(env: &Env, view: Uint8Array, align: u32) -> Result<u32> {
    if !align.is_power_of_two() {
        return Err(invalid(env, format!("alignment {align} is not a power of two")));
    }
    Ok(io::align::offset_to_alignment(view.as_ptr() as usize, align as usize) as u32)
}

/// Asks for transparent huge pages over the whole 2 MiB-aligned pages inside `view`,
/// dropping their contents (they read as zero after): their next touch faults in pages
/// of 2 MiB, which a direct read or write hands to the device as one segment. Returns
/// how many bytes were advised (0 where none fit, or the kernel has THP off).
/// `view` must be an ArrayBuffer's own memory with no I/O in flight into it.
/// A hint, never an error: a refusal (THP off, a sandbox) advises nothing.
#[napi]
pub fn advise_huge_pages(mut view: Uint8Array) -> f64 {
    // SAFETY: a JavaScript ArrayBuffer's backing store is private anonymous memory;
    // the caller (src/io/aligned.ts) passes memory it has just allocated, with no I/O.
    let (ptr, len) = unsafe { (view.as_mut().as_mut_ptr(), view.len()) };
    unsafe { io::huge_pages::advise_huge(ptr, len) }.1 as f64
}

/// A store's write-through counts since open.
#[napi(object)]
pub struct WriteThroughStats {
    /// Writes issued O_DSYNC, the caller having synced after each single write.
    pub writes_through: f64,
    /// Syncs that resolved without an fdatasync: every write was durable already.
    pub syncs_skipped: f64,
}

/// What the spin before a JavaScript thread's event loop sleeps did, for every store of
/// that thread together (`PageStore.spin`; crates/md-bitmap-io/src/spin.rs).
#[napi(object)]
pub struct SpinStats {
    /// The longest spin in microseconds (`MD_BITMAP_IO_SPIN_US`, default 200); 0: off.
    pub limit_us: f64,
    /// Spins that ended with a completion to collect.
    pub hits: f64,
    /// Spins that reached the limit without one.
    pub misses: f64,
    /// Waits that did not spin because a spin had missed just before.
    pub skipped: f64,
    /// Microseconds spent spinning.
    pub spun_us: f64,
}

#[napi(ts_return_type = "Promise<NativeStore>")]
pub fn open_store(
    env: &Env,
    path: String,
    #[napi(ts_arg_type = "'in-place' | 'on-device' | 'plain'")] mode: String,
    dsync: Option<bool>,
) -> Result<Object<'_>> {
    let requested = match mode.as_str() {
        "in-place" => Requested::InPlace,
        "on-device" => Requested::OnDevice,
        "plain" => Requested::Plain,
        other => {
            return Err(invalid(env, format!("mode must be 'in-place', 'on-device' or 'plain', got '{other}'")))
        }
    };
    let dsync = dsync.unwrap_or(false);
    let reactor = reactor(env)?;
    let engine = reactor.engine().clone();
    let (reaper, reaper_reason) = (reactor.kind().name(), reactor.reason().map(String::from));
    run(env, move || PageStore::open_with(&PathBuf::from(path), requested, dsync, &engine), move |_, s| {
        Ok(NativeStore { inner: Arc::new(s), reaper, reaper_reason })
    })
}

/// A JS view the kernel or an I/O thread reads into; JS must not touch it until the promise settles.
struct Target(Uint8Array);
impl AsMut<[u8]> for Target {
    fn as_mut(&mut self) -> &mut [u8] {
        // SAFETY: the view is held (alive) until the read settles, and the contract of
        // `read` is that JS leaves it alone meanwhile, as with fs.read.
        unsafe { self.0.as_mut() }
    }
}

/// The first write error a native store saw.
#[napi(object)]
pub struct StoreError {
    /// The error code (an errno name such as `EIO`, or one of the core's codes).
    pub code: String,
    /// What failed, in words.
    pub message: String,
}

/// A page store opened on one file. See md-bitmap-io's `PageStore`.
#[napi]
pub struct NativeStore {
    inner: Arc<PageStore>,
    reaper: &'static str,
    reaper_reason: Option<String>,
}

#[napi]
impl NativeStore {
    /// "direct", "buffered" or "device".
    #[napi(getter, ts_return_type = "'direct' | 'buffered' | 'device'")]
    pub fn mode(&self) -> &'static str {
        self.inner.mode().name()
    }
    /// Why the store is buffered, when it is.
    #[napi(getter)]
    pub fn reason(&self) -> Option<String> {
        self.inner.reason().map(String::from)
    }
    #[napi(getter)]
    pub fn size(&self) -> f64 {
        self.inner.size() as f64
    }
    /// Buffers, offsets and lengths must be multiples of this (direct and device modes).
    #[napi(getter)]
    pub fn alignment(&self) -> u32 {
        self.inner.alignment().both() as u32
    }
    /// Where the alignment came from: "statx", "block-device" or "default".
    #[napi(getter, ts_return_type = "'statx' | 'block-device' | 'default'")]
    pub fn alignment_source(&self) -> &'static str {
        match self.inner.alignment().source {
            io::AlignSource::Statx => "statx",
            io::AlignSource::BlockDevice => "block-device",
            io::AlignSource::Default => "default",
        }
    }
    /// The block device written in device mode.
    #[napi(getter)]
    pub fn device(&self) -> Option<String> {
        self.inner.device_path().map(|p| p.display().to_string())
    }

    /// The I/O engine this store's reads and writes use: "uring" (io_uring), "aio"
    /// (Linux AIO) or "threads" (the I/O threads).
    #[napi(getter, ts_return_type = "'uring' | 'aio' | 'threads'")]
    pub fn engine(&self) -> &'static str {
        self.inner.engine().name()
    }
    /// Why the store uses that engine, when it is not the best one (or was forced).
    #[napi(getter)]
    pub fn engine_reason(&self) -> Option<String> {
        self.inner.engine_reason()
    }

    /// Whether the kernel's completion work for this store's I/O waits until the
    /// JavaScript thread reaps (an io_uring ring made with DEFER_TASKRUN, Linux 6.1 and
    /// later); false under "aio", "threads", a store on the I/O threads, or an older kernel.
    #[napi(getter)]
    pub fn deferred_completions(&self) -> bool {
        self.inner.deferred_completions()
    }

    /// How completions reach this store's JavaScript thread: "loop" (the engine's
    /// eventfd polled by the thread's libuv loop) or "thread" (a completion thread
    /// handing over through one threadsafe function).
    #[napi(getter, ts_return_type = "'loop' | 'thread'")]
    pub fn reaper(&self) -> &'static str {
        self.reaper
    }
    /// Why the reaper is "thread" (no libuv loop, or forced), or that "loop" was forced.
    #[napi(getter)]
    pub fn reaper_reason(&self) -> Option<String> {
        self.reaper_reason.clone()
    }

    /// Write-through's counts since open (crates/md-bitmap-io/src/write_through.rs), or
    /// null where the store has none.
    #[napi(getter)]
    pub fn write_through(&self) -> Option<WriteThroughStats> {
        self.inner.write_through_counts().map(|c| WriteThroughStats { writes_through: c.writes_through as f64, syncs_skipped: c.syncs_skipped as f64 })
    }

    /// The spin before this thread's event loop sleeps (md_bitmap_io::spin): its limit
    /// (0: off) and what it did, for every store of the thread together.
    #[napi(getter)]
    pub fn spin(&self, env: &Env) -> Result<SpinStats> {
        let (limit, c) = reactor(env)?.spin();
        Ok(SpinStats { limit_us: limit.as_micros() as f64, hits: c.hits as f64, misses: c.misses as f64, skipped: c.skipped as f64, spun_us: c.spun_ns as f64 / 1e3 })
    }

    /// Writes `data` at `offset`. Many may be in flight at once; each counts as pending
    /// until it completes. The view is held until then.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn write<'e>(&self, env: &'e Env, data: Uint8Array, offset: f64) -> Result<Object<'e>> {
        let offset = offset_arg(env, "offset", offset)?;
        let reactor = reactor(env)?;
        let (settle, promise) = Settle::new(env)?;
        self.inner.submit_write(offset, data, move |r, data| {
            settle.settle(r);
            // The view is released on the JS thread, after the settlement.
            drop(data);
        });
        reactor.submitted();
        Ok(promise)
    }

    /// Reads `target.length` bytes at `offset` into `target`.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn read<'e>(&self, env: &'e Env, target: Uint8Array, offset: f64) -> Result<Object<'e>> {
        let offset = offset_arg(env, "offset", offset)?;
        let reactor = reactor(env)?;
        let (settle, promise) = Settle::new(env)?;
        self.inner.submit_read(offset, Target(target), move |r, target| {
            settle.settle(r);
            drop(target);
        });
        reactor.submitted();
        Ok(promise)
    }

    /// fdatasync: makes completed writes durable.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn sync<'e>(&self, env: &'e Env) -> Result<Object<'e>> {
        let reactor = reactor(env)?;
        let (settle, promise) = Settle::new(env)?;
        self.inner.submit_sync(move |r| settle.settle(r));
        reactor.submitted();
        Ok(promise)
    }

    /// Resolves `true` once no write is in flight: at once if none is, else from the
    /// reap that completes the last one (no thread waits). A timeout is the caller's.
    #[napi(ts_return_type = "Promise<boolean>")]
    pub fn wait_idle<'e>(&self, env: &'e Env) -> Result<Object<'e>> {
        let reactor = reactor(env)?;
        let (settle, promise) = Settle::new(env)?;
        let s = self.inner.clone();
        reactor.when(move || s.pending().count() == 0, move || settle.resolve_bool(true));
        Ok(promise)
    }

    /// Writes in flight now.
    #[napi]
    pub fn pending(&self) -> u32 {
        self.inner.pending().count() as u32
    }

    /// The first write error this store saw, or null. Sticky until close.
    #[napi]
    pub fn error(&self) -> Option<StoreError> {
        self.inner.pending().error().map(|e| StoreError { code: e.code, message: e.message })
    }

    /// Waits for pending writes, syncs, and releases the file (unpinning it in device
    /// mode). Rejects with the sticky write error if any write ever failed. Later I/O
    /// is refused at once; the wait ends in the reap that completes the last I/O in
    /// flight, and the sync runs on an I/O thread.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn close<'e>(&self, env: &'e Env) -> Result<Object<'e>> {
        let reactor = reactor(env)?;
        let (settle, promise) = Settle::new(env)?;
        self.inner.begin_close();
        let (s, engine) = (self.inner.clone(), reactor.engine().clone());
        let quiet = s.clone();
        reactor.when(move || quiet.quiet(), move || {
            let outcome = Arc::new(Mutex::new(None));
            let slot = outcome.clone();
            let finish = move || {
                *slot.lock().unwrap() = Some(s.finish_close());
                Ok(())
            };
            engine.spawn(finish, Box::new(move |_| settle.settle(outcome.lock().unwrap().take().unwrap_or(Ok(())))));
        });
        reactor.submitted();
        Ok(promise)
    }
}

pub mod lock;
