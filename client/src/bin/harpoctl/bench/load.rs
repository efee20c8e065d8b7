//! The load runner: `concurrency` tasks per connection, each making one call after
//! another until the count or the time is used up, timing every call.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use harpocrates_client::{Client, Error};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};

use super::ops::Prepared;

/// Longest latency the histogram resolves (one hour, in µs); longer calls count as this.
const MAX_LATENCY_US: u64 = 3_600_000_000;

/// How often the progress line is redrawn.
const PROGRESS_EVERY: Duration = Duration::from_millis(100);

/// How the load is laid out on each connection.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// Calls in flight on each connection.
    pub concurrency: usize,
    /// Operations per call: 1 is a single call, more an explicit batch.
    pub batch: u64,
}

/// When a run ends.
#[derive(Debug, Clone, Copy)]
pub enum Limit {
    /// After this many operations in all.
    Requests(u64),
    /// When this much time has passed (calls in flight then still finish and count).
    Duration(Duration),
}

/// Errors of one kind: how many, and the first message.
#[derive(Debug, Clone)]
pub struct ErrorKind {
    /// Operations that failed this way.
    pub count: u64,
    /// The first one's message.
    pub first: String,
}

/// What one run measured.
pub struct Outcome {
    /// Operations carried out, failed ones included.
    pub operations: u64,
    /// Calls made (operations / batch, rounded up).
    pub calls: u64,
    /// Failed operations by error name (as `--json` errors name them).
    pub errors: BTreeMap<&'static str, ErrorKind>,
    /// Latency of each call in µs.
    pub latency: Histogram<u64>,
    /// From the first call's start to the last call's end.
    pub elapsed: Duration,
    /// Whether Ctrl-C cut the run short.
    pub interrupted: bool,
}

impl Outcome {
    /// Failed operations, all kinds.
    pub fn errors(&self) -> u64 {
        self.errors.values().map(|k| k.count).sum()
    }

    /// Operations per second of wall time.
    pub fn ops_per_sec(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 { self.operations as f64 / secs } else { 0.0 }
    }
}

/// State every worker of one run shares.
struct Shared {
    /// Operations not yet handed out (`Limit::Requests`).
    remaining: Option<AtomicU64>,
    deadline: Option<Instant>,
    stop: Arc<AtomicBool>,
    /// Counters for the progress line; the histogram keeps the real results.
    operations: AtomicU64,
    failed: AtomicU64,
    calls: AtomicU64,
    // A lock per record costs nanoseconds against calls of tens of µs, and one histogram
    // instead of one per task keeps memory flat at high concurrency.
    latency: Mutex<Histogram<u64>>,
    errors: Mutex<BTreeMap<&'static str, ErrorKind>>,
}

impl Shared {
    /// Claims the next call's operations (up to `batch`), or `None` when the run is over.
    fn take(&self, batch: u64) -> Option<u64> {
        if self.stop.load(Ordering::Relaxed) || self.deadline.is_some_and(|d| Instant::now() >= d) {
            return None;
        }
        match &self.remaining {
            None => Some(batch),
            Some(left) => left
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |r| {
                    (r > 0).then(|| r - r.min(batch))
                })
                .ok()
                .map(|r| r.min(batch)),
        }
    }

    fn record_call(&self, started: Instant, operations: u64) {
        let us = (started.elapsed().as_micros() as u64).clamp(1, MAX_LATENCY_US);
        self.latency.lock().unwrap_or_else(PoisonError::into_inner).saturating_record(us);
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.operations.fetch_add(operations, Ordering::Relaxed);
    }

    fn record_error(&self, e: &Error, count: u64) {
        self.failed.fetch_add(count, Ordering::Relaxed);
        let mut errors = self.errors.lock().unwrap_or_else(PoisonError::into_inner);
        errors
            .entry(crate::error_name(e))
            .or_insert_with(|| ErrorKind { count: 0, first: e.to_string() })
            .count += count;
    }
}

/// A progress line on stderr, or a hidden one.
pub fn progress(show: bool, label: &str) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{spinner} {prefix:<24} [{bar:30}] {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_prefix(label.to_owned());
    bar
}

/// Runs one op's load on every connection and returns what it measured.
pub async fn run(
    clients: &[Client],
    op: &Prepared,
    shape: Shape,
    limit: Limit,
    stop: &Arc<AtomicBool>,
    bar: ProgressBar,
) -> Outcome {
    let started = Instant::now();
    let (remaining, deadline) = match limit {
        Limit::Requests(n) => (Some(AtomicU64::new(n)), None),
        Limit::Duration(d) => (None, Some(started + d)),
    };
    // The bar counts operations, or milliseconds for a timed run.
    bar.set_length(match limit {
        Limit::Requests(n) => n,
        Limit::Duration(d) => d.as_millis() as u64,
    });
    let shared = Arc::new(Shared {
        remaining,
        deadline,
        stop: stop.clone(),
        operations: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        calls: AtomicU64::new(0),
        latency: Mutex::new(
            Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid histogram bounds"),
        ),
        errors: Mutex::new(BTreeMap::new()),
    });
    let ticker = tokio::spawn(draw(shared.clone(), bar.clone(), limit, started));
    let mut workers = Vec::with_capacity(clients.len() * shape.concurrency);
    for client in clients {
        for _ in 0..shape.concurrency {
            workers.push(tokio::spawn(worker(
                client.clone(),
                op.clone(),
                shape.batch,
                shared.clone(),
            )));
        }
    }
    for w in workers {
        if let Err(e) = w.await
            && e.is_panic()
        {
            std::panic::resume_unwind(e.into_panic());
        }
    }
    let elapsed = started.elapsed();
    ticker.abort();
    bar.finish_and_clear();
    let latency = std::mem::replace(
        &mut *shared.latency.lock().unwrap_or_else(PoisonError::into_inner),
        Histogram::new(1).expect("valid histogram"),
    );
    let errors = std::mem::take(&mut *shared.errors.lock().unwrap_or_else(PoisonError::into_inner));
    Outcome {
        operations: shared.operations.load(Ordering::Relaxed),
        calls: shared.calls.load(Ordering::Relaxed),
        errors,
        latency,
        elapsed,
        interrupted: stop.load(Ordering::Relaxed),
    }
}

/// One task's loop: claim operations, make the call, time it, count the outcome.
async fn worker(client: Client, op: Prepared, batch: u64, shared: Arc<Shared>) {
    while let Some(n) = shared.take(batch) {
        let started = Instant::now();
        match (&op.request, batch) {
            (Some(request), 2..) => {
                let mut builder = client.batch();
                for _ in 0..n {
                    builder = builder.push(request.clone());
                }
                let result = builder.send().await;
                shared.record_call(started, n);
                match result {
                    // The whole batch failed: every operation in it did.
                    Err(e) => shared.record_error(&e, n),
                    Ok(answers) => {
                        for e in answers.iter().filter_map(|a| a.as_ref().err()) {
                            shared.record_error(e, 1);
                        }
                    }
                }
            }
            _ => {
                let result = (op.call)(client.clone()).await;
                shared.record_call(started, 1);
                if let Err(e) = result {
                    shared.record_error(&e, 1);
                }
            }
        }
    }
}

/// Redraws the progress line until aborted.
async fn draw(shared: Arc<Shared>, bar: ProgressBar, limit: Limit, started: Instant) {
    let mut every = tokio::time::interval(PROGRESS_EVERY);
    loop {
        every.tick().await;
        let operations = shared.operations.load(Ordering::Relaxed);
        let failed = shared.failed.load(Ordering::Relaxed);
        let elapsed = started.elapsed();
        bar.set_position(match limit {
            Limit::Requests(_) => operations,
            Limit::Duration(_) => elapsed.as_millis() as u64,
        });
        let rate = operations as f64 / elapsed.as_secs_f64().max(1e-3);
        bar.set_message(format!("{operations} ops, {rate:.0} ops/s, {failed} errors"));
    }
}
