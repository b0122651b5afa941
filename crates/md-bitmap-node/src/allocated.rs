//! Where a file holds data, as SEEK_DATA/SEEK_HOLE see it (see md-bitmap-io's `allocated`).

use super::{offset_arg, run};
use md_bitmap_io as io;
use napi::bindgen_prelude::*;
use napi::Env;
use napi_derive::napi;
use std::path::PathBuf;

/// The data ranges of a byte range of a file, and how far the answer reaches.
#[napi(object)]
pub struct AllocatedInfo {
    /// Data ranges, sorted and disjoint, clipped to the range asked; the rest reads as zeroes.
    pub ranges: Vec<AllocatedRange>,
    /// Where the answer ends: the end of the range asked (or of the file, if nearer),
    /// or less when `maxRanges` ranges were found first.
    pub end: f64,
}

/// One data range.
#[napi(object)]
pub struct AllocatedRange {
    pub offset: f64,
    pub length: f64,
}

/// The data ranges of `length` bytes at `offset` of the file at `path`, from
/// `lseek(SEEK_DATA)`/`lseek(SEEK_HOLE)`, in one call: at most `maxRanges` of them
/// (0 or absent: no limit).
#[napi(ts_return_type = "Promise<AllocatedInfo>")]
pub fn allocated_ranges(env: &Env, path: String, offset: f64, length: f64, max_ranges: Option<u32>) -> Result<Object<'_>> {
    let offset = offset_arg(env, "offset", offset)?;
    let length = offset_arg(env, "length", length)?;
    let max = max_ranges.unwrap_or(0) as usize;
    run(env, move || io::allocated_ranges(&PathBuf::from(path), offset, length, max), |_, a| {
        Ok(AllocatedInfo {
            ranges: a.ranges.iter().map(|&(offset, length)| AllocatedRange { offset: offset as f64, length: length as f64 }).collect(),
            end: a.end as f64,
        })
    })
}
