//! Write-through: a store whose caller makes every write durable on its own (a write,
//! then a sync, then the next write) writes each page O_DSYNC instead, and a sync that
//! then finds nothing left to flush resolves without an fdatasync.
//!
//! Why: an fdatasync through io_uring always runs on one of the kernel's worker
//! threads, and the caller waits for it after its write, so such a caller pays two
//! round trips and a thread hop per durable write. An O_DSYNC write is one round trip
//! (FUA, or the cache flush done by the completion). Measured in `bench:io`
//! (docs/benchmarks.md, "Write-through"): the depth-1 write + fdatasync cycle.
//!
//! The decision, per sync call (`n`: writes issued since the previous sync call):
//!
//! ```text
//!   plain ──sync after exactly 1 write──▶ through: later writes go O_DSYNC
//!   through ──a 2nd write before the next sync──▶ plain (that write already plain)
//!   through ──sync after exactly 1 write──▶ through
//!   either ──sync after no write──▶ unchanged
//! ```
//!
//! A wrong guess costs one O_DSYNC write per sync: the second write of a batch turns
//! write-through off.
//!
//! Durability (the proof a skipped sync rests on): a sync may be skipped only if
//! 1. no write is in flight (so every write issued has completed; counted here, under
//!    the same lock as the rest, so a write issued on another thread meanwhile is
//!    either counted in flight or not issued yet),
//! 2. no write or fdatasync ever failed on the store (its sticky error), and
//! 3. every plain write issued so far is covered by an fdatasync that succeeded and
//!    was issued while no write was in flight (`plain_durable == plain_issued`).
//!
//! Then each write issued so far either was O_DSYNC, durable when it completed, or
//! completed before an fdatasync that succeeded. Otherwise the sync issues an
//! fdatasync as always; one issued with no write in flight covers every plain write
//! issued before it and is credited with them when it succeeds. Never weaker than an
//! fdatasync per sync: writes only become durable sooner.

use std::sync::Mutex;

/// What a sync call does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncPlan {
    /// Nothing to flush: resolve now.
    Skip,
    /// Issue an fdatasync; when it succeeds, pass `credit` to [`WriteThrough::synced`].
    Flush { credit: Option<u64> },
}

#[derive(Default)]
struct State {
    /// Writes issued since the last sync call.
    since_sync: u64,
    /// Writes issued and not yet completed.
    in_flight: u64,
    /// Whether new writes go O_DSYNC.
    through: bool,
    /// Plain (not O_DSYNC) writes issued since open.
    plain_issued: u64,
    /// Plain writes covered by an fdatasync that succeeded (see the top comment).
    plain_durable: u64,
    writes_through: u64,
    syncs_skipped: u64,
}

/// A store's write-through state (the state machine at the top of this file).
#[derive(Default)]
pub struct WriteThrough {
    state: Mutex<State>,
}

/// Counts since open, for `stats`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriteThroughCounts {
    /// Writes issued O_DSYNC.
    pub writes_through: u64,
    /// Syncs resolved without an fdatasync.
    pub syncs_skipped: u64,
}

impl WriteThrough {
    /// A write is being issued: whether it goes O_DSYNC. Every call is matched by one
    /// of [`WriteThrough::completed`], once the write completed (or was not issued).
    pub fn write(&self) -> bool {
        let mut s = self.state.lock().unwrap();
        s.in_flight += 1;
        s.since_sync += 1;
        if s.since_sync > 1 {
            s.through = false;
        }
        if s.through {
            s.writes_through += 1;
        } else {
            s.plain_issued += 1;
        }
        s.through
    }

    /// A write of [`WriteThrough::write`] completed (its error, if any, already kept as
    /// the store's sticky error), or was refused before it was issued.
    pub fn completed(&self) {
        let mut s = self.state.lock().unwrap();
        s.in_flight -= 1;
    }

    /// A sync was called; `failed()` says whether the store's sticky error is set. It
    /// is asked under this state's lock, after the writes in flight were counted: a
    /// write counted complete had its error kept before it was, so none slips past.
    pub fn sync(&self, failed: impl FnOnce() -> bool) -> SyncPlan {
        let mut s = self.state.lock().unwrap();
        let in_flight = s.in_flight;
        let failed = failed();
        match std::mem::take(&mut s.since_sync) {
            0 => {}
            1 => s.through = true,
            _ => s.through = false,
        }
        if in_flight == 0 && !failed && s.plain_durable == s.plain_issued {
            s.syncs_skipped += 1;
            return SyncPlan::Skip;
        }
        SyncPlan::Flush { credit: (in_flight == 0).then_some(s.plain_issued) }
    }

    /// The fdatasync of a [`SyncPlan::Flush`] succeeded.
    pub fn synced(&self, credit: Option<u64>) {
        if let Some(c) = credit {
            let mut s = self.state.lock().unwrap();
            s.plain_durable = s.plain_durable.max(c);
        }
    }

    pub fn counts(&self) -> WriteThroughCounts {
        let s = self.state.lock().unwrap();
        WriteThroughCounts { writes_through: s.writes_through, syncs_skipped: s.syncs_skipped }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_then_a_sync_turns_it_on_and_a_second_write_turns_it_off() {
        let w = WriteThrough::default();
        // A write issued and completed.
        let write = |w: &WriteThrough| {
            let through = w.write();
            w.completed();
            through
        };
        assert!(!write(&w));
        assert_eq!(w.sync(|| false), SyncPlan::Flush { credit: Some(1) });
        w.synced(Some(1));
        assert!(write(&w), "one write per sync: the next goes O_DSYNC");
        assert_eq!(w.sync(|| false), SyncPlan::Skip);
        assert!(write(&w));
        assert!(!write(&w), "a second write before the sync: plain again");
        assert_eq!(w.sync(|| false), SyncPlan::Flush { credit: Some(2) });
        assert_eq!(w.counts(), WriteThroughCounts { writes_through: 2, syncs_skipped: 1 });
    }

    #[test]
    fn no_skip_with_a_write_in_flight_or_after_a_failure_and_no_credit_with_one_in_flight() {
        let w = WriteThrough::default();
        w.write();
        assert_eq!(w.sync(|| false), SyncPlan::Flush { credit: None }, "a write in flight");
        w.synced(None);
        w.completed();
        assert!(w.write());
        w.completed();
        assert_eq!(w.sync(|| false), SyncPlan::Flush { credit: Some(1) }, "the first plain write was never covered");
        w.synced(Some(1));
        assert!(w.write());
        w.completed();
        assert_eq!(w.sync(|| true), SyncPlan::Flush { credit: Some(1) }, "a sticky error: always an fdatasync");
    }

    /// A model of the kernel's promises, driven by random sequences: a plain write is
    /// durable once an fdatasync issued after it completed succeeds; an O_DSYNC write is
    /// durable when it completes. Whenever a sync is skipped, every completed write must
    /// be durable.
    #[test]
    fn a_skipped_sync_never_leaves_a_completed_write_undurable() {
        #[derive(Clone, Copy, PartialEq)]
        enum W {
            InFlight { through: bool },
            Done { durable: bool },
            Failed,
        }
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        let mut rand = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let mut skipped = 0;
        for _ in 0..2000 {
            let w = WriteThrough::default();
            let mut writes: Vec<W> = Vec::new();
            // fdatasyncs in flight: the writes completed when each was issued, and its credit.
            let mut syncs: Vec<(Vec<usize>, Option<u64>)> = Vec::new();
            let mut failed = false;
            for _ in 0..60 {
                match rand(6) {
                    0 | 1 => writes.push(W::InFlight { through: w.write() }),
                    2 => {
                        let in_flight: Vec<usize> = (0..writes.len()).filter(|&i| matches!(writes[i], W::InFlight { .. })).collect();
                        if let Some(&i) = in_flight.get(rand(in_flight.len().max(1) as u64) as usize) {
                            let W::InFlight { through } = writes[i] else { unreachable!() };
                            if rand(20) == 0 {
                                failed = true; // the sticky error
                                writes[i] = W::Failed;
                            } else {
                                writes[i] = W::Done { durable: through };
                            }
                            w.completed();
                        }
                    }
                    3 | 4 => {
                        match w.sync(|| failed) {
                            SyncPlan::Skip => {
                                skipped += 1;
                                assert!(writes.iter().all(|x| *x == W::Done { durable: true }), "a sync was skipped over a write that is not durable");
                            }
                            SyncPlan::Flush { credit } => {
                                let done = (0..writes.len()).filter(|&i| matches!(writes[i], W::Done { .. })).collect();
                                syncs.push((done, credit));
                            }
                        }
                    }
                    _ => {
                        if !syncs.is_empty() {
                            let (covered, credit) = syncs.remove(rand(syncs.len() as u64) as usize);
                            if rand(20) == 0 {
                                failed = true;
                            } else {
                                for i in covered {
                                    if let W::Done { .. } = writes[i] {
                                        writes[i] = W::Done { durable: true };
                                    }
                                }
                                w.synced(credit);
                            }
                        }
                    }
                }
            }
        }
        assert!(skipped > 100, "the sequences skipped only {skipped} syncs: the property was hardly exercised");
    }
}
