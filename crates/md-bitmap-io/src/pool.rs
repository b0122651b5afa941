//! The I/O threads: a few threads that carry blocking work (opening and checking files,
//! the thread engine's reads and writes, device-mode pages, fdatasync under AIO) off
//! the JavaScript thread without taking libuv's own workers. Few, because on a small
//! machine every extra thread is another wake-up and context switch per I/O; the
//! kernel engines (io_uring, AIO) need none of them for I/O in flight.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, OnceLock};
use std::thread;

type Job = Box<dyn FnOnce() + Send + 'static>;

pub struct IoPool {
    queue: Mutex<(VecDeque<Job>, usize /* idle threads */, usize /* threads */)>,
    ready: Condvar,
    max_threads: usize,
}

impl IoPool {
    /// The process-wide pool. Its size is `MD_BITMAP_IO_THREADS` (default 4); threads
    /// are started only when every existing one is busy.
    pub fn global() -> &'static IoPool {
        static POOL: OnceLock<IoPool> = OnceLock::new();
        POOL.get_or_init(|| {
            let max = std::env::var("MD_BITMAP_IO_THREADS")
                .ok()
                .and_then(|v| v.parse().ok())
                .filter(|n: &usize| (1..=1024).contains(n))
                .unwrap_or(4);
            IoPool { queue: Mutex::new((VecDeque::new(), 0, 0)), ready: Condvar::new(), max_threads: max }
        })
    }

    pub fn spawn(&'static self, job: impl FnOnce() + Send + 'static) {
        let mut q = self.queue.lock().unwrap();
        q.0.push_back(Box::new(job));
        // More queued jobs than idle threads to take them: start one more thread.
        if q.0.len() > q.1 && q.2 < self.max_threads {
            q.2 += 1;
            thread::Builder::new()
                .name("md-bitmap-io".into())
                .spawn(move || self.work())
                .expect("cannot start an I/O thread");
        } else {
            self.ready.notify_one();
        }
    }

    fn work(&self) {
        let mut q = self.queue.lock().unwrap();
        loop {
            if let Some(job) = q.0.pop_front() {
                drop(q);
                job();
                q = self.queue.lock().unwrap();
            } else {
                q.1 += 1;
                q = self.ready.wait(q).unwrap();
                q.1 -= 1;
            }
        }
    }
}
