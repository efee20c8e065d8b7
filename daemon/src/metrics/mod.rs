//! The daemon's metrics registry, shared by every actor and connection: per-operation
//! counters and latency histograms ([`latency`]), answers by error code, connection,
//! reload and backend-swap counters, and the session pool's gauges read at snapshot time.
//! [`textfile`] writes snapshots for node_exporter; `docs/metrics.md` lists every metric.

pub mod latency;
pub mod textfile;

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use harpocrates_protocol::metrics::ERROR_CODES;
use harpocrates_protocol::{
    ErrorCode, ErrorCount, MetricsSnapshot, Op, OpMetrics, PoolGauges, WireResult,
};

use latency::Slot;

/// The daemon's own token work (internal jobs on the session pool): the key manager's, the
/// watchdog's probe and the status line's key count. Each is listed beside the client
/// operations but not counted in the totals (`ops_total`, `ops_per_sec`, ...), which are
/// what clients asked for: an idle daemon's watchdog must not look like traffic. A job
/// not named here is listed as [`OTHER_JOBS`].
pub const INTERNAL_JOBS: [&str; 14] = [
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
    "watchdog_probe",
    "status_key_count",
];

/// Where internal jobs missing from [`INTERNAL_JOBS`] are counted.
pub const OTHER_JOBS: &str = "other_jobs";

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

/// Error-code counters: every known code, then one for codes this build does not know.
const CODE_SLOTS: usize = ERROR_CODES.len() + 1;

/// The counter slot of `code`.
fn code_slot(code: ErrorCode) -> usize {
    let n = usize::from(code.as_u16());
    if matches!(code, ErrorCode::Unknown(_)) || !(1..=ERROR_CODES.len()).contains(&n) {
        ERROR_CODES.len()
    } else {
        n - 1
    }
}

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

/// How often latency quantiles start a new window: they describe the last one to two of
/// these.
pub const LATENCY_WINDOW: Duration = Duration::from_secs(60);

/// What the once-a-second sampler keeps.
struct Samples {
    /// `(when, ops_total)`, oldest first, for the recent rate.
    totals: VecDeque<(Instant, u64)>,
    /// When the latency windows last rotated.
    rotated: Instant,
}

/// The daemon's metrics registry.
pub struct Metrics {
    started: Instant,
    ops: [Slot; COUNTED],
    other: Slot,
    codes: [AtomicU64; CODE_SLOTS],
    connections: AtomicU64,
    connections_total: AtomicU64,
    connections_refused: AtomicU64,
    reloads_ok: AtomicU64,
    reloads_failed: AtomicU64,
    backend_swaps: AtomicU64,
    backend_generation: AtomicU64,
    audit_records: AtomicU64,
    audit_dropped: AtomicU64,
    audit_failed: AtomicU64,
    samples: Mutex<Samples>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry whose clock starts now, serving backend generation 1.
    pub fn new() -> Self {
        let started = Instant::now();
        Self {
            started,
            ops: std::array::from_fn(|_| Slot::default()),
            other: Slot::default(),
            codes: std::array::from_fn(|_| AtomicU64::new(0)),
            connections: AtomicU64::new(0),
            connections_total: AtomicU64::new(0),
            connections_refused: AtomicU64::new(0),
            reloads_ok: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
            backend_swaps: AtomicU64::new(0),
            backend_generation: AtomicU64::new(1),
            audit_records: AtomicU64::new(0),
            audit_dropped: AtomicU64::new(0),
            audit_failed: AtomicU64::new(0),
            samples: Mutex::new(Samples {
                totals: VecDeque::from([(started, 0)]),
                rotated: started,
            }),
        }
    }

    /// Time since start.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    fn slot(&self, op: &str) -> &Slot {
        (0..COUNTED).find(|&i| counted_name(i) == op).map_or(&self.other, |i| &self.ops[i])
    }

    /// Counts one finished client operation.
    pub fn record_op(&self, op: Op, ok: bool, latency: Duration) {
        self.ops[op as usize].record(1, u64::from(!ok), latency);
    }

    /// Counts `n` finished operations of one kind, `errors` of them failed, each taking
    /// `latency`: one lock and one histogram update for the whole run.
    pub fn record_ops(&self, op: Op, n: u64, errors: u64, latency: Duration) {
        self.ops[op as usize].record(n, errors, latency);
    }

    /// Counts finished client operations with their outcomes (an error's code, or `None`
    /// for success), all answered after `latency`: runs of one operation (a batch is
    /// usually all alike) are recorded at once, and each error code costs one atomic add
    /// per call, not per element.
    pub fn record_outcomes(
        &self,
        outcomes: impl IntoIterator<Item = (Op, Option<ErrorCode>)>,
        latency: Duration,
    ) {
        let mut codes = [0u64; CODE_SLOTS];
        let mut run: Option<(Op, u64, u64)> = None;
        for (op, error) in outcomes {
            let failed = u64::from(error.is_some());
            if let Some(code) = error {
                codes[code_slot(code)] += 1;
            }
            match &mut run {
                Some((current, n, errors)) if *current == op => {
                    *n += 1;
                    *errors += failed;
                }
                _ => {
                    if let Some((op, n, errors)) = run.replace((op, 1, failed)) {
                        self.record_ops(op, n, errors, latency);
                    }
                }
            }
        }
        if let Some((op, n, errors)) = run {
            self.record_ops(op, n, errors, latency);
        }
        for (counter, n) in self.codes.iter().zip(codes) {
            if n > 0 {
                counter.fetch_add(n, Relaxed);
            }
        }
    }

    /// [`Metrics::record_outcomes`] of answers to operations `ops`, pairwise.
    pub fn record_answers<'a>(
        &self,
        ops: impl IntoIterator<Item = Op>,
        answers: impl IntoIterator<Item = &'a WireResult>,
        latency: Duration,
    ) {
        let outcomes =
            ops.into_iter().zip(answers).map(|(op, a)| (op, a.as_ref().err().map(|e| e.code)));
        self.record_outcomes(outcomes, latency);
    }

    /// Counts one finished operation by name (the key manager's internal jobs; a client
    /// operation's name finds its slot too, by a search: prefer [`Metrics::record_op`]).
    pub fn record(&self, op: &str, ok: bool, latency: Duration) {
        self.slot(op).record(1, u64::from(!ok), latency);
    }

    /// A client connected.
    pub fn connection_opened(&self) {
        self.connections.fetch_add(1, Relaxed);
        self.connections_total.fetch_add(1, Relaxed);
    }

    /// A client went away.
    pub fn connection_closed(&self) {
        self.connections.fetch_sub(1, Relaxed);
    }

    /// A connection was refused with `Busy` because the connection limit was reached.
    pub fn connection_refused(&self) {
        self.connections_refused.fetch_add(1, Relaxed);
    }

    /// A configuration reload finished: applied (`ok`) or refused.
    pub fn reloaded(&self, ok: bool) {
        let counter = if ok { &self.reloads_ok } else { &self.reloads_failed };
        counter.fetch_add(1, Relaxed);
    }

    /// A new backend session pool took over, as backend generation `generation`.
    pub fn backend_swapped(&self, generation: u64) {
        self.backend_swaps.fetch_add(1, Relaxed);
        self.backend_generation.store(generation, Relaxed);
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

    fn slots(&self) -> impl Iterator<Item = &Slot> {
        self.ops.iter().chain(std::iter::once(&self.other))
    }

    /// Client operations' `(count, errors, latency sum)`.
    fn totals(&self) -> (u64, u64, u64) {
        self.ops[..Op::ALL.len()]
            .iter()
            .map(Slot::totals)
            .fold((0, 0, 0), |(n, e, l), (cn, ce, cl)| (n + cn, e + ce, l.saturating_add(cl)))
    }

    /// Records a rate sample and, once a [`LATENCY_WINDOW`] has passed, starts new
    /// latency windows; called about once a second by a timer.
    pub fn sample(&self) {
        self.sample_at(Instant::now());
    }

    fn sample_at(&self, now: Instant) {
        let (total, _, _) = self.totals();
        let rotate = {
            let mut s = self.samples.lock().unwrap_or_else(|p| p.into_inner());
            s.totals.push_back((now, total));
            while s.totals.len() > 2
                && s.totals.front().is_some_and(|(t, _)| now.duration_since(*t) > RATE_WINDOW)
            {
                s.totals.pop_front();
            }
            let due = now.duration_since(s.rotated) >= LATENCY_WINDOW;
            if due {
                s.rotated = now;
            }
            due
        };
        if rotate {
            self.slots().for_each(Slot::rotate);
        }
    }

    /// A snapshot without the session pool's gauges (they read as zero); see
    /// [`Metrics::snapshot_with`].
    pub fn snapshot(&self) -> MetricsSnapshot {
        self.snapshot_with(PoolGauges::default())
    }

    /// A consistent-enough copy of every counter, with the serving pool's `gauges`.
    pub fn snapshot_with(&self, gauges: PoolGauges) -> MetricsSnapshot {
        let now = Instant::now();
        let (since, base) = {
            let s = self.samples.lock().unwrap_or_else(|p| p.into_inner());
            s.totals.front().copied().unwrap_or((self.started, 0))
        };
        let avg_us = |ns: u64, n: u64| {
            if n == 0 { 0.0 } else { ns as f64 / n as f64 / 1000.0 }
        };
        let mut ops_total = 0;
        let mut errors_total = 0;
        let mut latency_ns = 0u64;
        let mut per_op = Vec::new();
        for (i, slot) in self.slots().enumerate() {
            let r = slot.read();
            if i < Op::ALL.len() {
                ops_total += r.count;
                errors_total += r.errors;
                latency_ns = latency_ns.saturating_add(r.latency.sum_ns);
            }
            if r.count > 0 {
                per_op.push(OpMetrics {
                    op: if i < COUNTED { counted_name(i) } else { OTHER_JOBS }.to_owned(),
                    count: r.count,
                    errors: r.errors,
                    avg_latency_us: avg_us(r.latency.sum_ns, r.count),
                    latency: r.latency,
                });
            }
        }
        let secs = now.duration_since(since).as_secs_f64();
        let unknown = self.codes[ERROR_CODES.len()].load(Relaxed);
        let errors_by_code = ERROR_CODES
            .iter()
            .zip(&self.codes)
            .map(|(&code, n)| ErrorCount { code, count: n.load(Relaxed) })
            // Codes this build does not know have no number of their own here: 0.
            .chain(
                (unknown > 0).then_some(ErrorCount { code: ErrorCode::Unknown(0), count: unknown }),
            )
            .collect();
        let dek = &crate::keys::dek::CACHE_COUNTS;
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
            errors_by_code,
            pool: gauges,
            connections_total: self.connections_total.load(Relaxed),
            connections_refused: self.connections_refused.load(Relaxed),
            dek_cache_hits: dek.hits(),
            dek_cache_misses: dek.misses(),
            reloads_ok: self.reloads_ok.load(Relaxed),
            reloads_failed: self.reloads_failed.load(Relaxed),
            backend_swaps: self.backend_swaps.load(Relaxed),
            backend_generation: self.backend_generation.load(Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use harpocrates_protocol::{Response, WireError};

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
        assert_eq!(enc.latency.window_count, 2);
        assert!(enc.latency.max_ns.abs_diff(30_000) <= 300, "{:?}", enc.latency);
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
        assert_eq!(m.other.totals().0, 0, "nothing fell into the catch-all");
        m.record("no_such_job", false, Duration::ZERO);
        let s = m.snapshot();
        let other = s.per_op.iter().find(|o| o.op == OTHER_JOBS).expect("the catch-all");
        assert_eq!((other.count, other.errors), (1, 1));
        let client_ops = 2 * Op::ALL.len() as u64 + 3;
        assert_eq!(s.ops_total, client_ops, "internal jobs are not in the totals");
        assert_eq!(s.errors_total, Op::ALL.len() as u64 + 1);
    }

    #[test]
    fn outcomes_count_runs_and_error_codes() {
        let m = Metrics::new();
        let busy = || Err(WireError::new(ErrorCode::Busy, "full"));
        let answers: Vec<WireResult> = vec![
            Ok(Response::Pong),
            busy(),
            busy(),
            Err(WireError::new(ErrorCode::InvalidRequest, "bad")),
            Ok(Response::Pong),
            Err(WireError::new(ErrorCode::Unknown(999), "new")),
        ];
        let ops = [Op::Encrypt, Op::Encrypt, Op::Encrypt, Op::Decrypt, Op::Ping, Op::Ping];
        m.record_answers(ops, &answers, Duration::from_micros(4));
        let s = m.snapshot();
        let count = |op: &str| s.per_op.iter().find(|o| o.op == op).map(|o| (o.count, o.errors));
        assert_eq!(count("encrypt"), Some((3, 2)));
        assert_eq!(count("decrypt"), Some((1, 1)));
        assert_eq!(count("ping"), Some((2, 1)));
        let code = |c: ErrorCode| s.errors_by_code.iter().find(|e| e.code == c).map(|e| e.count);
        assert_eq!(code(ErrorCode::Busy), Some(2));
        assert_eq!(code(ErrorCode::InvalidRequest), Some(1));
        assert_eq!(code(ErrorCode::KeyNotFound), Some(0), "every known code is listed");
        assert_eq!(code(ErrorCode::Unknown(0)), Some(1), "codes this build does not know");
        assert_eq!(s.errors_by_code.len(), ERROR_CODES.len() + 1);
        assert_eq!(s.errors_total, s.errors_by_code.iter().map(|e| e.count).sum::<u64>());
    }

    #[test]
    fn connections_reloads_swaps_and_gauges() {
        let m = Metrics::new();
        m.connection_opened();
        m.connection_opened();
        m.connection_closed();
        m.connection_refused();
        m.reloaded(true);
        m.reloaded(false);
        m.reloaded(false);
        assert_eq!(m.snapshot().backend_generation, 1, "the first backend is generation 1");
        m.backend_swapped(2);
        let gauges = PoolGauges {
            sessions_busy: 1,
            sessions_open: 2,
            sessions_max: 4,
            queue_depth: 3,
            queue_capacity: 8,
        };
        let s = m.snapshot_with(gauges);
        assert_eq!((s.connections, s.connections_total, s.connections_refused), (1, 2, 1));
        assert_eq!((s.reloads_ok, s.reloads_failed), (1, 2));
        assert_eq!((s.backend_swaps, s.backend_generation), (1, 2));
        assert_eq!(s.pool, gauges);
    }

    #[test]
    fn the_sampler_rotates_latency_windows() {
        let m = Metrics::new();
        m.record_op(Op::Ping, true, Duration::from_millis(3));
        let window = |m: &Metrics| m.snapshot().per_op[0].latency.window_count;
        m.sample();
        assert_eq!(window(&m), 1, "not due yet");
        let later = Instant::now() + LATENCY_WINDOW;
        m.sample_at(later);
        assert_eq!(window(&m), 1, "one rotation keeps the previous window");
        m.sample_at(later + LATENCY_WINDOW);
        let s = m.snapshot();
        assert_eq!((s.per_op[0].count, window(&m)), (1, 0), "totals stay, the window empties");
    }
}
