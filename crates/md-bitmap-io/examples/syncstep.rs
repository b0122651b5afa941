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
//! - `uring`: the store's `submit_sync`, an operation of the engine (under io_uring, run
//!   by a kernel worker thread), as the store's `sync()` does;
//! - `syscall`: `fdatasync(2)` on this thread, blocking it until the device flushed, as
//!   fio's libaio job does (not an option on a JavaScript thread).
//!
//! Usage: syncstep FILE REGION_BYTES SECONDS SYNC
//! Prints one line of JSON: {"engine", "cycles", "seconds", "userUs", "systemUs"}, the
//! CPU times in microseconds over the timed rounds (after 0.5 s of warm-up).
use md_bitmap_io::{Engine, PageStore, Requested};
use nix::libc;
use std::alloc::{alloc, dealloc, Layout};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const PAGE: usize = 4096;

/// One page-aligned page, shared by the two writes of a round.
struct Page(*mut u8);
// SAFETY: the page is only read by the kernel while writes are in flight, and freed
// once every holder is gone.
unsafe impl Send for Page {}
unsafe impl Sync for Page {}
impl Page {
    fn new(byte: u8) -> Page {
        let p = unsafe { alloc(Layout::from_size_align(PAGE, PAGE).unwrap()) };
        assert!(!p.is_null());
        unsafe { std::ptr::write_bytes(p, byte, PAGE) };
        Page(p)
    }
}
impl Drop for Page {
    fn drop(&mut self) {
        unsafe { dealloc(self.0, Layout::from_size_align(PAGE, PAGE).unwrap()) }
    }
}

#[derive(Clone)]
struct Shared(Arc<Page>);
impl AsRef<[u8]> for Shared {
    fn as_ref(&self) -> &[u8] {
        unsafe { std::slice::from_raw_parts(self.0 .0, PAGE) }
    }
}

fn cpu_us() -> (f64, f64) {
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let us = |t: libc::timeval| t.tv_sec as f64 * 1e6 + t.tv_usec as f64;
    (us(u.ru_utime), us(u.ru_stime))
}

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
    let wait_for = |n: usize| {
        while completed.load(Ordering::Relaxed) < n {
            let mut pfd = libc::pollfd { fd: engine.eventfd(), events: libc::POLLIN, revents: 0 };
            unsafe { libc::poll(&mut pfd, 1, -1) };
            engine.reap_before_rearm();
            engine.flush();
            engine.rearm();
        }
    };
    let round = |seed: &mut u64| {
        // xorshift64: a random page of the region.
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        let offset = (*seed % (region / PAGE as u64)) * PAGE as u64;
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
    let warm = Instant::now();
    while warm.elapsed() < Duration::from_millis(500) {
        round(&mut seed);
    }
    let (u0, s0) = cpu_us();
    let t0 = Instant::now();
    let mut cycles = 0u64;
    while t0.elapsed().as_secs_f64() < seconds {
        round(&mut seed);
        cycles += 1;
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let (u1, s1) = cpu_us();
    println!(
        "{{\"engine\":\"{}\",\"cycles\":{cycles},\"seconds\":{elapsed},\"userUs\":{},\"systemUs\":{}}}",
        engine.kind().name(),
        u1 - u0,
        s1 - s0
    );
}
