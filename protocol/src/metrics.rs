//! The metrics snapshot (`GetMetrics`): counters, latency summaries, answers by error
//! code, the session pool's gauges; and the snapshot in the Prometheus text exposition
//! format.
//!
//! The rendering lives here, beside the types, so that `harpoctl metrics --prometheus`
//! and the daemon's node_exporter textfile print the same metrics the same way. Every
//! metric is named `harpocrates_*`; `docs/metrics.md` lists them.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::error::ErrorCode;
use crate::ops::Op;

/// Counters for one operation kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpMetrics {
    /// Operation name (see [`Request::op_name`](crate::Request::op_name)).
    pub op: String,
    /// Operations completed.
    pub count: u64,
    /// Of which failed.
    pub errors: u64,
    /// Mean time from admission to answer, microseconds.
    pub avg_latency_us: f64,
    /// Latency quantiles over the last minute or two, and the sum since start.
    pub latency: LatencySummary,
}

/// Answer to [`Request::GetMetrics`](crate::Request::GetMetrics).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsSnapshot {
    /// Seconds since the daemon started.
    pub uptime_secs: u64,
    /// Client operations completed since start (the daemon's own token jobs are listed in
    /// `per_op` but counted neither here nor in the other totals and rates).
    pub ops_total: u64,
    /// Of which failed.
    pub errors_total: u64,
    /// Operations per second over the last minute (or since start, if shorter).
    pub ops_per_sec: f64,
    /// Mean latency over all operations since start, microseconds.
    pub avg_latency_us: f64,
    /// `errors_total / ops_total` (0 when idle).
    pub error_rate: f64,
    /// Open client connections.
    pub connections: u64,
    /// Per-operation counters: client operations in protocol order, then the daemon's own
    /// token jobs (`kek_*`, `watchdog_probe`, ...); only those that ran.
    pub per_op: Vec<OpMetrics>,
    /// Audit records handed to the audit actor.
    pub audit_records: u64,
    /// Audit records of `use` operations dropped because the queue was full
    /// (`audit.on_backlog = "count"` only).
    pub audit_dropped: u64,
    /// Audit records lost because the audit file could not be written (their operations
    /// were refused or withheld when they had to be durable).
    pub audit_failed: u64,
    /// Answers that carried an error, by code: every code this build knows, in number
    /// order (zeros included), then any other code received.
    pub errors_by_code: Vec<ErrorCount>,
    /// The serving session pool: sessions busy, open and configured, and its queue.
    pub pool: PoolGauges,
    /// Client connections accepted since start.
    pub connections_total: u64,
    /// Connections refused with `Busy` because the connection limit was reached.
    pub connections_refused: u64,
    /// Data-key lookups answered from the cache.
    pub dek_cache_hits: u64,
    /// Data-key lookups that had to ask the token (absent or expired).
    pub dek_cache_misses: u64,
    /// Configuration reloads that applied.
    pub reloads_ok: u64,
    /// Configuration reloads refused (the running configuration stayed).
    pub reloads_failed: u64,
    /// Hot swaps of the backend's session pool.
    pub backend_swaps: u64,
    /// The backend generation serving requests: 1 at start, one more per swap.
    pub backend_generation: u64,
}

/// Every error code this build knows, in wire-number order (1, 2, ...). Answers with a
/// code outside this list are counted as `unknown`.
pub const ERROR_CODES: [ErrorCode; 15] = [
    ErrorCode::NotInitialized,
    ErrorCode::KeyNotFound,
    ErrorCode::OperationFailed,
    ErrorCode::SessionInvalid,
    ErrorCode::PermissionDenied,
    ErrorCode::InvalidRequest,
    ErrorCode::FrameTooLarge,
    ErrorCode::UnsupportedVersion,
    ErrorCode::Busy,
    ErrorCode::IntegrityCheckFailed,
    ErrorCode::Unsupported,
    ErrorCode::KeyExists,
    ErrorCode::Unavailable,
    ErrorCode::InvalidState,
    ErrorCode::AuditUnavailable,
];

// `ERROR_CODES` is complete and in order: code `i + 1` sits at `i`, and the next number is
// not a code yet. A new error code does not compile until it is added above.
const _: () = {
    let mut i = 0;
    while i < ERROR_CODES.len() {
        assert!(ERROR_CODES[i].as_u16() as usize == i + 1, "ERROR_CODES must be in code order");
        i += 1;
    }
    assert!(
        matches!(ErrorCode::from_u16(ERROR_CODES.len() as u16 + 1), ErrorCode::Unknown(_)),
        "a new ErrorCode must be added to ERROR_CODES"
    );
};

/// Latencies of one operation kind: totals since start, quantiles over a recent window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LatencySummary {
    /// Sum of every latency since start, nanoseconds (with [`OpMetrics::count`] it is a
    /// Prometheus summary's `_sum` and `_count`).
    ///
    /// [`OpMetrics::count`]: OpMetrics::count
    pub sum_ns: u64,
    /// Operations in the quantile window (the last one to two minutes); the quantiles
    /// below are meaningless when it is 0.
    pub window_count: u64,
    /// Median over the window, nanoseconds.
    pub p50_ns: u64,
    /// 90th percentile over the window, nanoseconds.
    pub p90_ns: u64,
    /// 99th percentile over the window, nanoseconds.
    pub p99_ns: u64,
    /// Longest over the window, nanoseconds.
    pub max_ns: u64,
}

impl LatencySummary {
    /// The quantiles Prometheus sees, as `(quantile, nanoseconds)`.
    pub fn quantiles(&self) -> [(&'static str, u64); 4] {
        [("0.5", self.p50_ns), ("0.9", self.p90_ns), ("0.99", self.p99_ns), ("1", self.max_ns)]
    }
}

/// How many answers carried one error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorCount {
    /// The code.
    pub code: ErrorCode,
    /// Answers (batch elements each count) with that code since start.
    pub count: u64,
}

/// The session pool right now (the pool serving new requests, after a hot swap).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolGauges {
    /// Token-lane sessions running a batch.
    pub sessions_busy: u32,
    /// Sessions open (the password-KDF lane's one included).
    pub sessions_open: u32,
    /// Configured token-lane sessions (`max_sessions`).
    pub sessions_max: u32,
    /// Units of work (a request, or up to 64 operations of a batch) waiting for a token
    /// session.
    pub queue_depth: u64,
    /// How many may wait before requests are refused with `Busy` (`queue_depth` setting).
    pub queue_capacity: u64,
}

impl MetricsSnapshot {
    /// The snapshot in the Prometheus text exposition format (version 0.0.4): `# HELP`
    /// and `# TYPE` for every metric, counters ending in `_total`, latencies as summaries
    /// in seconds. Every client operation's counters are present (zero until used);
    /// latency summaries only for operations that ran.
    pub fn to_prometheus(&self) -> String {
        let mut out = Exposition::default();
        out.family("uptime_seconds", "gauge", "Seconds since the daemon started.");
        out.sample("uptime_seconds", &[], self.uptime_secs);

        let ops = self.ops_for_prometheus();
        out.family(
            "operations_total",
            "counter",
            "Operations completed, by operation: client requests, and the daemon's own token jobs \
             (kek_*, watchdog_probe, status_key_count).",
        );
        for o in &ops {
            out.sample("operations_total", &[("op", o.0)], o.1);
        }
        out.family("operation_errors_total", "counter", "Operations that failed, by operation.");
        for o in &ops {
            out.sample("operation_errors_total", &[("op", o.0)], o.2);
        }
        out.family(
            "operation_latency_seconds",
            "summary",
            "Time from admission to answer, by operation: quantiles over the last one to two \
             minutes (quantile 1 is the maximum), sum and count since start.",
        );
        for o in ops.iter().filter(|o| o.1 > 0) {
            let labels = |q| [("op", o.0), ("quantile", q)];
            for (q, ns) in o.3.quantiles() {
                let v = if o.3.window_count == 0 { f64::NAN } else { seconds(ns) };
                out.sample("operation_latency_seconds", &labels(q), Value::F(v));
            }
            out.sample(
                "operation_latency_seconds_sum",
                &[("op", o.0)],
                Value::F(seconds(o.3.sum_ns)),
            );
            out.sample("operation_latency_seconds_count", &[("op", o.0)], o.1);
        }

        out.family(
            "errors_total",
            "counter",
            "Answers that carried an error, by error code (each batch element counts).",
        );
        for (code, count) in self.errors_by_code_for_prometheus() {
            out.sample("errors_total", &[("code", code)], count);
        }

        let p = &self.pool;
        out.family("sessions_busy", "gauge", "Token sessions running a batch now.");
        out.sample("sessions_busy", &[], p.sessions_busy);
        out.family("sessions_open", "gauge", "Token sessions open now (the KDF lane's included).");
        out.sample("sessions_open", &[], p.sessions_open);
        out.family("sessions_max", "gauge", "Configured token sessions (max_sessions).");
        out.sample("sessions_max", &[], p.sessions_max);
        out.family("queue_depth", "gauge", "Units of work waiting for a token session.");
        out.sample("queue_depth", &[], p.queue_depth);
        out.family(
            "queue_capacity",
            "gauge",
            "Units of work that may wait before requests are refused with busy.",
        );
        out.sample("queue_capacity", &[], p.queue_capacity);
        out.family(
            "busy_refusals_total",
            "counter",
            "Refusals with busy: requests (a full queue or lane; each batch element counts) \
             and connections over the connection limit.",
        );
        let busy = self.errors_by_code.iter().filter(|e| e.code == ErrorCode::Busy);
        out.sample(
            "busy_refusals_total",
            &[("scope", "request")],
            busy.map(|e| e.count).sum::<u64>(),
        );
        out.sample("busy_refusals_total", &[("scope", "connection")], self.connections_refused);

        out.family("connections_open", "gauge", "Client connections open now.");
        out.sample("connections_open", &[], self.connections);
        out.family("connections_total", "counter", "Client connections accepted since start.");
        out.sample("connections_total", &[], self.connections_total);

        out.family(
            "dek_cache_hits_total",
            "counter",
            "Data-key lookups answered from the cache (no token call).",
        );
        out.sample("dek_cache_hits_total", &[], self.dek_cache_hits);
        out.family(
            "dek_cache_misses_total",
            "counter",
            "Data-key lookups that needed the token (absent or expired).",
        );
        out.sample("dek_cache_misses_total", &[], self.dek_cache_misses);

        out.family("reloads_total", "counter", "Configuration reloads, by result.");
        out.sample("reloads_total", &[("result", "ok")], self.reloads_ok);
        out.sample("reloads_total", &[("result", "failed")], self.reloads_failed);
        out.family("backend_swaps_total", "counter", "Hot swaps of the backend session pool.");
        out.sample("backend_swaps_total", &[], self.backend_swaps);
        out.family(
            "backend_generation",
            "gauge",
            "The backend generation serving requests (1 at start, one more per swap).",
        );
        out.sample("backend_generation", &[], self.backend_generation);

        out.family("audit_records_total", "counter", "Audit records handed to the audit actor.");
        out.sample("audit_records_total", &[], self.audit_records);
        out.family(
            "audit_dropped_total",
            "counter",
            "Audit records of use operations dropped because the audit queue was full.",
        );
        out.sample("audit_dropped_total", &[], self.audit_dropped);
        out.family(
            "audit_failed_total",
            "counter",
            "Audit records lost because the audit file could not be written.",
        );
        out.sample("audit_failed_total", &[], self.audit_failed);
        out.text
    }

    /// `(name, count, errors, latency)` for every client operation in [`Op::ALL`] order
    /// (zero when absent), then the snapshot's other entries (internal jobs), each name
    /// once.
    fn ops_for_prometheus(&self) -> Vec<(&str, u64, u64, LatencySummary)> {
        fn entry(o: &OpMetrics) -> (&str, u64, u64, LatencySummary) {
            (o.op.as_str(), o.count, o.errors, o.latency)
        }
        let mut ops: Vec<_> = Op::ALL
            .iter()
            .map(|op| {
                self.per_op
                    .iter()
                    .find(|o| o.op == op.name())
                    .map_or((op.name(), 0, 0, LatencySummary::default()), entry)
            })
            .collect();
        for o in &self.per_op {
            if !ops.iter().any(|(name, ..)| *name == o.op) {
                ops.push(entry(o));
            }
        }
        ops
    }

    /// `(code name, count)` for every known code in number order, then `unknown` (codes
    /// from a newer peer, added together).
    fn errors_by_code_for_prometheus(&self) -> Vec<(&'static str, u64)> {
        let count = |code: ErrorCode| {
            self.errors_by_code.iter().filter(|e| e.code == code).map(|e| e.count).sum::<u64>()
        };
        let unknown = self
            .errors_by_code
            .iter()
            .filter(|e| matches!(e.code, ErrorCode::Unknown(_)))
            .map(|e| e.count)
            .sum();
        ERROR_CODES
            .iter()
            .map(|&code| (code.name(), count(code)))
            .chain(std::iter::once(("unknown", unknown)))
            .collect()
    }
}

fn seconds(ns: u64) -> f64 {
    ns as f64 / 1e9
}

/// A sample value: integers print exactly, floats in Prometheus's spelling.
enum Value {
    U(u64),
    F(f64),
}

impl From<u64> for Value {
    fn from(v: u64) -> Self {
        Value::U(v)
    }
}

impl From<u32> for Value {
    fn from(v: u32) -> Self {
        Value::U(v.into())
    }
}

/// The text being built.
#[derive(Default)]
struct Exposition {
    text: String,
}

/// Every metric's prefix.
const PREFIX: &str = "harpocrates_";

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.text, "# HELP {PREFIX}{name} {help}");
        let _ = writeln!(self.text, "# TYPE {PREFIX}{name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Into<Value>) {
        let t = &mut self.text;
        t.push_str(PREFIX);
        t.push_str(name);
        if !labels.is_empty() {
            t.push('{');
            for (i, (key, value)) in labels.iter().enumerate() {
                if i > 0 {
                    t.push(',');
                }
                t.push_str(key);
                t.push_str("=\"");
                escape_label_value(t, value);
                t.push('"');
            }
            t.push('}');
        }
        t.push(' ');
        match value.into() {
            Value::U(v) => {
                let _ = write!(t, "{v}");
            }
            Value::F(v) if v.is_nan() => t.push_str("NaN"),
            Value::F(v) if v.is_infinite() => t.push_str(if v > 0.0 { "+Inf" } else { "-Inf" }),
            Value::F(v) => {
                let _ = write!(t, "{v}");
            }
        }
        t.push('\n');
    }
}

/// A label value as the exposition format wants it: `\`, `"` and newlines escaped.
fn escape_label_value(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use OpMetrics;

    fn snapshot() -> MetricsSnapshot {
        MetricsSnapshot {
            uptime_secs: 7,
            ops_total: 5,
            errors_total: 2,
            ops_per_sec: 1.5,
            avg_latency_us: 3.0,
            error_rate: 0.4,
            connections: 2,
            per_op: vec![
                OpMetrics {
                    op: "encrypt".into(),
                    count: 4,
                    errors: 1,
                    avg_latency_us: 2.5,
                    latency: LatencySummary {
                        sum_ns: 10_000,
                        window_count: 4,
                        p50_ns: 2_000,
                        p90_ns: 3_000,
                        p99_ns: 3_500,
                        max_ns: 3_500,
                    },
                },
                OpMetrics {
                    op: "we\"ird\\job\nname".into(),
                    count: 1,
                    errors: 1,
                    avg_latency_us: 5.0,
                    latency: LatencySummary { sum_ns: 5_000, ..LatencySummary::default() },
                },
            ],
            audit_records: 9,
            audit_dropped: 0,
            audit_failed: 1,
            errors_by_code: vec![
                ErrorCount { code: ErrorCode::Busy, count: 3 },
                ErrorCount { code: ErrorCode::Unknown(77), count: 1 },
                ErrorCount { code: ErrorCode::Unknown(78), count: 2 },
            ],
            pool: PoolGauges {
                sessions_busy: 1,
                sessions_open: 3,
                sessions_max: 2,
                queue_depth: 4,
                queue_capacity: 1024,
            },
            connections_total: 11,
            connections_refused: 5,
            dek_cache_hits: 8,
            dek_cache_misses: 2,
            reloads_ok: 1,
            reloads_failed: 1,
            backend_swaps: 1,
            backend_generation: 2,
        }
    }

    #[test]
    fn every_metric_has_help_and_type_and_the_prefix() {
        let text = snapshot().to_prometheus();
        let mut families = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                families.push(rest.split(' ').next().expect("name").to_owned());
            } else if !line.starts_with('#') {
                assert!(line.starts_with(PREFIX), "{line}");
                let name = line.split(['{', ' ']).next().expect("name");
                let family = families.last().expect("a TYPE line comes first");
                assert!(name.starts_with(family.as_str()), "{name} under {family}");
            }
        }
        for family in &families {
            assert!(text.contains(&format!("# HELP {family} ")), "{family} has HELP");
            let kind = text
                .lines()
                .find_map(|l| l.strip_prefix(&format!("# TYPE {family} ")))
                .expect("type");
            assert_eq!(family.ends_with("_total"), kind == "counter", "{family} is a {kind}");
        }
        let unique: std::collections::HashSet<_> = families.iter().collect();
        assert_eq!(unique.len(), families.len(), "no family twice");
    }

    #[test]
    fn operations_codes_and_latencies_are_labelled() {
        let text = snapshot().to_prometheus();
        for line in [
            "harpocrates_operations_total{op=\"encrypt\"} 4",
            "harpocrates_operation_errors_total{op=\"encrypt\"} 1",
            // Unused client operations are present at zero.
            "harpocrates_operations_total{op=\"decrypt\"} 0",
            "harpocrates_operation_latency_seconds{op=\"encrypt\",quantile=\"0.5\"} 0.000002",
            "harpocrates_operation_latency_seconds{op=\"encrypt\",quantile=\"0.99\"} 0.0000035",
            "harpocrates_operation_latency_seconds{op=\"encrypt\",quantile=\"1\"} 0.0000035",
            "harpocrates_operation_latency_seconds_sum{op=\"encrypt\"} 0.00001",
            "harpocrates_operation_latency_seconds_count{op=\"encrypt\"} 4",
            "harpocrates_errors_total{code=\"busy\"} 3",
            "harpocrates_errors_total{code=\"not_initialized\"} 0",
            "harpocrates_errors_total{code=\"unknown\"} 3",
            "harpocrates_busy_refusals_total{scope=\"request\"} 3",
            "harpocrates_busy_refusals_total{scope=\"connection\"} 5",
            "harpocrates_sessions_busy 1",
            "harpocrates_queue_depth 4",
            "harpocrates_reloads_total{result=\"failed\"} 1",
            "harpocrates_backend_generation 2",
            "harpocrates_dek_cache_hits_total 8",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        assert!(!text.contains("op=\"decrypt\",quantile"), "no summary for unused operations");
        assert_eq!(text.matches("{code=\"unknown\"}").count(), 1, "unknown codes are merged");
    }

    #[test]
    fn label_values_are_escaped_and_an_empty_window_is_nan() {
        let text = snapshot().to_prometheus();
        let name = r#"op="we\"ird\\job\nname""#;
        assert!(text.contains(&format!("harpocrates_operations_total{{{name}}} 1\n")), "{text}");
        assert!(
            text.contains(&format!(
                "harpocrates_operation_latency_seconds{{{name},quantile=\"0.9\"}} NaN\n"
            )),
            "{text}"
        );
        assert!(text.lines().all(|l| !l.is_empty()), "no raw newline inside a line");
    }

    #[test]
    fn every_error_code_has_its_name() {
        let names: Vec<_> = ERROR_CODES.iter().map(|c| c.name()).collect();
        assert!(names.iter().all(|n| *n != "unknown"));
        let unique: std::collections::HashSet<_> = names.iter().collect();
        assert_eq!(unique.len(), ERROR_CODES.len());
    }
}
