//! One operation kind's counters and latency histograms.
//!
//! A kind's count, errors, latency sum and HDR histogram sit behind a `Mutex` that is
//! taken once per recorded run (a batch of like elements is one run, recorded with
//! `record_n`), so a batch costs one lock and one histogram update however many elements
//! it has.
//!
//! Each kind has [`SHARDS`] such locked states, each on its own cache lines, and a thread
//! always records into the same one (threads are dealt shards in turn as they first
//! record, so few of them share one: the daemon has at most 8 I/O threads by default).
//! The lock a batch takes is therefore almost never contended, and its line stays on
//! that core; a snapshot locks each shard briefly and merges them. One lock per kind
//! shared by every thread was measured first: 18 ns per batch alone, but 110–180 ns once
//! two threads recorded the same kind at a high rate, as the line and the lock bounced
//! between cores (the three shared atomics this replaced cost 11–50 ns there). With
//! shards it is 13–21 ns alone and 21–34 ns from two threads at full rate (release
//! build, 2 busy cores). Histograms are allocated on a shard's first use, so memory
//! follows what actually runs (about 36 KiB per histogram, two per window).
//!
//! Quantiles cover a recent window, not all time (a p99 since start stops moving after a
//! day): the histogram being filled and the one before it are read together, and
//! [`Slot::rotate`] (once a minute) drops the older one, so quantiles describe the last one
//! to two minutes. Counts and sums are since start, as Prometheus expects of a summary.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use harpocrates_protocol::LatencySummary;
use hdrhistogram::Histogram;

/// Highest latency told apart, nanoseconds (an hour); longer ones count as an hour.
const HIGHEST_NS: u64 = 3_600 * 1_000_000_000;

/// Two significant digits: quantiles within 1%, about 36 KiB per histogram.
const SIGFIG: u8 = 2;

/// Locked states per kind: as many as the daemon's default I/O threads at most.
pub const SHARDS: usize = 8;

fn histogram() -> Histogram<u64> {
    // The bounds are constants that hdrhistogram accepts; a failure is a programming error
    // caught by the tests.
    Histogram::new_with_bounds(1, HIGHEST_NS, SIGFIG).expect("valid histogram bounds")
}

/// The shard this thread records into.
fn shard_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    INDEX.with(|i| *i)
}

#[derive(Default)]
struct State {
    count: u64,
    errors: u64,
    sum_ns: u64,
    /// Filled now. Allocated on first use: most kinds never run on most threads.
    current: Option<Histogram<u64>>,
    /// The window before.
    previous: Option<Histogram<u64>>,
}

/// One shard, alone on its cache lines (128 bytes: adjacent-line prefetch pairs lines).
#[derive(Default)]
#[repr(align(128))]
struct Shard(Mutex<State>);

impl Shard {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing in here can be left half-updated by a panic worth refusing to count on.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A copy of one slot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SlotReading {
    /// Operations since start.
    pub count: u64,
    /// Of which failed.
    pub errors: u64,
    /// Latency quantiles (window) and sum (since start).
    pub latency: LatencySummary,
}

/// Counters and latency histograms of one operation kind.
#[derive(Default)]
pub struct Slot {
    shards: [Shard; SHARDS],
}

impl Slot {
    /// Counts `n` operations that each took `latency`, `errors` of them failed: one
    /// (uncontended) lock, three adds and one `record_n`.
    pub fn record(&self, n: u64, errors: u64, latency: Duration) {
        if n == 0 {
            return;
        }
        let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        let mut s = self.shards[shard_index()].lock();
        s.count = s.count.saturating_add(n);
        s.errors = s.errors.saturating_add(errors);
        s.sum_ns = s.sum_ns.saturating_add(ns.saturating_mul(n));
        s.current.get_or_insert_with(histogram).saturating_record_n(ns, n);
    }

    /// `(count, errors, sum_ns)`, without the histograms.
    pub fn totals(&self) -> (u64, u64, u64) {
        self.shards.iter().fold((0, 0, 0), |(n, e, l), shard| {
            let s = shard.lock();
            (n + s.count, e + s.errors, l.saturating_add(s.sum_ns))
        })
    }

    /// Starts a new window: the current histograms become the previous ones, and the
    /// previous ones are cleared to be filled next.
    pub fn rotate(&self) {
        for shard in &self.shards {
            let mut s = shard.lock();
            let s = &mut *s;
            std::mem::swap(&mut s.current, &mut s.previous);
            if let Some(h) = &mut s.current {
                h.reset();
            }
        }
    }

    /// Counts, sum, and quantiles over the current and previous windows.
    pub fn read(&self) -> SlotReading {
        let mut reading = SlotReading::default();
        let mut window: Option<Histogram<u64>> = None;
        for shard in &self.shards {
            // Merged under the shard's lock: an addition of a few thousand counters.
            let s = shard.lock();
            reading.count += s.count;
            reading.errors += s.errors;
            reading.latency.sum_ns = reading.latency.sum_ns.saturating_add(s.sum_ns);
            for h in [&s.current, &s.previous].into_iter().flatten().filter(|h| !h.is_empty()) {
                match &mut window {
                    // Same bounds: the addition cannot fail.
                    Some(w) => {
                        let _ = w.add(h);
                    }
                    None => window = Some(h.clone()),
                }
            }
        }
        if let Some(h) = window {
            let l = &mut reading.latency;
            l.window_count = h.len();
            l.p50_ns = h.value_at_quantile(0.5);
            l.p90_ns = h.value_at_quantile(0.9);
            l.p99_ns = h.value_at_quantile(0.99);
            l.max_ns = h.max();
        }
        reading
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_come_from_the_recorded_latencies() {
        let slot = Slot::default();
        for us in 1..=100u64 {
            slot.record(1, u64::from(us % 10 == 0), Duration::from_micros(us));
        }
        let r = slot.read();
        assert_eq!((r.count, r.errors), (100, 10));
        assert_eq!(r.latency.sum_ns, (1..=100u64).sum::<u64>() * 1000);
        assert_eq!(r.latency.window_count, 100);
        let near = |got: u64, want_us: u64| {
            let want = want_us * 1000;
            assert!(got.abs_diff(want) * 100 <= want, "{got} ns is not within 1% of {want} ns");
        };
        near(r.latency.p50_ns, 50);
        near(r.latency.p90_ns, 90);
        near(r.latency.p99_ns, 99);
        near(r.latency.max_ns, 100);
    }

    #[test]
    fn a_batch_is_recorded_at_once() {
        let slot = Slot::default();
        slot.record(1000, 3, Duration::from_micros(7));
        slot.record(0, 0, Duration::from_secs(9));
        let r = slot.read();
        assert_eq!((r.count, r.errors, r.latency.window_count), (1000, 3, 1000));
        assert_eq!(r.latency.sum_ns, 7_000_000);
        assert!(r.latency.p50_ns.abs_diff(7_000) * 100 <= 7_000, "{}", r.latency.p50_ns);
        assert_eq!(r.latency.p50_ns, r.latency.max_ns, "every element took the same time");
    }

    #[test]
    fn windows_rotate_out_but_totals_stay() {
        let slot = Slot::default();
        slot.record(10, 0, Duration::from_millis(5));
        slot.rotate();
        slot.record(1, 0, Duration::from_micros(1));
        let r = slot.read();
        assert_eq!(r.latency.window_count, 11, "the previous window still counts");
        assert!(r.latency.max_ns >= 4_950_000, "{}", r.latency.max_ns);
        slot.rotate();
        let r = slot.read();
        assert_eq!(r.latency.window_count, 1, "two rotations drop a window");
        assert!(r.latency.max_ns < 2_000, "{}", r.latency.max_ns);
        slot.rotate();
        slot.rotate();
        let r = slot.read();
        assert_eq!((r.count, r.latency.window_count), (11, 0), "idle: totals, no quantiles");
        assert_eq!(r.latency.p99_ns, 0);
        assert_eq!(r.latency.sum_ns, 50_000_000 + 1_000);
    }

    #[test]
    fn extremes_are_clamped_not_lost() {
        let slot = Slot::default();
        slot.record(2, 0, Duration::from_secs(100_000));
        slot.record(1, 0, Duration::ZERO);
        let r = slot.read();
        assert_eq!(r.latency.window_count, 3);
        assert!(r.latency.max_ns >= HIGHEST_NS && r.latency.max_ns <= HIGHEST_NS / 100 * 101);
        assert_eq!(r.latency.sum_ns, 200_000 * 1_000_000_000);
    }

    #[test]
    fn threads_record_into_shards_that_a_reading_merges() {
        let slot = std::sync::Arc::new(Slot::default());
        let threads: Vec<_> = (0..2 * SHARDS as u64)
            .map(|t| {
                let slot = slot.clone();
                std::thread::spawn(move || {
                    for _ in 0..100 {
                        slot.record(2, 1, Duration::from_micros(t + 1));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        let r = slot.read();
        let n = 2 * SHARDS as u64;
        assert_eq!((r.count, r.errors, r.latency.window_count), (200 * n, 100 * n, 200 * n));
        assert_eq!(r.latency.sum_ns, 200 * 1000 * (1..=n).sum::<u64>());
        assert!(r.latency.max_ns.abs_diff(n * 1000) * 100 <= n * 1000, "{:?}", r.latency);
        assert!(slot.shards.iter().filter(|s| s.lock().count > 0).count() > 1, "sharded");
        assert_eq!(slot.totals(), (r.count, r.errors, r.latency.sum_ns));
    }

    #[test]
    fn one_histogram_is_small() {
        let h = histogram();
        assert!(h.distinct_values() * 8 < 48 * 1024, "{} counters", h.distinct_values());
    }
}
