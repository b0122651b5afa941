//! What the examples that drive the engine without Node share: a page to write, the
//! reactor's loop, and the process's CPU time.
use md_bitmap_io::Engine;
use nix::libc;
use std::alloc::{alloc, dealloc, Layout};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const PAGE: usize = 4096;

/// One page-aligned page, shared by the writes that carry it.
pub struct Page(*mut u8);
// SAFETY: the page is only read by the kernel while writes are in flight, and freed
// once every holder is gone.
unsafe impl Send for Page {}
unsafe impl Sync for Page {}
impl Page {
    pub fn new(byte: u8) -> Page {
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

/// A write's hold on a shared page.
#[derive(Clone)]
pub struct Shared(pub Arc<Page>);
impl AsRef<[u8]> for Shared {
    fn as_ref(&self) -> &[u8] {
        unsafe { std::slice::from_raw_parts(self.0 .0, PAGE) }
    }
}

/// Runs the engine as the Node reactor does (crates/md-bitmap-node/src/reactor.rs) until
/// `done`: the eventfd polled, and on every wake-up: reap, flush, rearm.
pub fn run_until(engine: &Engine, done: impl Fn() -> bool) {
    while !done() {
        let mut pfd = libc::pollfd { fd: engine.eventfd(), events: libc::POLLIN, revents: 0 };
        unsafe { libc::poll(&mut pfd, 1, -1) };
        engine.reap_before_rearm();
        engine.flush();
        engine.rearm();
    }
}

/// A random page-aligned offset in the first `region` bytes (xorshift64 on `seed`).
pub fn random_page(seed: &mut u64, region: u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    (*seed % (region / PAGE as u64)) * PAGE as u64
}

/// Runs `round` for 0.5 s of warm-up, then for `seconds` timed, and prints one line of
/// JSON: {"engine", COUNTED (the timed rounds), "seconds", "userUs", "systemUs"}, the
/// CPU times over the timed rounds.
pub fn run_timed(engine: &Engine, counted: &str, seconds: f64, mut round: impl FnMut()) {
    let warm = Instant::now();
    while warm.elapsed() < Duration::from_millis(500) {
        round();
    }
    let (u0, s0) = cpu_us();
    let t0 = Instant::now();
    let mut rounds = 0u64;
    while t0.elapsed().as_secs_f64() < seconds {
        round();
        rounds += 1;
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let (u1, s1) = cpu_us();
    println!(
        "{{\"engine\":\"{}\",\"{counted}\":{rounds},\"seconds\":{elapsed},\"userUs\":{},\"systemUs\":{}}}",
        engine.kind().name(),
        u1 - u0,
        s1 - s0
    );
}

/// This process's user and system CPU time, µs.
fn cpu_us() -> (f64, f64) {
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let us = |t: libc::timeval| t.tv_sec as f64 * 1e6 + t.tv_usec as f64;
    (us(u.ru_utime), us(u.ru_stime))
}
