//! Graceful stop of the real `harpocratesd` on SoftHSM2 with 500 token keys.
//!
//! A SoftHSM2 daemon holding hundreds of keys once ended with SIGSEGV on SIGTERM in about
//! 3 of 10 stops (FIELD-NOTES, "SoftHSM2 and process exit"): a session thread was still
//! inside the module while the exit handlers ran its static destructors. This test stops
//! such a daemon many times, idle and under load from concurrent clients, and requires:
//!
//! * exit status 0 every time (not a signal, not a non-zero code), within 20 s;
//! * the daemon served requests before every stop (checked answers, not just a start);
//! * under load, every call got a correct answer or, once SIGTERM was sent, a clean typed
//!   "going away" error (`Unavailable`, `ConnectionLost`, `Connect`) — never a wrong
//!   answer, another error, or a hang (every wait is bounded).
//!
//! All stops run before the verdict, so a failure reports the failure rate and the exit
//! status and output tail of each failed stop.
//!
//! One test function only: the SoftHSM2 token is shared by every daemon it starts.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;

use common::{Daemon, PIN, SOFTHSM2_MODULE, SoftHsm, TOKEN_LABEL};
use harpocrates::client::{Client, Error};
use harpocrates::protocol::{KeyAttributes, Response};

/// Token keys, as in the field report that saw the crash.
const KEYS: usize = 500;
/// Keys created per batch, and batches in flight at once while creating them.
const CREATE_BATCH: usize = 50;
const CREATE_PARALLEL: usize = 5;
/// Stops of a daemon with no request in flight (the first one is the daemon that created
/// the keys).
const IDLE_STOPS: usize = 10;
/// Stops with `CLIENTS` clients calling in a loop.
const LOADED_STOPS: usize = 10;
const CLIENTS: usize = 12;
/// Keys the loaded clients use: every session actor looks each one up once (C_FindObjects
/// over 500 objects is slow on SoftHSM2), so a few keep the warm-up short.
const LOAD_KEYS: usize = 4;
/// Successful calls every client must have completed before SIGTERM is sent.
const MIN_CALLS_BEFORE_STOP: u64 = 20;
/// Bound on any one client call.
const CALL_LIMIT: Duration = Duration::from_secs(10);

fn key_name(i: usize) -> String {
    format!("stop-{i:03}")
}

/// A key the load uses, spread over the whole token.
fn load_key(i: usize) -> String {
    key_name((i % LOAD_KEYS) * (KEYS / LOAD_KEYS) + 7)
}

/// Starts a daemon on the shared SoftHSM2 token (each in its own directory and socket, so
/// every stop has its own output).
fn start(hsm: &SoftHsm) -> Daemon {
    let section = format!("library_path = {SOFTHSM2_MODULE:?}\ntoken_label = {TOKEN_LABEL:?}\n");
    let conf = hsm.conf.to_str().expect("utf-8 path");
    Daemon::start_external(PIN, &section, "", &[("SOFTHSM2_CONF", conf)])
}

/// What one stop showed.
struct Stop {
    label: String,
    status: Option<ExitStatus>,
    elapsed: Duration,
    /// What went wrong besides the exit status: wrong answers, unexpected errors, hangs.
    problems: Vec<String>,
    /// Client calls that were in flight when SIGTERM was sent.
    in_flight: u64,
    output_tail: String,
}

impl Stop {
    fn ok(&self) -> bool {
        self.status.is_some_and(|s| s.success()) && self.problems.is_empty()
    }

    fn describe(&self) -> String {
        let status = match self.status {
            None => "no exit within 20 s".to_owned(),
            Some(s) => match (s.code(), s.signal()) {
                (Some(c), _) => format!("exit code {c}"),
                (None, Some(sig)) => format!(
                    "killed by signal {sig}{}{}",
                    if sig == libc::SIGSEGV { " (SIGSEGV)" } else { "" },
                    if s.core_dumped() { ", core dumped" } else { "" }
                ),
                _ => format!("{s:?}"),
            },
        };
        format!(
            "{}: {status}, stop took {:?}; problems: {:?}\n--- output tail ---\n{}",
            self.label, self.elapsed, self.problems, self.output_tail
        )
    }
}

/// Sends SIGTERM and waits (bounded by the fixture: 20 s) for the exit.
async fn sigterm(d: Daemon) -> (Option<ExitStatus>, Duration, String) {
    let started = Instant::now();
    let (d, status) = match tokio::task::spawn_blocking(move || {
        let mut d = d;
        let status = d.signal_and_wait(libc::SIGTERM);
        (d, status)
    })
    .await
    {
        Ok((d, status)) => (Some(d), Some(status)),
        // The fixture panics (and kills the process) when the exit does not come in time.
        Err(_) => (None, None),
    };
    let elapsed = started.elapsed();
    // The pipes close with the process; give the drain threads a moment to catch up.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let tail = d.map(|d| tail(&d.output(), 25)).unwrap_or_default();
    (status, elapsed, tail)
}

/// The last `lines` lines of `text`, without terminal colour codes.
fn tail(text: &str, lines: usize) -> String {
    let mut plain = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(ch) = chars.next() {
        if ch == '\u{1b}' {
            // CSI: ESC [ parameters final-byte (a letter).
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            plain.push(ch);
        }
    }
    let all: Vec<&str> = plain.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Creates the token's keys through the daemon, in concurrent batches.
async fn create_keys(c: &Client) {
    let attrs = KeyAttributes::aes(128);
    let batches = (0..KEYS / CREATE_BATCH).map(|b| {
        let c = c.clone();
        async move {
            let mut batch = c.batch();
            for i in b * CREATE_BATCH..(b + 1) * CREATE_BATCH {
                batch = batch.generate_key(&key_name(i), attrs);
            }
            let answers = batch.send().await.expect("key creation batch");
            assert_eq!(answers.len(), CREATE_BATCH);
            for (i, a) in answers.iter().enumerate() {
                assert!(matches!(a, Ok(Response::KeyGenerated(_))), "key {i} of batch {b}: {a:?}");
            }
        }
    });
    let mut pending = futures::stream::iter(batches).buffer_unordered(CREATE_PARALLEL);
    while pending.next().await.is_some() {}
}

/// Proves a daemon serves the token: every key listed, round trips on several keys,
/// random, and the daemon's own counters.
async fn serve_some(d: &Daemon, round: usize) {
    let c = Client::connect(&d.socket).await.expect("connect");
    c.ping().await.expect("ping");
    let keys = c.list_keys().await.expect("list");
    assert_eq!(keys.len(), KEYS, "every key is on the token");
    for k in [0, round * 37 % KEYS, KEYS - 1] {
        let msg = format!("idle round {round} key {k}");
        let ct = c.encrypt(&key_name(k), msg.as_bytes(), Some(b"stop")).await.expect("encrypt");
        let pt = c.decrypt(&key_name(k), &ct, Some(b"stop")).await.expect("decrypt");
        assert_eq!(pt.expose(), msg.as_bytes());
    }
    assert_eq!(c.generate_random(32).await.expect("random").len(), 32);
    let m = c.metrics().await.expect("metrics");
    assert!(m.ops_total >= 6, "the daemon counted what it served: {}", m.ops_total);
    assert_eq!(m.errors_total, 0);
}

/// Per-client counts, shared with the controller so it knows when load is established.
#[derive(Default)]
struct Counts {
    ok_before: AtomicU64,
    ok_after: AtomicU64,
    going_away: AtomicU64,
    in_flight_at_signal: AtomicU64,
}

/// Errors a call may end with once SIGTERM is sent: the daemon is going away.
fn going_away(e: &Error) -> bool {
    matches!(e, Error::Unavailable(_) | Error::ConnectionLost(_) | Error::Connect { .. })
}

/// One client: encrypt/decrypt, random, list and ping in a loop, every answer checked,
/// until the daemon goes away (or the loop's own bounds: 200k calls, 60 s).
async fn client_loop(
    c: Client,
    t: usize,
    signalled: Arc<AtomicBool>,
    counts: Arc<Counts>,
) -> Vec<String> {
    let mut problems = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    for i in 0..200_000usize {
        if Instant::now() > deadline {
            problems.push(format!("client {t}: still running after 60 s"));
            break;
        }
        let before = signalled.load(Ordering::SeqCst);
        let key = load_key(t + i);
        let msg = format!("client {t} call {i}");
        let call = async {
            match i % 16 {
                // Listing 500 keys is the heaviest call: now and then.
                5 => {
                    let n = c.list_keys().await?.len();
                    Ok((n == KEYS).then_some(()).ok_or(format!("listed {n} keys")))
                }
                1 | 9 => {
                    let n = c.generate_random(32).await?.len();
                    Ok((n == 32).then_some(()).ok_or(format!("{n} random bytes")))
                }
                3 | 11 => c.ping().await.map(Ok),
                _ => {
                    let ct = c.encrypt(&key, msg.as_bytes(), Some(b"load")).await?;
                    let pt = c.decrypt(&key, &ct, Some(b"load")).await?;
                    Ok((pt.expose() == msg.as_bytes())
                        .then_some(())
                        .ok_or("decrypt gave another plaintext".to_owned()))
                }
            }
        };
        let result = tokio::time::timeout(CALL_LIMIT, call).await;
        let after = signalled.load(Ordering::SeqCst);
        if !before && after {
            counts.in_flight_at_signal.fetch_add(1, Ordering::SeqCst);
        }
        match result {
            Err(_) => {
                problems.push(format!("client {t} call {i}: no answer in {CALL_LIMIT:?}"));
                break;
            }
            Ok(Ok(Ok(()))) => {
                let n = if after { &counts.ok_after } else { &counts.ok_before };
                n.fetch_add(1, Ordering::SeqCst);
            }
            Ok(Ok(Err(wrong))) => {
                problems.push(format!("client {t} call {i}: wrong answer: {wrong}"));
                break;
            }
            Ok(Err(e)) if after && going_away(&e) => {
                counts.going_away.fetch_add(1, Ordering::SeqCst);
                break;
            }
            Ok(Err(e)) => {
                let when = if after { "after SIGTERM" } else { "before SIGTERM" };
                problems.push(format!("client {t} call {i}: {when}: {e:?}"));
                break;
            }
        }
    }
    problems
}

async fn loaded_stop(hsm: &SoftHsm, round: usize) -> Stop {
    let d = start(hsm);
    let signalled = Arc::new(AtomicBool::new(false));
    let counts: Vec<Arc<Counts>> = (0..CLIENTS).map(|_| Arc::default()).collect();
    let mut tasks = Vec::new();
    for (t, n) in counts.iter().enumerate() {
        // A client each: its own connection, as separate services would have.
        let c = Client::connect(&d.socket).await.expect("connect");
        tasks.push(tokio::spawn(client_loop(c, t, signalled.clone(), n.clone())));
    }
    let mut problems = Vec::new();
    // Load is established when every client has had its share of answers.
    let warm = Instant::now();
    while counts.iter().any(|n| n.ok_before.load(Ordering::SeqCst) < MIN_CALLS_BEFORE_STOP) {
        if warm.elapsed() > Duration::from_secs(30) || tasks.iter().any(|t| t.is_finished()) {
            problems.push(format!(
                "load never established: calls per client {:?}",
                counts.iter().map(|n| n.ok_before.load(Ordering::SeqCst)).collect::<Vec<_>>()
            ));
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    signalled.store(true, Ordering::SeqCst);
    let (status, elapsed, output_tail) = sigterm(d).await;
    for t in tasks {
        match tokio::time::timeout(Duration::from_secs(30), t).await {
            Ok(Ok(p)) => problems.extend(p),
            Ok(Err(e)) => problems.push(format!("client task failed: {e}")),
            Err(_) => problems.push("a client never finished".to_owned()),
        }
    }
    let sum = |f: fn(&Counts) -> &AtomicU64| {
        counts.iter().map(|n| f(n).load(Ordering::SeqCst)).sum::<u64>()
    };
    let (before, after) = (sum(|n| &n.ok_before), sum(|n| &n.ok_after));
    let (away, in_flight) = (sum(|n| &n.going_away), sum(|n| &n.in_flight_at_signal));
    let min_before =
        counts.iter().map(|n| n.ok_before.load(Ordering::SeqCst)).min().unwrap_or_default();
    if min_before < MIN_CALLS_BEFORE_STOP {
        problems.push(format!("a client had only {min_before} answers before the stop"));
    }
    Stop {
        label: format!(
            "loaded stop {round} ({CLIENTS} clients: {before} answers before SIGTERM, {after} \
             after, {in_flight} calls in flight at the signal, {away} going-away errors)"
        ),
        status,
        elapsed,
        problems,
        in_flight,
        output_tail,
    }
}

#[test]
fn sigterm_exits_cleanly_with_500_softhsm2_keys_idle_and_under_load() {
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let hsm = SoftHsm::init(&dir.path().join("softhsm"), TOKEN_LABEL);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut stops: Vec<Stop> = Vec::new();
    let mut in_flight_total = 0u64;

    rt.block_on(async {
        let creator = start(&hsm);
        let c = Client::connect(&creator.socket).await.expect("connect");
        let t = Instant::now();
        create_keys(&c).await;
        drop(c);
        eprintln!("created {KEYS} token keys in {:?}", t.elapsed());

        let mut creator = Some(creator);
        for round in 0..IDLE_STOPS {
            let d = creator.take().unwrap_or_else(|| start(&hsm));
            serve_some(&d, round).await;
            // Idle: nothing in flight, the client gone, the sessions quiet.
            tokio::time::sleep(Duration::from_millis(200)).await;
            let (status, elapsed, output_tail) = sigterm(d).await;
            stops.push(Stop {
                label: format!("idle stop {round}"),
                status,
                elapsed,
                problems: Vec::new(),
                in_flight: 0,
                output_tail,
            });
        }
        for round in 0..LOADED_STOPS {
            let s = loaded_stop(&hsm, round).await;
            in_flight_total += s.in_flight;
            stops.push(s);
        }
    });

    for s in &stops {
        eprintln!("{} -> {}", s.label, if s.ok() { "ok" } else { "FAILED" });
    }
    eprintln!("{} stops in {:?}", stops.len(), started.elapsed());
    let failed: Vec<&Stop> = stops.iter().filter(|s| !s.ok()).collect();
    assert!(
        failed.is_empty(),
        "{} of {} stops failed:\n\n{}",
        failed.len(),
        stops.len(),
        failed.iter().map(|s| s.describe()).collect::<Vec<_>>().join("\n\n")
    );
    assert!(in_flight_total > 0, "SIGTERM never arrived while calls were in flight");
}
