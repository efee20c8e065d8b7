//! Operation counters and latencies, shared lock-free by every actor and connection.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use harpocrates_protocol::{MetricsSnapshot, Op, OpMetrics};

/// The key manager's own token work (internal jobs on the session pool), counted beside
/// the client operations.
pub const INTERNAL_JOBS: [&str; 12] = [
    "kek_state_read",
    "kek_state_write",
    "kek_list",
    "kek_derive",
    "kek_wrap",
    "kek_unwrap",
    "kek_create_version",
    "kek_validate",
    "kek_destroy_version",
    "kek_discard_version",
    "kek_key_ids",
    "kek_sweep",
];

/// How many names are counted: every client operation, then the internal jobs.
const COUNTED: usize = Op::ALL.len() + INTERNAL_JOBS.len();

// A client operation's slot is `op as usize`: that holds while `Op::ALL` lists the
// operations in declaration order, checked here when the daemon compiles.
const _: () = {
    let mut i = 0;
    while i < Op::ALL.len() {
        assert!(Op::ALL[i] as usize == i, "Op::ALL must list Op in declaration order");
        i += 1;
    }
};

/// The name counted in slot `i`: client operations in the protocol's order, then the
/// internal jobs.
fn counted_name(i: usize) -> &'static str {
    match Op::ALL.get(i) {
        Some(op) => op.name(),
        None => INTERNAL_JOBS[i - Op::ALL.len()],
    }
}

/// How far back `ops_per_sec` looks.
const RATE_WINDOW: Duration = Duration::from_secs(60);

#[derive(Default)]
struct Counter {
    count: AtomicU64,
    errors: AtomicU64,
    latency_ns: AtomicU64,
}

/// The daemon's metrics registry.
pub struct Metrics {
    started: Instant,
    ops: [Counter; COUNTED],
    other: Counter,
    connections: AtomicU64,
    audit_records: AtomicU64,
    audit_dropped: AtomicU64,
    audit_failed: AtomicU64,
    /// `(when, ops_total)` samples, oldest first, for the recent rate.
    samples: Mutex<VecDeque<(Instant, u64)>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry whose clock starts now.
    pub fn new() -> Self {
        let started = Instant::now();
        Self {
            started,
            ops: std::array::from_fn(|_| Counter::default()),
            other: Counter::default(),
            connections: AtomicU64::new(0),
            audit_records: AtomicU64::new(0),
            audit_dropped: AtomicU64::new(0),
            audit_failed: AtomicU64::new(0),
            samples: Mutex::new(VecDeque::from([(started, 0)])),
        }
    }

    /// Time since start.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    fn counter(&self, op: &str) -> &Counter {
        (0..COUNTED).find(|&i| counted_name(i) == op).map_or(&self.other, |i| &self.ops[i])
    }

    /// Counts one finished client operation: an index, three relaxed atomic adds, no
    /// lock and no name lookup (it runs once per batch element).
    pub fn record_op(&self, op: Op, ok: bool, latency: Duration) {
        Self::count(&self.ops[op as usize], ok, latency);
    }

    /// Counts `n` finished operations of one kind, `errors` of them failed, each taking
    /// `latency`: a batch of like elements costs three atomic adds, not three per element
    /// (the counters are shared by every I/O thread).
    pub fn record_ops(&self, op: Op, n: u64, errors: u64, latency: Duration) {
        let c = &self.ops[op as usize];
        c.count.fetch_add(n, Relaxed);
        if errors > 0 {
            c.errors.fetch_add(errors, Relaxed);
        }
        let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        c.latency_ns.fetch_add(ns.saturating_mul(n), Relaxed);
    }

    /// Counts one finished operation by name (the key manager's internal jobs; a client
    /// operation's name finds its slot too, by a search: prefer [`Metrics::record_op`]).
    pub fn record(&self, op: &str, ok: bool, latency: Duration) {
        Self::count(self.counter(op), ok, latency);
    }

    fn count(c: &Counter, ok: bool, latency: Duration) {
        c.count.fetch_add(1, Relaxed);
        if !ok {
            c.errors.fetch_add(1, Relaxed);
        }
        c.latency_ns.fetch_add(u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX), Relaxed);
    }

    /// A client connected.
    pub fn connection_opened(&self) {
        self.connections.fetch_add(1, Relaxed);
    }

    /// Audit records accepted by the audit actor.
    pub fn audit_recorded(&self, n: u64) {
        self.audit_records.fetch_add(n, Relaxed);
    }

    /// Audit records dropped because the queue was full.
    pub fn audit_dropped(&self, n: u64) {
        self.audit_dropped.fetch_add(n, Relaxed);
    }

    /// Audit records lost to a failed write.
    pub fn audit_failed(&self, n: u64) {
        self.audit_failed.fetch_add(n, Relaxed);
    }

    /// A client went away.
    pub fn connection_closed(&self) {
        self.connections.fetch_sub(1, Relaxed);
    }

    fn totals(&self) -> (u64, u64, u64) {
        self.ops.iter().chain(std::iter::once(&self.other)).fold((0, 0, 0), |(n, e, l), c| {
            (n + c.count.load(Relaxed), e + c.errors.load(Relaxed), l + c.latency_ns.load(Relaxed))
        })
    }

    /// Records a rate sample; called about once a second by a timer.
    pub fn sample(&self) {
        let now = Instant::now();
        let (total, _, _) = self.totals();
        let mut s = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        s.push_back((now, total));
        while s.len() > 2 && s.front().is_some_and(|(t, _)| now.duration_since(*t) > RATE_WINDOW) {
            s.pop_front();
        }
    }

    /// A consistent-enough copy of every counter.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let (ops_total, errors_total, latency_ns) = self.totals();
        let now = Instant::now();
        let (since, base) = {
            let s = self.samples.lock().unwrap_or_else(|p| p.into_inner());
            s.front().copied().unwrap_or((self.started, 0))
        };
        let secs = now.duration_since(since).as_secs_f64();
        let avg_us = |ns: u64, n: u64| {
            if n == 0 { 0.0 } else { ns as f64 / n as f64 / 1000.0 }
        };
        let per_op = (0..COUNTED)
            .map(counted_name)
            .zip(&self.ops)
            .filter(|(_, c)| c.count.load(Relaxed) > 0)
            .map(|(name, c)| {
                let n = c.count.load(Relaxed);
                OpMetrics {
                    op: name.to_owned(),
                    count: n,
                    errors: c.errors.load(Relaxed),
                    avg_latency_us: avg_us(c.latency_ns.load(Relaxed), n),
                }
            })
            .collect();
        MetricsSnapshot {
            uptime_secs: self.uptime().as_secs(),
            ops_total,
            errors_total,
            ops_per_sec: if secs > 0.0 {
                ops_total.saturating_sub(base) as f64 / secs
            } else {
                0.0
            },
            avg_latency_us: avg_us(latency_ns, ops_total),
            error_rate: if ops_total == 0 { 0.0 } else { errors_total as f64 / ops_total as f64 },
            connections: self.connections.load(Relaxed),
            per_op,
            audit_records: self.audit_records.load(Relaxed),
            audit_dropped: self.audit_dropped.load(Relaxed),
            audit_failed: self.audit_failed.load(Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_errors_and_latency_per_op() {
        let m = Metrics::new();
        m.record("encrypt", true, Duration::from_micros(10));
        m.record("encrypt", false, Duration::from_micros(30));
        m.record("ping", true, Duration::from_micros(1));
        let s = m.snapshot();
        assert_eq!((s.ops_total, s.errors_total), (3, 1));
        assert!((s.error_rate - 1.0 / 3.0).abs() < 1e-9);
        let enc = s.per_op.iter().find(|o| o.op == "encrypt").expect("encrypt counted");
        assert_eq!((enc.count, enc.errors), (2, 1));
        assert!((enc.avg_latency_us - 20.0).abs() < 1e-6, "{}", enc.avg_latency_us);
        assert!(s.per_op.iter().all(|o| o.op != "decrypt"), "unused ops are not listed");
    }

    #[test]
    fn every_operation_and_internal_job_has_its_own_slot() {
        let m = Metrics::new();
        for op in Op::ALL {
            m.record(op.name(), true, Duration::ZERO);
        }
        for job in INTERNAL_JOBS {
            m.record(job, true, Duration::ZERO);
        }
        for op in Op::ALL {
            m.record_op(op, false, Duration::ZERO);
        }
        m.record_ops(Op::Encrypt, 3, 1, Duration::from_micros(2));
        let s = m.snapshot();
        assert_eq!(s.per_op.len(), COUNTED, "each name counted in a slot of its own");
        for op in Op::ALL.into_iter().filter(|&op| op != Op::Encrypt) {
            let o = s.per_op.iter().find(|o| o.op == op.name()).expect("counted");
            assert_eq!((o.count, o.errors), (2, 1), "by name and by Op, one slot: {}", o.op);
        }
        let enc = s.per_op.iter().find(|o| o.op == "encrypt").expect("counted");
        assert_eq!((enc.count, enc.errors), (5, 2));
        assert!((enc.avg_latency_us - 6.0 / 5.0).abs() < 1e-9, "{}", enc.avg_latency_us);
        assert!(s.per_op.iter().filter(|o| o.op.starts_with("kek_")).all(|o| o.count == 1));
        assert_eq!(m.other.count.load(Relaxed), 0, "nothing fell into the catch-all");
    }
}
