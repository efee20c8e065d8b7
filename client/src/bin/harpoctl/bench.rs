//! `harpoctl bench`: a load generator in the spirit of `redis-benchmark`. It drives one
//! operation at a time from N connections with T calls in flight on each, for a count or
//! a duration, and reports throughput and client-side latency percentiles per call.

mod load;
mod ops;
mod report;

use std::io::IsTerminal;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::Args;
use harpocrates_client::{Client, ClientOptions, Error};
use harpocrates_protocol::{MAX_BATCH_LEN, MAX_FRAME_CEILING, MAX_RANDOM_LEN};

use crate::Failure;
use crate::output::Out;
pub use ops::BenchOp;

/// The key and KEK `bench` uses unless told otherwise.
const DEFAULT_NAME: &str = "harpoctl-bench";

/// Exit code after Ctrl-C, as shells report a SIGINT death.
const EXIT_INTERRUPTED: u8 = 130;

/// `bench` options.
#[derive(Debug, Args)]
#[command(after_help = "\
Operations run one after another, each with the full -n or -d. Latency is per call as \
the client sees it (with --batch, per batch). Errors are counted and the first message of \
each kind shown; bench exits 1 if any operation failed, 130 after Ctrl-C. A key or KEK \
that bench creates is named on stderr; a key it created is destroyed at the end, a KEK \
stays (KEKs cannot be destroyed).")]
pub struct BenchArgs {
    /// Operations, repeatable or comma-separated.
    #[arg(long = "op", value_enum, value_delimiter = ',', default_value = "ping")]
    pub ops: Vec<BenchOp>,
    /// Payload bytes (random: bytes asked for), e.g. 64, 4k, 4KiB, 1m (k and m are
    /// powers of 1024).
    #[arg(long, value_name = "BYTES", default_value = "32", value_parser = parse_size)]
    pub size: usize,
    /// HSM key of encrypt and decrypt; created if missing (and then destroyed at the end).
    #[arg(long, value_name = "NAME", default_value = DEFAULT_NAME)]
    pub key: String,
    /// KEK of envelope, envelope-decrypt and derive; created if missing (and kept).
    #[arg(long, value_name = "NAME", default_value = DEFAULT_NAME)]
    pub kek: String,
    /// Separate connections to the daemon.
    #[arg(short = 'c', long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub connections: u32,
    /// Calls in flight on each connection.
    #[arg(short = 't', long, value_name = "T", default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub concurrency: u32,
    /// Operations per explicit batch call; 1: single calls, which the client batches by
    /// itself when they overlap.
    #[arg(long, value_name = "B", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=MAX_BATCH_LEN as i64))]
    pub batch: u32,
    /// Total operations per op (instead of --duration).
    #[arg(short = 'n', long, value_name = "N", conflicts_with = "duration",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub requests: Option<u64>,
    /// How long to run each op, e.g. 10s, 1m (a bare number is seconds).
    #[arg(short = 'd', long, value_name = "DURATION", default_value = "5s",
          value_parser = parse_duration)]
    pub duration: Duration,
    /// Load before each op's measurement, not counted.
    #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = parse_duration)]
    pub warmup: Duration,
}

/// Parses `--size`: bytes, with an optional binary suffix (`k`, `KiB`, `m`, `MiB`, any
/// case). `kb`/`mb` are refused rather than guessed at.
pub fn parse_size(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let digits = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let number: u64 =
        number.parse().map_err(|_| format!("'{text}' is not a size (write e.g. 64, 4k, 1MiB)"))?;
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "ki" | "kib" => 1 << 10,
        "m" | "mi" | "mib" => 1 << 20,
        other => {
            return Err(format!(
                "unknown size unit '{other}' (write e.g. 64, 4k or 4KiB, 1m or 1MiB: powers of 1024)"
            ));
        }
    };
    match number.checked_mul(scale) {
        Some(bytes) if bytes <= u64::from(MAX_FRAME_CEILING) => Ok(bytes as usize),
        _ => Err(format!("{text} is more than any frame can carry (64 MiB)")),
    }
}

/// Parses a duration: humantime (`10s`, `1m30s`, `500ms`) or a bare number of seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    match text.parse::<u64>() {
        Ok(secs) => Ok(Duration::from_secs(secs)),
        Err(_) => {
            humantime::parse_duration(text).map_err(|e| format!("{e} (write e.g. 10s, 500ms, 1m)"))
        }
    }
}

/// What the ops share: the first connection, the payload, and the key and KEK, created
/// on first need.
pub struct Fixture<'a> {
    client: &'a Client,
    payload: Arc<[u8]>,
    key_name: Arc<str>,
    kek_name: Arc<str>,
    /// Whether the key is known to exist (found or created).
    key_ready: bool,
    /// Whether bench created the key, and so destroys it at the end.
    key_created: bool,
    kek_ready: bool,
    quiet: bool,
}

impl Fixture<'_> {
    /// The key, created (256-bit AES) if it does not exist.
    async fn key(&mut self) -> Result<Arc<str>, Error> {
        if !self.key_ready {
            let name = &*self.key_name;
            // Listing is a `use` operation: a caller allowed only to use an existing key
            // can still benchmark it.
            if !self.client.list_keys().await?.iter().any(|k| k.handle.as_str() == name) {
                match self.client.generate_key(name, 256).await {
                    Ok(_) => {
                        self.key_created = true;
                        self.note(&format!("created key '{name}' (destroyed when bench ends)"));
                    }
                    // Someone else created it meanwhile: theirs, so not ours to destroy.
                    Err(Error::KeyExists(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            self.key_ready = true;
        }
        Ok(self.key_name.clone())
    }

    /// The KEK, created if it does not exist. KEKs cannot be destroyed, so it stays.
    async fn kek(&mut self) -> Result<Arc<str>, Error> {
        if !self.kek_ready {
            let name = &*self.kek_name;
            if !self.client.list_keks().await?.iter().any(|k| k.name == name) {
                match self.client.generate_kek(name).await {
                    Ok(_) => self.note(&format!("created KEK '{name}' (KEKs are kept)")),
                    Err(Error::KeyExists(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            self.kek_ready = true;
        }
        Ok(self.kek_name.clone())
    }

    fn note(&self, message: &str) {
        if !self.quiet {
            eprintln!("harpoctl bench: {message}");
        }
    }

    /// Destroys the key if bench created it; a failure is reported, not fatal.
    async fn cleanup(&self, out: Out) {
        if self.key_created
            && let Err(e) = self.client.destroy_key(&self.key_name).await
        {
            out.error(
                crate::error_name(&e),
                &format!("could not destroy the key '{}' bench created: {e}", self.key_name),
            );
        }
    }
}

/// Runs `harpoctl bench`.
pub async fn run(
    args: BenchArgs,
    socket: &Path,
    options: ClientOptions,
    out: Out,
) -> Result<(), Failure> {
    if args.ops.contains(&BenchOp::Random) && args.size > MAX_RANDOM_LEN as usize {
        return Err(Failure::Usage(format!(
            "random: --size is at most {} KiB",
            MAX_RANDOM_LEN / 1024
        )));
    }
    if args.requests.is_none() && args.duration.is_zero() {
        return Err(Failure::Usage("--duration must be more than 0".into()));
    }
    // Each its own connection: clones of one Client would share one.
    let mut clients = Vec::with_capacity(args.connections as usize);
    for _ in 0..args.connections {
        clients.push(Client::connect_with(socket, options.clone()).await?);
    }
    let mut fixture = Fixture {
        client: &clients[0],
        payload: vec![0x5a; args.size].into(),
        key_name: args.key.as_str().into(),
        kek_name: args.kek.as_str().into(),
        key_ready: false,
        key_created: false,
        kek_ready: false,
        quiet: out.json,
    };
    // Watched from before any key is created, so Ctrl-C still leads to the cleanup.
    let stop = Arc::new(AtomicBool::new(false));
    let signals = tokio::spawn(watch_interrupt(stop.clone()));
    let result = measure(&args, &clients, &mut fixture, &stop, out).await;
    fixture.cleanup(out).await;
    signals.abort();
    result
}

/// Prepares every op first (so setup failures come before any load), then runs them in
/// order, printing each result as it is ready.
async fn measure(
    args: &BenchArgs,
    clients: &[Client],
    fixture: &mut Fixture<'_>,
    stop: &Arc<AtomicBool>,
    out: Out,
) -> Result<(), Failure> {
    let mut prepared = Vec::with_capacity(args.ops.len());
    for &op in &args.ops {
        let p = ops::prepare(op, fixture).await?;
        if args.batch > 1 && p.request.is_none() {
            return Err(Failure::Usage(format!("{} cannot be batched: drop --batch", op.name())));
        }
        prepared.push((op, p));
    }
    let show_progress = !out.json && std::io::stderr().is_terminal();
    let shape = load::Shape { concurrency: args.concurrency as usize, batch: args.batch as u64 };
    let limit = match args.requests {
        Some(n) => load::Limit::Requests(n),
        None => load::Limit::Duration(args.duration),
    };
    let mut table = report::Table::new(out);
    let mut any_errors = false;
    for (op, p) in prepared {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let name = op.name();
        if !args.warmup.is_zero() {
            let bar = load::progress(show_progress, &format!("{name} (warmup)"));
            let warmup = load::Limit::Duration(args.warmup);
            load::run(clients, &p, shape, warmup, stop, bar).await;
        }
        let bar = load::progress(show_progress, &name);
        let outcome = load::run(clients, &p, shape, limit, stop, bar).await;
        any_errors |= outcome.errors() > 0;
        table.row(&report::Row {
            op: name,
            size: p.sized.then_some(args.size),
            connections: clients.len(),
            concurrency: shape.concurrency,
            batch: shape.batch,
            outcome,
        });
    }
    table.finish();
    if stop.load(Ordering::Relaxed) {
        Err(Failure::Exit(EXIT_INTERRUPTED))
    } else if any_errors {
        Err(Failure::Exit(1))
    } else {
        Ok(())
    }
}

/// The first Ctrl-C stops the load gently (results so far are printed and a key bench
/// created is destroyed); a second one exits at once.
async fn watch_interrupt(stop: Arc<AtomicBool>) {
    if tokio::signal::ctrl_c().await.is_err() {
        return;
    }
    stop.store(true, Ordering::Relaxed);
    if tokio::signal::ctrl_c().await.is_ok() {
        std::process::exit(i32::from(EXIT_INTERRUPTED));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_binary_suffixes() {
        assert_eq!(parse_size("64"), Ok(64));
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("4k"), Ok(4096));
        assert_eq!(parse_size("4K"), Ok(4096));
        assert_eq!(parse_size("4KiB"), Ok(4096));
        assert_eq!(parse_size(" 4 kib "), Ok(4096));
        assert_eq!(parse_size("1m"), Ok(1 << 20));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("16b"), Ok(16));
        assert_eq!(parse_size("64m"), Ok(64 << 20), "the frame ceiling itself");
        for bad in
            ["", "k", "4kb", "4MB", "1g", "-1", "1.5k", "4 k b", "65m", "99999999999999999999"]
        {
            assert!(parse_size(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn bench_options_parse() {
        use clap::Parser;
        let cli = crate::cli::Cli::try_parse_from([
            "harpoctl",
            "--json",
            "bench",
            "--op",
            "ping,encrypt",
            "--op",
            "envelope-decrypt",
            "--size",
            "4k",
            "-c",
            "2",
            "-t",
            "16",
            "-n",
            "2000",
            "--batch",
            "32",
        ])
        .expect("parse");
        let crate::cli::Command::Bench(b) = cli.command else { panic!("not bench") };
        assert_eq!(b.ops, [BenchOp::Ping, BenchOp::Encrypt, BenchOp::EnvelopeDecrypt]);
        assert_eq!((b.size, b.connections, b.concurrency, b.batch), (4096, 2, 16, 32));
        assert_eq!(b.requests, Some(2000));
        let cli = crate::cli::Cli::try_parse_from(["harpoctl", "bench"]).expect("defaults");
        let crate::cli::Command::Bench(b) = cli.command else { panic!("not bench") };
        assert_eq!(b.ops, [BenchOp::Ping]);
        assert_eq!((b.size, b.connections, b.concurrency, b.batch), (32, 1, 64, 1));
        assert_eq!(
            (b.requests, b.duration, b.warmup),
            (None, Duration::from_secs(5), Duration::ZERO)
        );
        assert_eq!((b.key.as_str(), b.kek.as_str()), (DEFAULT_NAME, DEFAULT_NAME));
        for bad in [
            &["harpoctl", "bench", "-n", "5", "-d", "1s"][..],
            &["harpoctl", "bench", "--op", "nope"],
            &["harpoctl", "bench", "-c", "0"],
            &["harpoctl", "bench", "--batch", "5000"],
        ] {
            assert!(crate::cli::Cli::try_parse_from(bad).is_err(), "{bad:?}");
        }
    }
}
