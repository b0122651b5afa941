//! The binding of md-bitmap-io's `lock` module: exclusive file locks and lifting an
//! immutable flag left by a killed device-mode writer. Both are a few non-blocking
//! system calls (open, flock with LOCK_NB, ioctl), so they run on the JS thread.

use crate::js_error;
use md_bitmap_io::{self as io, FileLock};
use napi::bindgen_prelude::*;
use napi::Env;
use napi_derive::napi;
use std::path::Path;
use std::sync::Mutex;

/// An exclusive lock on a file, held until `release()` or until the process dies.
#[napi]
pub struct NativeFileLock {
    inner: Mutex<Option<FileLock>>,
}

#[napi]
impl NativeFileLock {
    /// Releases the lock (idempotent); with `unlink`, removes the file first, while still holding it.
    #[napi]
    pub fn release(&self, env: &Env, unlink: Option<bool>) -> Result<()> {
        match self.inner.lock().unwrap().take() {
            Some(l) => l.release(unlink.unwrap_or(false)).map_err(|e| js_error(env, &e)),
            None => Ok(()),
        }
    }
}

/// Takes an exclusive flock on `path` (created, mode 0600, when `create`), or throws
/// `ELOCKED` naming the holder's pid.
#[napi]
pub fn lock_file(env: &Env, path: String, create: Option<bool>) -> Result<NativeFileLock> {
    let l = FileLock::acquire(Path::new(&path), create.unwrap_or(false)).map_err(|e| js_error(env, &e))?;
    Ok(NativeFileLock { inner: Mutex::new(Some(l)) })
}

/// Clears the immutable flag of `path` if set; returns whether it was set. Call only
/// while holding the file's lock.
#[napi]
pub fn clear_immutable(env: &Env, path: String) -> Result<bool> {
    io::clear_immutable(Path::new(&path)).map_err(|e| js_error(env, &e))
}
