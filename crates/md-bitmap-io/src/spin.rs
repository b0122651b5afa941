//! Spinning before an event loop sleeps: a bounded wait for completion work in user
//! space, so that a thread with many I/Os in flight is not put to sleep (and woken, on a
//! virtual machine a halted vCPU and an inter-processor interrupt) for a completion that
//! comes a few tens of microseconds later.
//!
//! Why (measured on this project's 2-vCPU machine, docs/benchmarks.md, "Spinning before
//! the loop sleeps"): 4 KiB O_DIRECT writes at depth 32 ran in one of two regimes. In one
//! the JavaScript thread was busy all the time and completions streamed in while it
//! worked (220,000–240,000 writes/s). In the other it slept in `epoll_wait` about 2,500
//! times a second, 64–128 µs each (bpftrace), the whole pipeline draining while it slept
//! and refilling in a burst after: 150,000–160,000 writes/s at 75 % of a CPU, and a run
//! stayed there for seconds. A spin of up to 150 µs before each sleep kept the thread in
//! the first regime: +25 % in the second regime's runs, +9 % over 8 alternated pairs
//! unpinned, the CPU per write unchanged (the spin replaces the sleep and the wake-up).
//!
//! Spinning pays where each completion starts the next I/O (a pipeline: the device
//! idles while the thread sleeps), not where the thread waits for a whole batch to end:
//! writes of 32 awaited together, then an fdatasync, spun at every wait, gained 3 % in
//! writes/s for 26 % more CPU per write. So a wait spins only if the wake-up before it
//! settled completions and submitted no more I/Os than it settled (a batch's start, one
//! completion then 32 submissions, does not qualify; nor do the waits for the rest of a
//! batch, which submit nothing). As kept, in `bench:io` beside fio: 1.10 of fio's
//! rate at depth 32 without fdatasync, against 0.93 without the spin in the same run.
//! Where the device is the limit the spins hit and gain nothing, and the CPU shows it:
//! O_DSYNC writes at depth 32, 10.0 µs of CPU per write against 6.6 without, the rate
//! the same (`MD_BITMAP_IO_SPIN_US=0` for such a load).
//!
//! The spin reads only memory the kernel shares with us (`Engine::completion_hint`: the
//! completion ring, io_uring's TASKRUN flag), no system call. It runs only where that
//! hint exists (io_uring; not AIO, not the I/O threads), only with at least
//! [`MIN_IN_KERNEL`] operations in the kernel (at depth 1 the whole wait would be spun:
//! measured +12 % writes/s for 2.3× the CPU per write, not worth it by default), and
//! never longer than the limit, which is also the longest it delays anything else the
//! loop has to do (a timer, a socket). A device slower than the limit would have every
//! wait spun in vain, so a spin that ends without a completion makes the next waits skip
//! spinning, twice as many after each such miss in a row, up to [`MAX_SKIP`]:
//!
//! ```text
//!   ready ──wait: in kernel ≥ MIN_IN_KERNEL, the last wake-up a pipeline's
//!           (settled n > 0, submitted 1..=n), hint says nothing yet──▶ spinning
//!   ready ──any other wait─────────────────────────────────────────▶ ready (sleep)
//!   spinning ──hint raised within the limit──▶ ready, misses = 0            (hit)
//!   spinning ──limit passed──▶ backing off: skip = min(2^misses, MAX_SKIP),
//!                              misses += 1                                   (miss)
//!   backing off ──a wait that would spin──▶ skip -= 1 (sleep); at 0 ──▶ ready
//! ```
//!
//! A hint already raised when the wait begins ends it at once: not a spin, not counted.
//! `MD_BITMAP_IO_SPIN_US` sets the limit (0 turns spinning off); default
//! [`DEFAULT_LIMIT_US`].

use crate::error::IoError;
use std::time::Duration;

/// The default limit: the sleeps it replaces were 64–128 µs (top comment).
pub const DEFAULT_LIMIT_US: u64 = 200;
/// The largest limit `MD_BITMAP_IO_SPIN_US` accepts: a loop held longer than a
/// millisecond is a loop that other work notices.
pub const MAX_LIMIT_US: u64 = 1000;
/// Fewer operations in the kernel than this: sleep (see the top comment).
pub const MIN_IN_KERNEL: usize = 8;
/// The most waits one miss makes skip.
pub const MAX_SKIP: u32 = 64;

/// What the spins did, since the thread's engine was made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpinCounts {
    /// Spins that ended with completion work to collect.
    pub hits: u64,
    /// Spins that reached the limit without it.
    pub misses: u64,
    /// Waits that would have spun but were skipped after a miss.
    pub skipped: u64,
    /// Time spent spinning, in nanoseconds.
    pub spun_ns: u64,
}

/// One thread's spin state (see the top comment).
#[derive(Debug)]
pub struct Spin {
    limit: Duration,
    /// Misses in a row.
    misses: u32,
    /// Waits left to skip.
    skip: u32,
    counts: SpinCounts,
}

impl Spin {
    /// A limit of zero never spins.
    pub fn new(limit: Duration) -> Spin {
        Spin { limit, misses: 0, skip: 0, counts: SpinCounts::default() }
    }

    /// The limit from `MD_BITMAP_IO_SPIN_US` (microseconds, 0 to [`MAX_LIMIT_US`]), or
    /// the default; anything else is an error that names the variable.
    pub fn from_env() -> Result<Spin, IoError> {
        let us = match std::env::var("MD_BITMAP_IO_SPIN_US") {
            Ok(v) if !v.is_empty() => match v.parse::<u64>() {
                Ok(n) if n <= MAX_LIMIT_US => n,
                _ => return Err(IoError::new("EINVAL", format!("MD_BITMAP_IO_SPIN_US must be a whole number of microseconds from 0 (off) to {MAX_LIMIT_US}, got '{v}'"))),
            },
            _ => DEFAULT_LIMIT_US,
        };
        Ok(Spin::new(Duration::from_micros(us)))
    }

    pub fn limit(&self) -> Duration {
        self.limit
    }

    pub fn counts(&self) -> SpinCounts {
        self.counts
    }

    /// Before the loop sleeps, the wake-up before having settled `settled` and submitted
    /// `submitted`, `in_kernel()` operations in the kernel (asked only if the rest
    /// allows a spin): spins while `hint()` answers `Some(false)`, at most the limit by
    /// `now()` (nanoseconds, any origin). `hint()` answering None (no way to tell
    /// without a system call) never spins.
    pub fn before_wait(&mut self, settled: u64, submitted: u64, in_kernel: impl FnOnce() -> usize, mut hint: impl FnMut() -> Option<bool>, mut now: impl FnMut() -> u64) {
        let pipeline = settled > 0 && (1..=settled).contains(&submitted);
        if self.limit.is_zero() || !pipeline || in_kernel() < MIN_IN_KERNEL {
            return;
        }
        match hint() {
            None | Some(true) => return,
            Some(false) => {}
        }
        if self.skip > 0 {
            self.skip -= 1;
            self.counts.skipped += 1;
            return;
        }
        let limit = self.limit.as_nanos() as u64;
        let start = now();
        loop {
            std::hint::spin_loop();
            let spun = now().saturating_sub(start);
            if hint() == Some(true) {
                self.counts.hits += 1;
                self.counts.spun_ns += spun;
                self.misses = 0;
                return;
            }
            if spun >= limit {
                self.counts.misses += 1;
                self.counts.spun_ns += spun;
                self.skip = 1u32.checked_shl(self.misses).unwrap_or(MAX_SKIP).min(MAX_SKIP);
                self.misses = self.misses.saturating_add(1);
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    /// A clock that advances `step` ns per reading, and a hint that comes after `after` ns
    /// (None: never).
    fn wait(spin: &mut Spin, in_kernel: usize, after: Option<u64>, step: u64) -> u64 {
        wait_after(spin, in_kernel, (4, 4), after, step)
    }

    /// `wait` after a wake-up that settled and submitted `flow.0` and `flow.1`.
    fn wait_after(spin: &mut Spin, in_kernel: usize, flow: (u64, u64), after: Option<u64>, step: u64) -> u64 {
        let t = Cell::new(0u64);
        let start = Cell::new(None::<u64>);
        spin.before_wait(
            flow.0,
            flow.1,
            || in_kernel,
            || {
                let s = start.get().unwrap_or(t.get());
                start.set(Some(s));
                Some(after.is_some_and(|a| t.get() - s >= a))
            },
            || {
                t.set(t.get() + step);
                t.get()
            },
        );
        t.get()
    }

    #[test]
    fn a_completion_within_the_limit_is_a_hit_and_ends_the_spin_there() {
        let mut s = Spin::new(Duration::from_micros(200));
        let elapsed = wait(&mut s, 32, Some(50_000), 1_000);
        assert_eq!(s.counts().hits, 1);
        assert_eq!(s.counts().misses, 0);
        assert!(elapsed <= 52_000, "spun {elapsed} ns for a completion at 50 µs");
    }

    #[test]
    fn nothing_spins_when_off_below_the_depth_or_without_a_hint() {
        let mut off = Spin::new(Duration::ZERO);
        assert_eq!(wait(&mut off, 32, None, 1_000), 0);
        let mut s = Spin::new(Duration::from_micros(200));
        assert_eq!(wait(&mut s, MIN_IN_KERNEL - 1, None, 1_000), 0);
        s.before_wait(4, 4, || 32, || None, || panic!("no clock needed without a hint"));
        s.before_wait(4, 4, || 32, || Some(true), || panic!("nor with the hint already raised"));
        assert_eq!(s.counts(), SpinCounts::default());
    }

    #[test]
    fn only_a_pipelines_wait_spins_not_a_batchs() {
        let mut s = Spin::new(Duration::from_micros(200));
        // A batch's start (1 settled, 32 submitted), the waits for its rest (none
        // submitted), a wake-up that settled nothing: no spin.
        for flow in [(1, 32), (5, 0), (0, 0), (0, 3)] {
            assert_eq!(wait_after(&mut s, 32, flow, None, 1_000), 0, "{flow:?}");
        }
        assert_eq!(s.counts(), SpinCounts::default());
        // Each completion starting the next I/O, or fewer: spins.
        for flow in [(1, 1), (8, 8), (8, 3)] {
            wait_after(&mut s, 32, flow, Some(5_000), 1_000);
        }
        assert_eq!(s.counts().hits, 3);
    }

    #[test]
    fn misses_in_a_row_skip_twice_as_many_waits_each_up_to_the_cap_and_a_hit_resets() {
        let mut s = Spin::new(Duration::from_micros(200));
        let mut skipped_between = Vec::new();
        for _ in 0..10 {
            let before = s.counts().skipped;
            let spun = wait(&mut s, 32, None, 1_000);
            assert!((200_000..=201_000).contains(&spun), "a miss spins the limit, not {spun} ns");
            // Count the waits skipped before the next spin.
            loop {
                let misses = s.counts().misses;
                let skipped = s.counts().skipped;
                if s.skip == 0 {
                    break;
                }
                wait(&mut s, 32, None, 1_000);
                assert_eq!((s.counts().misses, s.counts().skipped), (misses, skipped + 1));
            }
            skipped_between.push(s.counts().skipped - before);
        }
        assert_eq!(skipped_between, [1, 2, 4, 8, 16, 32, 64, 64, 64, 64]);
        wait(&mut s, 32, Some(10_000), 1_000);
        assert_eq!(s.counts().hits, 1);
        wait(&mut s, 32, None, 1_000);
        assert_eq!(s.skip, 1, "a hit starts the back-off over");
    }

    /// Random sequences of waits (depth, completion time or none, clock step): no spin
    /// passes the limit by more than a clock step, time spun over misses is bounded by
    /// the back-off, and the counts add up.
    #[test]
    fn over_random_waits_the_spun_time_stays_within_the_back_off() {
        let mut x: u32 = 0x2545_f491;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x
        };
        for _ in 0..200 {
            let limit = 1 + u64::from(next() % 500);
            let mut s = Spin::new(Duration::from_micros(limit));
            let mut waits_at_depth = 0u64;
            for _ in 0..300 {
                let depth = (next() % 64) as usize;
                let settled = u64::from(next() % 4);
                let submitted = u64::from(next() % 5);
                let after = match next() % 3 {
                    0 => None,
                    _ => Some(u64::from(next() % 1_000) * 1_000),
                };
                let step = 1 + u64::from(next() % 5_000);
                let before = s.counts();
                let spun = wait_after(&mut s, depth, (settled, submitted), after, step);
                let c = s.counts();
                assert!(spun <= limit * 1_000 + 2 * step, "spun {spun} ns with a limit of {limit} µs");
                assert!(c.spun_ns - before.spun_ns <= spun, "counted more than was spun");
                if depth >= MIN_IN_KERNEL && settled > 0 && (1..=settled).contains(&submitted) && after != Some(0) {
                    waits_at_depth += 1;
                }
                if c.misses > before.misses {
                    assert!(s.skip >= 1 && s.skip <= MAX_SKIP);
                }
            }
            let c = s.counts();
            assert_eq!(c.hits + c.misses + c.skipped, waits_at_depth);
            // Each miss is followed by at least one skipped wait, unless the series ended first.
            assert!(c.skipped + 1 >= c.misses, "{c:?}");
        }
    }
}
