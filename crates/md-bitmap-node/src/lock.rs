//! The binding of md-bitmap-io's `lock` module: exclusive file locks and lifting an
//! immutable flag left by a killed device-mode writer. Both are a few non-blocking
//! system calls (open, flock with LOCK_NB, ioctl), so they run on the JS thread; a
//! lock still held for an exited process is `null`, retried by the caller on a timer.
//! A lock is pinned to this thread's I/O engine (`Engine::pin`), so that the lock of a
//! process killed with io_uring writes in flight is released only once they landed.

use crate::js_error;
use md_bitmap_io::{self as io, Engine, FileLock};
use std::sync::Arc;
use napi::bindgen_prelude::*;
use napi::Env;
use napi_derive::napi;
use std::path::Path;
use std::sync::Mutex;

/// An exclusive lock on a file, held until `release()` or until the process dies (and,
/// after a death, until that process's I/O in the kernel has completed).
#[napi]
pub struct NativeFileLock {
    inner: Mutex<Option<Held>>,
}

/// The lock and, where the engine pins files, its pin: the engine holds the locked
/// file open until the I/O of a killed process has completed, so that a new owner
/// cannot start while a dead one's writes still land.
struct Held {
    lock: FileLock,
    pin: Option<Pin>,
}

impl Held {
    fn release(self, unlink: bool) -> io::Result<()> {
        drop(self.pin);
        self.lock.release(unlink)
    }
}

/// A file pinned to an engine, unpinned when dropped.
struct Pin {
    engine: Arc<Engine>,
    slot: u32,
}

impl Drop for Pin {
    fn drop(&mut self) {
        self.engine.unpin(self.slot);
    }
}

#[napi]
impl NativeFileLock {
    /// Releases the lock (idempotent); with `unlink`, removes the file first, while still holding it.
    #[napi]
    pub fn release(&self, env: &Env, unlink: Option<bool>) -> Result<()> {
        match self.inner.lock().unwrap().take() {
            Some(h) => h.release(unlink.unwrap_or(false)).map_err(|e| js_error(env, &e)),
            None => Ok(()),
        }
    }
}

/// Takes an exclusive flock on `path` (created, mode 0600, when `create`); `null` while
/// it is held for a process that has exited (the kernel releases it once that process's
/// last I/O completed: try again shortly); throws `ELOCKED` naming a live holder.
#[napi]
pub fn lock_file(env: &Env, path: String, create: Option<bool>) -> Result<Option<NativeFileLock>> {
    let Some(lock) = FileLock::try_acquire(Path::new(&path), create.unwrap_or(false)).map_err(|e| js_error(env, &e))? else {
        return Ok(None);
    };
    let engine = crate::reactor(env)?.engine().clone();
    let pin = engine.pin(lock.raw_fd()).map(|slot| Pin { engine, slot });
    Ok(Some(NativeFileLock { inner: Mutex::new(Some(Held { lock, pin })) }))
}

/// Clears the immutable flag of `path` if set; returns whether it was set. Call only
/// while holding the file's lock.
#[napi]
pub fn clear_immutable(env: &Env, path: String) -> Result<bool> {
    io::clear_immutable(Path::new(&path)).map_err(|e| js_error(env, &e))
}
