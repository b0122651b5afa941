//! Releasing a range of a member file or block device (see md-bitmap-io's `punch`).

use super::{offset_arg, run};
use md_bitmap_io as io;
use napi::bindgen_prelude::*;
use napi::Env;
use napi_derive::napi;
use std::path::PathBuf;

/// Makes `length` bytes at `offset` of the regular file or block device at `path` read
/// as zeroes, giving the storage back where possible: a hole punched in a file
/// (`fallocate(PUNCH_HOLE | KEEP_SIZE)`), a zeroing that unmaps on a block device
/// (`BLKZEROOUT` where the device cannot unmap). Rejects with `EOPNOTSUPP` where the
/// filesystem cannot punch holes.
#[napi(ts_return_type = "Promise<void>")]
pub fn punch_hole(env: &Env, path: String, offset: f64, length: f64) -> Result<Object<'_>> {
    let offset = offset_arg(env, "offset", offset)?;
    let length = offset_arg(env, "length", length)?;
    run(env, move || io::punch_hole(&PathBuf::from(path), offset, length), |_, ()| Ok(()))
}
