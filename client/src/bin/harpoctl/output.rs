//! How harpoctl prints: aligned text for people, one JSON document for scripts.

use std::io::Write;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use harpocrates_protocol::{HealthStatus, KeyInfo, LatencySummary, MetricsSnapshot, ReloadReport};
use serde_json::{Value, json};

/// Output mode.
#[derive(Debug, Clone, Copy)]
pub struct Out {
    /// JSON instead of text.
    pub json: bool,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn key_json(k: &KeyInfo) -> Value {
    let a = &k.attributes;
    json!({
        "label": k.handle.as_str(),
        "algorithm": k.algorithm.to_string(),
        "size_bits": a.size_bits,
        "id": hex(&k.id),
        "extractable": a.extractable,
        "sensitive": a.sensitive,
        "encrypt": a.encrypt,
        "decrypt": a.decrypt,
        "wrap": a.wrap,
        "unwrap": a.unwrap,
    })
}

fn usage(k: &KeyInfo) -> String {
    let a = &k.attributes;
    let flags = [
        (a.encrypt, "encrypt"),
        (a.decrypt, "decrypt"),
        (a.wrap, "wrap"),
        (a.unwrap, "unwrap"),
        (a.extractable, "extractable"),
        (a.sensitive, "sensitive"),
    ];
    flags.iter().filter(|(on, _)| *on).map(|(_, n)| *n).collect::<Vec<_>>().join(",")
}

fn latency_json(l: &LatencySummary) -> Value {
    json!({
        "sum_ns": l.sum_ns, "window_count": l.window_count, "p50_ns": l.p50_ns,
        "p90_ns": l.p90_ns, "p99_ns": l.p99_ns, "max_ns": l.max_ns,
    })
}

/// `metrics --json`: every field of the snapshot; error codes by name.
fn metrics_json(m: &MetricsSnapshot) -> Value {
    let per_op: Vec<Value> = m
        .per_op
        .iter()
        .map(|o| {
            json!({
                "op": o.op, "count": o.count, "errors": o.errors,
                "avg_latency_us": o.avg_latency_us, "latency": latency_json(&o.latency),
            })
        })
        .collect();
    let mut codes = serde_json::Map::new();
    for e in &m.errors_by_code {
        let n = codes.get(e.code.name()).and_then(Value::as_u64).unwrap_or(0);
        codes.insert(e.code.name().to_owned(), json!(n + e.count));
    }
    let p = &m.pool;
    json!({
        "uptime_secs": m.uptime_secs, "ops_total": m.ops_total, "errors_total": m.errors_total,
        "ops_per_sec": m.ops_per_sec, "avg_latency_us": m.avg_latency_us,
        "error_rate": m.error_rate, "connections": m.connections, "per_op": per_op,
        "audit_records": m.audit_records, "audit_dropped": m.audit_dropped,
        "audit_failed": m.audit_failed,
        "errors_by_code": codes,
        "pool": {
            "sessions_busy": p.sessions_busy, "sessions_open": p.sessions_open,
            "sessions_max": p.sessions_max, "queue_depth": p.queue_depth,
            "queue_capacity": p.queue_capacity,
        },
        "connections_total": m.connections_total, "connections_refused": m.connections_refused,
        "dek_cache_hits": m.dek_cache_hits, "dek_cache_misses": m.dek_cache_misses,
        "reloads_ok": m.reloads_ok, "reloads_failed": m.reloads_failed,
        "backend_swaps": m.backend_swaps, "backend_generation": m.backend_generation,
    })
}

/// Nanoseconds as microseconds with one decimal.
fn us(ns: u64) -> String {
    format!("{:.1}", ns as f64 / 1000.0)
}

/// `metrics`: a summary, one row per operation, and the error codes that occurred.
fn metrics_table(m: &MetricsSnapshot) -> String {
    use std::fmt::Write as _;
    let mut t = String::new();
    let p = &m.pool;
    let lookups = m.dek_cache_hits + m.dek_cache_misses;
    let hit_rate =
        if lookups == 0 { 0.0 } else { m.dek_cache_hits as f64 * 100.0 / lookups as f64 };
    let swaps = if m.backend_swaps == 1 { "swap" } else { "swaps" };
    let _ = writeln!(
        t,
        "uptime {}, {} ops ({:.1}/s), {} errors ({:.2}%), mean {:.1} µs",
        humantime::format_duration(Duration::from_secs(m.uptime_secs)),
        m.ops_total,
        m.ops_per_sec,
        m.errors_total,
        m.error_rate * 100.0,
        m.avg_latency_us,
    );
    let _ = writeln!(
        t,
        "sessions:    {} busy, {} open, {} max; queue {} waiting of {}",
        p.sessions_busy, p.sessions_open, p.sessions_max, p.queue_depth, p.queue_capacity
    );
    let _ = writeln!(
        t,
        "connections: {} open, {} accepted, {} refused (busy)",
        m.connections, m.connections_total, m.connections_refused
    );
    let _ = writeln!(
        t,
        "data keys:   {} cache hits, {} misses ({hit_rate:.1}% hits)",
        m.dek_cache_hits, m.dek_cache_misses
    );
    let _ = writeln!(
        t,
        "reloads:     {} applied, {} refused; backend generation {} ({} {swaps})",
        m.reloads_ok, m.reloads_failed, m.backend_generation, m.backend_swaps
    );
    let _ = writeln!(
        t,
        "audit:       {} records, {} dropped (queue full), {} lost to write failures",
        m.audit_records, m.audit_dropped, m.audit_failed
    );
    let width = m.per_op.iter().map(|o| o.op.len()).max().unwrap_or(0).max("OPERATION".len());
    let _ = writeln!(
        t,
        "\n{:<width$} {:>12} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "OPERATION", "COUNT", "ERRORS", "MEAN µs", "P50 µs", "P90 µs", "P99 µs", "MAX µs"
    );
    for o in &m.per_op {
        let l = &o.latency;
        let [p50, p90, p99, max] = if l.window_count == 0 {
            ["-".to_owned(), "-".to_owned(), "-".to_owned(), "-".to_owned()]
        } else {
            [us(l.p50_ns), us(l.p90_ns), us(l.p99_ns), us(l.max_ns)]
        };
        let _ = writeln!(
            t,
            "{:<width$} {:>12} {:>8} {:>9.1} {p50:>9} {p90:>9} {p99:>9} {max:>9}",
            o.op, o.count, o.errors, o.avg_latency_us
        );
    }
    let _ = writeln!(t, "(percentiles over the last one to two minutes; - when idle)");
    let errors: Vec<_> = m.errors_by_code.iter().filter(|e| e.count > 0).collect();
    if errors.is_empty() {
        let _ = writeln!(t, "\nno errors");
    } else {
        let _ = writeln!(t, "\n{:<width$} {:>12}", "ERROR CODE", "COUNT");
        for e in errors {
            let _ = writeln!(t, "{:<width$} {:>12}", e.code.name(), e.count);
        }
    }
    t
}

impl Out {
    fn print_json(&self, v: &Value) {
        println!("{v}");
    }

    /// An error, on stderr.
    pub fn error(&self, code: &str, message: &str) {
        if self.json {
            eprintln!("{}", json!({ "error": { "code": code, "message": message } }));
        } else {
            eprintln!("harpoctl: {message}");
        }
    }

    /// `ping`.
    pub fn ping(&self, rtt: Duration) {
        if self.json {
            self.print_json(&json!({ "ok": true, "rtt_us": rtt.as_micros() as u64 }));
        } else {
            println!("pong ({:.0} µs)", rtt.as_secs_f64() * 1e6);
        }
    }

    /// `health`.
    pub fn health(&self, h: &HealthStatus) {
        if self.json {
            self.print_json(&json!({
                "state": format!("{:?}", h.state).to_lowercase(),
                "backend": h.backend,
                "token": { "label": h.token.label, "manufacturer": h.token.manufacturer,
                           "model": h.token.model, "serial": h.token.serial },
                "token_reachable": h.token_reachable,
                "active_sessions": h.active_sessions,
                "max_sessions": h.max_sessions,
                "key_count": h.key_count,
                "uptime_secs": h.uptime_secs,
                "generation": h.generation,
                "generation_since": h.generation_since,
            }));
        } else {
            println!("state:     {:?}", h.state);
            println!("backend:   {}", h.backend);
            println!(
                "token:     {} ({} {}, serial {})",
                h.token.label, h.token.manufacturer, h.token.model, h.token.serial
            );
            println!("reachable: {}", h.token_reachable);
            println!("sessions:  {}/{}", h.active_sessions, h.max_sessions);
            println!("keys:      {}", h.key_count);
            println!("uptime:    {}s", h.uptime_secs);
            println!(
                "backend generation: {} (since {})",
                h.generation,
                humantime::format_rfc3339_seconds(
                    std::time::UNIX_EPOCH + std::time::Duration::from_secs(h.generation_since)
                )
            );
        }
    }

    /// `admin reload`.
    pub fn reloaded(&self, r: &ReloadReport) {
        if self.json {
            self.print_json(&json!({
                "generation": r.generation,
                "swapped": r.swapped,
                "applied": r.applied,
                "need_restart": r.need_restart,
            }));
        } else {
            let swap =
                if r.swapped { "a new backend generation took over" } else { "same backend" };
            println!("reloaded: generation {} ({swap})", r.generation);
            println!("applied in place: {}", r.applied.join(", "));
            if !r.need_restart.is_empty() {
                println!("changed, applies at the next restart: {}", r.need_restart.join(", "));
            }
        }
    }

    /// `metrics`: a table, JSON, or with `prometheus` the Prometheus text format.
    pub fn metrics(&self, m: &MetricsSnapshot, prometheus: bool) {
        if prometheus {
            print!("{}", m.to_prometheus());
        } else if self.json {
            self.print_json(&metrics_json(m));
        } else {
            print!("{}", metrics_table(m));
        }
    }

    /// `random`.
    pub fn random(&self, bytes: &[u8], raw: bool, base64: bool) -> std::io::Result<()> {
        if self.json {
            self.print_json(&json!({ "hex": hex(bytes) }));
        } else if raw {
            std::io::stdout().lock().write_all(bytes)?;
        } else if base64 {
            println!("{}", B64.encode(bytes));
        } else {
            println!("{}", hex(bytes));
        }
        Ok(())
    }

    /// `keys generate`.
    pub fn key_generated(&self, k: &KeyInfo) {
        if self.json {
            self.print_json(&key_json(k));
        } else {
            println!(
                "created {} ({}-bit {}, {})",
                k.handle,
                k.attributes.size_bits,
                k.algorithm,
                usage(k)
            );
        }
    }

    /// `keys list`.
    pub fn keys(&self, keys: &[KeyInfo]) {
        if self.json {
            self.print_json(&Value::Array(keys.iter().map(key_json).collect()));
            return;
        }
        if keys.is_empty() {
            println!("no keys");
            return;
        }
        let width = keys.iter().map(|k| k.handle.as_str().len()).max().unwrap_or(0).max(5);
        println!("{:<width$}  {:<6} {:>5}  {:<32}  USAGE", "LABEL", "ALG", "BITS", "ID");
        for k in keys {
            println!(
                "{:<width$}  {:<6} {:>5}  {:<32}  {}",
                k.handle.as_str(),
                k.algorithm.to_string(),
                k.attributes.size_bits,
                hex(&k.id),
                usage(k)
            );
        }
    }

    /// `keys destroy`.
    pub fn destroyed(&self, label: &str) {
        if self.json {
            self.print_json(&json!({ "destroyed": label }));
        } else {
            println!("destroyed {label}");
        }
    }

    /// `encrypt`: raw bytes unless base64 or JSON was asked for.
    pub fn ciphertext(&self, ct: &[u8], base64: bool) -> std::io::Result<()> {
        if self.json {
            self.print_json(&json!({ "ciphertext_base64": B64.encode(ct) }));
        } else if base64 {
            println!("{}", B64.encode(ct));
        } else {
            std::io::stdout().lock().write_all(ct)?;
        }
        Ok(())
    }

    /// `keys backup`: raw bytes unless base64 or JSON was asked for.
    pub fn backup(&self, blob: &[u8], base64: bool) -> std::io::Result<()> {
        if self.json {
            self.print_json(&json!({ "backup_base64": B64.encode(blob) }));
            Ok(())
        } else {
            self.ciphertext(blob, base64)
        }
    }

    /// `decrypt`: the plaintext exactly (base64 inside JSON).
    pub fn plaintext(&self, pt: &[u8]) -> std::io::Result<()> {
        if self.json {
            self.print_json(&json!({ "plaintext_base64": B64.encode(pt) }));
        } else {
            std::io::stdout().lock().write_all(pt)?;
        }
        Ok(())
    }
}
