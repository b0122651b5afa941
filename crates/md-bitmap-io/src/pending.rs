//! Pending-write tracking, as in the kernel's `pending_writes` + `write_wait`: an atomic
//! count of writes in flight and a condition variable that wakes waiters when it drops
//! to zero, plus a sticky error flag that keeps the first write error (later errors
//! are usually consequences of the first and would hide its cause).
//!
//! The lock guards the number of threads waiting: the last `end` wakes them only if
//! there are any (a wake is a system call; writes drop the count to zero all the time,
//! at every write when one is in flight, with nobody waiting).

use crate::error::IoError;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

#[derive(Default)]
pub struct Pending {
    count: AtomicUsize,
    /// Threads blocked in `wait_idle`.
    lock: Mutex<usize>,
    idle: Condvar,
    error: Mutex<Option<IoError>>,
}

impl Pending {
    pub fn new() -> Self {
        Self::default()
    }

    /// A write is about to be issued.
    pub fn begin(&self) {
        self.count.fetch_add(1, Ordering::SeqCst);
    }

    /// A write completed; `err` is recorded if it is the first error.
    pub fn end(&self, err: Option<&IoError>) {
        if let Some(e) = err {
            self.record_error(e);
        }
        // Decrement under the lock so a waiter cannot check the count, miss the
        // notification and sleep forever.
        let waiters = self.lock.lock().unwrap();
        let before = self.count.fetch_sub(1, Ordering::SeqCst);
        assert!(before > 0, "pending-write count underflow");
        if before == 1 && *waiters > 0 {
            self.idle.notify_all();
        }
    }

    pub fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    /// Waits until no write is in flight. `None` waits forever. Returns whether the
    /// store became idle (false: the timeout passed first).
    pub fn wait_idle(&self, timeout: Option<Duration>) -> bool {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut g = self.lock.lock().unwrap();
        let mut idle = true;
        *g += 1;
        while self.count.load(Ordering::SeqCst) > 0 {
            match deadline {
                None => g = self.idle.wait(g).unwrap(),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        idle = false;
                        break;
                    }
                    g = self.idle.wait_timeout(g, d - now).unwrap().0;
                }
            }
        }
        *g -= 1;
        idle
    }

    /// Keeps `e` as the sticky error unless an earlier one is kept already; for
    /// failures that make writes undurable without being writes (a failed fdatasync).
    pub fn record_error(&self, e: &IoError) {
        let mut slot = self.error.lock().unwrap();
        if slot.is_none() {
            *slot = Some(e.clone());
        }
    }

    /// Whether a write error (or a failed fdatasync) was seen: the sticky error is set.
    pub fn failed(&self) -> bool {
        self.error.lock().unwrap().is_some()
    }

    /// The first write error seen, if any. Sticky: it stays until the store is closed.
    pub fn error(&self) -> Option<IoError> {
        self.error.lock().unwrap().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::thread;

    #[test]
    fn idle_only_after_every_end() {
        let p = Arc::new(Pending::new());
        for _ in 0..100 {
            p.begin();
        }
        let workers: Vec<_> = (0..100)
            .map(|i| {
                let p = p.clone();
                thread::spawn(move || {
                    thread::sleep(Duration::from_micros((i % 7) * 300));
                    p.end(None)
                })
            })
            .collect();
        assert!(p.wait_idle(None));
        assert_eq!(p.count(), 0);
        for w in workers {
            w.join().unwrap();
        }
    }

    #[test]
    fn timeout_reports_not_idle() {
        let p = Pending::new();
        p.begin();
        assert!(!p.wait_idle(Some(Duration::from_millis(20))));
        p.end(None);
        assert!(p.wait_idle(Some(Duration::from_millis(20))));
    }

    #[test]
    fn first_error_is_sticky() {
        let p = Pending::new();
        p.begin();
        p.begin();
        p.end(Some(&IoError::new("ENOSPC", "first")));
        p.end(Some(&IoError::new("EIO", "second")));
        assert_eq!(p.error().unwrap().code, "ENOSPC");
    }
}
