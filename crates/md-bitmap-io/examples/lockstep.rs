//! Two page stores written in lockstep through one engine, with no JavaScript: the
//! engine's own share of a mirror write at 1 in flight (`npm run bench:lockstep`).
//!
//! Each round writes the same 4 KiB to both files at one random 4 KiB-aligned offset
//! of the first `region` bytes, then waits until both writes completed, as a mirror of
//! two file members does at 1 in flight. The engine is driven as the Node reactor
//! drives it (crates/md-bitmap-node/src/reactor.rs): batched submission on one thread
//! (so an io_uring ring defers completion work to the reap), the eventfd polled, and on
//! every wake-up: reap, flush, rearm. Only the JavaScript and the N-API crossings are
//! missing.
//!
//! Usage: lockstep FILE_A FILE_B REGION_BYTES SECONDS
//! Prints one line of JSON: {"engine", "writes", "seconds", "userUs", "systemUs"}, the
//! CPU times in microseconds over the timed rounds (after 0.5 s of warm-up).
mod common;

use common::{random_page, run_timed, run_until, Page, Shared};
use md_bitmap_io::{Engine, PageStore, Requested};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 5 {
        eprintln!("usage: lockstep FILE_A FILE_B REGION_BYTES SECONDS");
        std::process::exit(2);
    }
    let region: u64 = args[3].parse().expect("REGION_BYTES");
    let seconds: f64 = args[4].parse().expect("SECONDS");
    let engine = Arc::new(Engine::from_env(true, true).unwrap_or_else(|e| panic!("engine: {e}")));
    let stores: Vec<Arc<PageStore>> = args[1..3]
        .iter()
        .map(|p| Arc::new(PageStore::open_with(Path::new(p), Requested::InPlace, false, &engine).unwrap_or_else(|e| panic!("{p}: {e}"))))
        .collect();
    let page = Shared(Arc::new(Page::new(0x5a)));
    let completed = Arc::new(AtomicUsize::new(0));
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let round = |seed: &mut u64| {
        let offset = random_page(seed, region);
        completed.store(0, Ordering::Relaxed);
        for s in &stores {
            let c = completed.clone();
            s.submit_write(offset, page.clone(), move |r, _| {
                r.unwrap_or_else(|e| panic!("write: {e}"));
                c.fetch_add(1, Ordering::Relaxed);
            });
        }
        engine.flush();
        run_until(&engine, || completed.load(Ordering::Relaxed) >= stores.len());
    };
    run_timed(&engine, "writes", seconds, || round(&mut seed));
}
