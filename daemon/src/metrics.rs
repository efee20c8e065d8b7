//! Operation counters and latencies, shared lock-free by every actor and connection.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use harpocrates_protocol::{MetricsSnapshot, OpMetrics};

/// Every operation name counted, in report order (see `Request::op_name`).
pub const OPS: [&str; 34] = [
    "hello",
    "ping",
    "generate_random",
    "generate_key",
    "generate_key_with_attributes",
    "list_keys",
    "encrypt",
    "decrypt",
    "destroy_key",
    "supports_key_backup",
    "health_check",
    "get_metrics",
    "batch",
    "backup_key",
    "restore_key",
    "generate_kek",
    "list_keks",
    "derive_data_key",
    "generate_data_key",
    "unwrap_data_key",
    "envelope_encrypt",
    "envelope_decrypt",
    "rewrap",
    "rotation",
    "retire_kek_version",
    // The key manager's own token work (internal jobs on the session pool).
    "kek_state_read",
    "kek_state_write",
    "kek_list",
    "kek_derive",
    "kek_wrap",
    "kek_unwrap",
    "kek_create_version",
    "kek_validate",
    "kek_destroy_version",
];

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
    ops: [Counter; OPS.len()],
    other: Counter,
    connections: AtomicU64,
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
            samples: Mutex::new(VecDeque::from([(started, 0)])),
        }
    }

    /// Time since start.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    fn counter(&self, op: &str) -> &Counter {
        OPS.iter().position(|o| *o == op).map_or(&self.other, |i| &self.ops[i])
    }

    /// Counts one finished operation.
    pub fn record(&self, op: &str, ok: bool, latency: Duration) {
        let c = self.counter(op);
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
        let per_op = OPS
            .iter()
            .zip(&self.ops)
            .filter(|(_, c)| c.count.load(Relaxed) > 0)
            .map(|(name, c)| {
                let n = c.count.load(Relaxed);
                OpMetrics {
                    op: (*name).to_owned(),
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
    fn every_request_kind_has_its_own_slot() {
        use harpocrates_protocol::{KeyAttributes, Request};
        let all = [
            Request::Hello { version: 1, client_name: String::new() },
            Request::Ping,
            Request::GenerateRandom { len: 1 },
            Request::GenerateKey { label: "k".into(), size_bits: 256 },
            Request::GenerateKeyWithAttributes {
                label: "k".into(),
                attributes: KeyAttributes::default(),
            },
            Request::ListKeys,
            Request::Encrypt { key: "k".into(), plaintext: Vec::new().into(), aad: None },
            Request::Decrypt { key: "k".into(), ciphertext: Vec::new(), aad: None },
            Request::DestroyKey { key: "k".into() },
            Request::SupportsKeyBackup,
            Request::HealthCheck,
            Request::GetMetrics,
            Request::Batch(Vec::new()),
            Request::BackupKey { key: "k".into(), password: Vec::new().into() },
            Request::RestoreKey {
                label: "k".into(),
                backup: Vec::new(),
                password: Vec::new().into(),
            },
            Request::GenerateKek { name: "k".into() },
            Request::ListKeks,
            Request::DeriveDataKey { kek: "k".into(), context: Vec::new(), len: 32 },
            Request::GenerateDataKey { kek: "k".into() },
            Request::UnwrapDataKey { wrapped: Vec::new() },
            Request::EnvelopeEncrypt {
                kek: "k".into(),
                context: Vec::new(),
                plaintext: Vec::new().into(),
                aad: None,
            },
            Request::EnvelopeDecrypt { context: Vec::new(), ciphertext: Vec::new(), aad: None },
            Request::Rewrap { context: Vec::new(), ciphertext: Vec::new(), aad: None },
            Request::Rotation { kek: "k".into(), step: harpocrates_protocol::RotationStep::Status },
            Request::RetireKekVersion { kek: "k".into(), version: 1, destroy: false },
        ];
        let m = Metrics::new();
        for r in &all {
            m.record(r.op_name(), true, Duration::ZERO);
        }
        let s = m.snapshot();
        assert_eq!(s.per_op.len(), all.len(), "each kind counted in a slot of its own");
        assert_eq!(OPS.len(), all.len() + 9, "plus the nine internal job names");
        assert_eq!(m.other.count.load(Relaxed), 0, "no kind fell into the catch-all");
    }
}
