//! One page store written at depth 1, each write followed by an fdatasync, with no
//! JavaScript: the engine's own share of the write + fdatasync cycle (`npm run bench:io`,
//! the depth-1 fdatasync cycle taken apart).
//!
//! Each round writes 4 KiB at a random 4 KiB-aligned offset of the first `region` bytes,
//! waits for it, then makes it durable and waits again. The engine is driven as the Node
//! reactor drives it (crates/md-bitmap-node/src/reactor.rs): batched submission on one
//! thread, the eventfd polled, and on every wake-up: reap, flush, rearm. The fdatasync
//! is, by `SYNC`:
//!
//! - `uring`: the store's `submit_sync`, as the store's `sync()` does: with
//!   `MD_BITMAP_WRITE_THROUGH=0` an fdatasync, an operation of the engine (under
//!   io_uring, run by a kernel worker thread); by default, after the first cycle, each
//!   write goes O_DSYNC and the sync resolves at once (write_through.rs);
//! - `syscall`: `fdatasync(2)` on this thread, blocking it until the device flushed, as
//!   fio's libaio job does (not an option on a JavaScript thread).
//!
//! Usage: syncstep FILE REGION_BYTES SECONDS SYNC
//! Prints one line of JSON: {"engine", "cycles", "seconds", "userUs", "systemUs"}, the
//! CPU times in microseconds over the timed rounds (after 0.5 s of warm-up).
mod common;

use common::{random_page, run_timed, run_until, Page, Shared};
use md_bitmap_io::{Engine, PageStore, Requested};
use nix::libc;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 5 || !matches!(args[4].as_str(), "uring" | "syscall") {
        eprintln!("usage: syncstep FILE REGION_BYTES SECONDS uring|syscall");
        std::process::exit(2);
    }
    let region: u64 = args[2].parse().expect("REGION_BYTES");
    let seconds: f64 = args[3].parse().expect("SECONDS");
    let by_syscall = args[4] == "syscall";
    let engine = Arc::new(Engine::from_env(true, true).unwrap_or_else(|e| panic!("engine: {e}")));
    let store = Arc::new(PageStore::open_with(Path::new(&args[1]), Requested::InPlace, false, &engine).unwrap_or_else(|e| panic!("{}: {e}", args[1])));
    // The fdatasync system call needs a descriptor of the same file.
    let file = std::fs::File::open(&args[1]).unwrap_or_else(|e| panic!("{}: {e}", args[1]));
    let page = Shared(Arc::new(Page::new(0x5a)));
    let completed = Arc::new(AtomicUsize::new(0));
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let wait_for = |n: usize| run_until(&engine, || completed.load(Ordering::Relaxed) >= n);
    let round = |seed: &mut u64| {
        let offset = random_page(seed, region);
        completed.store(0, Ordering::Relaxed);
        let c = completed.clone();
        store.submit_write(offset, page.clone(), move |r, _| {
            r.unwrap_or_else(|e| panic!("write: {e}"));
            c.fetch_add(1, Ordering::Relaxed);
        });
        engine.flush();
        wait_for(1);
        if by_syscall {
            assert_eq!(unsafe { libc::fdatasync(file.as_raw_fd()) }, 0, "fdatasync: {}", std::io::Error::last_os_error());
        } else {
            let c = completed.clone();
            store.submit_sync(move |r| {
                r.unwrap_or_else(|e| panic!("fdatasync: {e}"));
                c.fetch_add(1, Ordering::Relaxed);
            });
            engine.flush();
            wait_for(2);
        }
    };
    run_timed(&engine, "cycles", seconds, || round(&mut seed));
}
