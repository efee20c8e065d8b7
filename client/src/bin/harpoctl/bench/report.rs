//! Results: an aligned table for people, one JSON object per op (one per line) for scripts.

use serde_json::{Value, json};

use super::load::Outcome;
use crate::output::Out;

/// One op's result and the load that produced it.
pub struct Row {
    /// The `--op` name.
    pub op: String,
    /// Payload bytes, for ops that use `--size`.
    pub size: Option<usize>,
    /// Connections.
    pub connections: usize,
    /// Calls in flight per connection.
    pub concurrency: usize,
    /// Operations per call.
    pub batch: u64,
    /// What was measured.
    pub outcome: Outcome,
}

/// Latency percentiles of a run, in µs.
struct Percentiles {
    p50: u64,
    p90: u64,
    p99: u64,
    max: u64,
    mean: f64,
}

impl Row {
    fn percentiles(&self) -> Percentiles {
        let h = &self.outcome.latency;
        Percentiles {
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            max: h.max(),
            mean: h.mean(),
        }
    }

    /// The row as a JSON object.
    pub fn json(&self) -> Value {
        let o = &self.outcome;
        let p = self.percentiles();
        let kinds: serde_json::Map<String, Value> = o
            .errors
            .iter()
            .map(|(name, k)| ((*name).to_owned(), json!({ "count": k.count, "first": k.first })))
            .collect();
        json!({
            "op": self.op,
            "size": self.size,
            "connections": self.connections,
            "concurrency": self.concurrency,
            "batch": self.batch,
            "operations": o.operations,
            "calls": o.calls,
            "errors": o.errors(),
            "error_kinds": kinds,
            "elapsed_secs": o.elapsed.as_secs_f64(),
            "ops_per_sec": o.ops_per_sec(),
            "p50_us": p.p50,
            "p90_us": p.p90,
            "p99_us": p.p99,
            "max_us": p.max,
            "mean_us": p.mean,
            "interrupted": o.interrupted,
        })
    }
}

/// Prints rows as they come; error details and notes after the table.
pub struct Table {
    out: Out,
    header_printed: bool,
    notes: Vec<String>,
}

const HEADER: [&str; 12] = [
    "OP",
    "SIZE",
    "CONN",
    "CONC",
    "BATCH",
    "OPERATIONS",
    "ERRORS",
    "OPS/S",
    "P50",
    "P90",
    "P99",
    "MAX",
];

/// Prints one line of the table; `cells` are in [`HEADER`] order.
fn line(cells: &[String; 12]) {
    let [op, size, conn, conc, batch, ops, errors, rate, p50, p90, p99, max] = cells;
    println!(
        "{op:<16} {size:>6} {conn:>4} {conc:>5} {batch:>5} {ops:>10} {errors:>6} {rate:>10} \
         {p50:>8} {p90:>8} {p99:>8} {max:>8}"
    );
}

impl Table {
    /// An empty table.
    pub fn new(out: Out) -> Self {
        Self { out, header_printed: false, notes: Vec::new() }
    }

    /// Prints one op's result.
    pub fn row(&mut self, row: &Row) {
        if self.out.json {
            println!("{}", row.json());
            return;
        }
        if !self.header_printed {
            line(&HEADER.map(str::to_owned));
            self.header_printed = true;
        }
        let o = &row.outcome;
        let p = row.percentiles();
        line(&[
            row.op.clone(),
            row.size.map_or_else(|| "-".to_owned(), size),
            row.connections.to_string(),
            row.concurrency.to_string(),
            row.batch.to_string(),
            o.operations.to_string(),
            o.errors().to_string(),
            format!("{:.1}", o.ops_per_sec()),
            micros(p.p50),
            micros(p.p90),
            micros(p.p99),
            micros(p.max),
        ]);
        for (name, kind) in &o.errors {
            self.notes.push(format!(
                "{}: {} operations failed with {name}, first: {}",
                row.op, kind.count, kind.first
            ));
        }
        if o.interrupted {
            self.notes.push(format!(
                "{}: interrupted after {:.1}s; later ops did not run",
                row.op,
                o.elapsed.as_secs_f64()
            ));
        }
    }

    /// Prints the notes under the table.
    pub fn finish(self) {
        if !self.notes.is_empty() {
            println!();
        }
        for note in self.notes {
            println!("{note}");
        }
    }
}

/// A payload size, in the largest binary unit it is a whole number of.
fn size(bytes: usize) -> String {
    match bytes {
        0 => "0".to_owned(),
        b if b % (1 << 20) == 0 => format!("{}MiB", b >> 20),
        b if b % (1 << 10) == 0 => format!("{}KiB", b >> 10),
        b => b.to_string(),
    }
}

/// A latency: µs below a millisecond, then ms, then s.
fn micros(us: u64) -> String {
    match us {
        0..1_000 => format!("{us}µs"),
        1_000..1_000_000 => format!("{:.2}ms", us as f64 / 1e3),
        _ => format!("{:.2}s", us as f64 / 1e6),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_latencies_read_well() {
        assert_eq!(size(64), "64");
        assert_eq!(size(4096), "4KiB");
        assert_eq!(size(1 << 20), "1MiB");
        assert_eq!(size(1500), "1500");
        assert_eq!(micros(87), "87µs");
        assert_eq!(micros(1_250), "1.25ms");
        assert_eq!(micros(2_500_000), "2.50s");
    }
}
