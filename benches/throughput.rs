//! Each throughput goal next to the limit a user reaches without us, in one run.
//!
//! Every row pairs a workload through the daemon with its honest baseline, measured in
//! alternated rounds (ours, limit, limit, ours, ...) so a drifting machine favours
//! neither; the table gives both medians, their ratio and the median of the per-round
//! ratios. Both daemons record every operation to the audit file. Load through the
//! daemon is steady, as from many independent callers: 256 callers each sending its next
//! call when its last is answered (the client batches what overlaps), or explicit batches
//! of 256 with two in flight.
//!
//! Baselines are the limit, not our own call pattern:
//! * **HSM path**: one thread calling SoftHSM2 directly on a persistent private token key
//!   with the fewest calls a PKCS#11 user needs — one `C_EncryptInit` and one `C_Encrypt`,
//!   the IV supplied by the caller (a counter: no `C_GenerateRandom`); for random bytes,
//!   one `C_GenerateRandom`.
//! * **Envelope path** (in the daemon and sealed in the client): `aes-gcm` in-process on
//!   one core, key set up once, counter nonces, sealing in place into a reused buffer.
//! * **Key count**: the same daemon with one key.
//! * **Ping**: a raw Unix-socket round trip of the same frame size (length prefix + echo).
//!
//! `HARPO_BENCH_ROUNDS` (default 9) and `HARPO_BENCH_ROUND_MS` (default 600) size the
//! rounds. The table goes to stdout and `target/bench-report/throughput.json`.

mod common;

use std::hint::black_box;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aes_gcm::{AeadInOut, Aes256Gcm, KeyInit};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use harpocrates::client::{Client, ClientOptions};
use harpocrates::protocol::Request;
use harpocrates_daemon::backend::pkcs11::Pkcs11Backend;
use harpocrates_daemon::backend::pkcs11::raw::RawCalls;
use harpocrates_daemon::config::raw::RawAudit;
use harpocrates_daemon::config::{RawConfig, Settings};
use harpocrates_daemon::server::{self, RunningDaemon};

const IN_FLIGHT: usize = 256;
const PIN: &str = "bench-pin-1234";
const KEYS: usize = 1000;

/// Whether `part` (envelope, hsm, keys) runs: `HARPO_BENCH_ONLY=hsm,keys` picks parts;
/// all run by default.
fn want(part: &str) -> bool {
    std::env::var("HARPO_BENCH_ONLY").map_or(true, |only| only.split(',').any(|p| p == part))
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Operations per second of `step` (which reports how many it did) over one round.
fn rate(round: Duration, mut step: impl FnMut() -> usize) -> f64 {
    let started = Instant::now();
    let mut ops = 0;
    while started.elapsed() < round {
        ops += step();
    }
    ops as f64 / started.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// One line of the report.
struct Row {
    workload: String,
    ours: f64,
    limit: f64,
    round_ratio: f64,
    goal: f64,
}

struct Report {
    rounds: usize,
    round: Duration,
    rows: Vec<Row>,
}

impl Report {
    /// Measures `ours` against `limit` in alternated rounds.
    fn pair(
        &mut self,
        workload: &str,
        goal: f64,
        mut ours: impl FnMut() -> usize,
        mut limit: impl FnMut() -> usize,
    ) {
        let (mut o, mut l, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        // One unmeasured round each: caches, handles, IV reserves.
        rate(self.round / 4, &mut ours);
        rate(self.round / 4, &mut limit);
        for r in 0..self.rounds {
            let (a, b) = if r % 2 == 0 {
                let a = rate(self.round, &mut ours);
                (a, rate(self.round, &mut limit))
            } else {
                let b = rate(self.round, &mut limit);
                (rate(self.round, &mut ours), b)
            };
            o.push(a);
            l.push(b);
            ratios.push(a / b);
        }
        let row = Row {
            workload: workload.to_owned(),
            ours: median(o),
            limit: median(l),
            round_ratio: median(ratios),
            goal,
        };
        eprintln!(
            "{}: {:.0} vs {:.0} ops/s ({:.3})",
            row.workload, row.ours, row.limit, row.round_ratio
        );
        self.rows.push(row);
    }

    fn print(&self) {
        println!(
            "\n## Throughput goals, {} alternated rounds of {:?}, audit file on\n",
            self.rounds, self.round
        );
        println!("| workload | ours (ops/s) | limit (ops/s) | ratio | median round ratio | goal |");
        println!("|---|---:|---:|---:|---:|---:|");
        let mut json = Vec::new();
        for r in &self.rows {
            let met = if r.round_ratio >= r.goal { "met" } else { "missed" };
            println!(
                "| {} | {:.0} | {:.0} | {:.3} | {:.3} | ≥ {} ({met}) |",
                r.workload,
                r.ours,
                r.limit,
                r.ours / r.limit,
                r.round_ratio,
                r.goal
            );
            json.push(serde_json::json!({
                "workload": r.workload, "ours": r.ours, "limit": r.limit,
                "ratio": r.ours / r.limit, "round_ratio": r.round_ratio, "goal": r.goal,
            }));
        }
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-report");
        let _ = std::fs::create_dir_all(&dir);
        let _ = std::fs::write(
            dir.join("throughput.json"),
            serde_json::to_string_pretty(&json).unwrap_or_default(),
        );
    }
}

/// A daemon on a fresh SoftHSM2 token, recording every operation to its audit file, and
/// a direct session on the same token for the baseline.
struct Hsm {
    daemon: RunningDaemon,
    backend: Pkcs11Backend,
}

fn hsm(dir: &Path) -> Hsm {
    let backend = common::softhsm_backend(dir, PIN);
    let settings = Settings::validate(RawConfig {
        socket_path: Some(dir.join("hsm.sock")),
        max_sessions: Some(1),
        log_level: Some("warn".into()),
        audit: Some(RawAudit {
            file: Some(dir.join("hsm-audit").join("audit.log")),
            journal: Some("off".into()),
            ..RawAudit::default()
        }),
        ..RawConfig::default()
    })
    .expect("settings");
    let daemon = server::spawn(settings, Arc::new(backend.clone())).expect("daemon");
    Hsm { daemon, backend }
}

/// What a direct PKCS#11 user holds: a session, a persistent private key, the calls.
struct Direct {
    session: Session,
    key: ObjectHandle,
    raw: RawCalls,
    counter: u64,
    out: Vec<u8>,
}

/// A persistent private AES-256 key, as a daemon (or a direct user) would hold.
fn make_key(session: &Session, label: &str) -> ObjectHandle {
    session
        .generate_key(
            &Mechanism::AesKeyGen,
            &[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Sensitive(true),
                Attribute::Extractable(false),
                Attribute::Encrypt(true),
                Attribute::Decrypt(true),
                Attribute::ValueLen(32.into()),
                Attribute::Label(label.as_bytes().to_vec()),
            ],
        )
        .expect("persistent private key")
}

impl Direct {
    fn open(backend: &Pkcs11Backend) -> Self {
        let session = backend.context().open_rw_session(backend.slot()).expect("session");
        // The daemon logged the token in; sessions of this process share that login.
        let key = make_key(&session, "direct-baseline");
        let raw = RawCalls::load(Path::new(common::SOFTHSM2_MODULE)).expect("function list");
        Self { session, key, raw, counter: 0, out: Vec::with_capacity(8192) }
    }

    fn encrypt(&mut self, plaintext: &[u8]) {
        self.counter += 1;
        let mut iv = [0u8; 12];
        iv[4..].copy_from_slice(&self.counter.to_be_bytes());
        self.out.clear();
        self.raw
            .gcm_encrypt(&self.session, self.key, &iv, &[], plaintext, &mut self.out)
            .expect("C_Encrypt");
        black_box(&self.out);
    }

    fn random(&mut self, len: usize) {
        let mut buf = vec![0u8; len];
        self.session.generate_random_slice(&mut buf).expect("C_GenerateRandom");
        black_box(buf);
    }
}

/// `aes-gcm` in-process: the envelope path's limit.
struct InProcess {
    cipher: Aes256Gcm,
    counter: u64,
    buf: Vec<u8>,
}

impl InProcess {
    fn new() -> Self {
        Self {
            cipher: Aes256Gcm::new(&[7u8; 32].into()),
            counter: 0,
            buf: Vec::with_capacity(8192),
        }
    }

    fn seal(&mut self, plaintext: &[u8]) {
        self.counter += 1;
        let mut nonce = [0u8; 12];
        nonce[4..].copy_from_slice(&self.counter.to_be_bytes());
        self.buf.clear();
        self.buf.extend_from_slice(plaintext);
        let tag = self
            .cipher
            .encrypt_inout_detached(&nonce.into(), b"ctx", self.buf.as_mut_slice().into())
            .expect("seal");
        black_box((&self.buf, tag));
    }
}

/// How long one burst of steady load lasts; `rate` strings bursts to fill a round.
const WINDOW: Duration = Duration::from_millis(100);

/// Steady load: `workers` callers, each starting its next call the moment its last one
/// is answered, for one [`WINDOW`]. Returns the operations answered. This is what many
/// independent callers (or a pipeline of batches) look like to the daemon: unlike
/// sending 256 calls and waiting for all of them, it never lets the daemon run dry.
fn steady<F, Fut>(rt: &tokio::runtime::Runtime, workers: usize, call: F) -> usize
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = usize>,
{
    let deadline = Instant::now() + WINDOW;
    let call = &call;
    let done = rt.block_on(futures::future::join_all((0..workers).map(|_| async move {
        let mut n = 0;
        while Instant::now() < deadline {
            n += call().await;
        }
        n
    })));
    done.into_iter().sum()
}

/// 256 concurrent callers, one request each at a time (the client batches them).
fn callers(rt: &tokio::runtime::Runtime, client: &Client, request: &Request) -> usize {
    steady(rt, IN_FLIGHT, || async {
        client.call(request.clone()).await.expect("call");
        1
    })
}

/// Explicit batches of `requests`, two in flight at any time.
fn batches(rt: &tokio::runtime::Runtime, client: &Client, requests: &[Request]) -> usize {
    steady(rt, 2, || async {
        let b = requests.iter().fold(client.batch(), |b, r| b.push(r.clone()));
        let answers = b.send().await.expect("batch");
        assert!(answers.iter().all(|a| a.is_ok()), "{:?}", answers.iter().find(|a| a.is_err()));
        requests.len()
    })
}

fn batch(rt: &tokio::runtime::Runtime, client: &Client, requests: &[Request]) -> usize {
    let b = requests.iter().fold(client.batch(), |b, r| b.push(r.clone()));
    let answers = rt.block_on(b.send()).expect("batch");
    assert!(answers.iter().all(|a| a.is_ok()), "{:?}", answers.iter().find(|a| a.is_err()));
    requests.len()
}

fn encrypt(key: &str, n: usize) -> Request {
    Request::Encrypt { key: key.into(), plaintext: vec![0x5a; n].into(), aad: None }
}

fn hsm_rows(report: &mut Report, rt: &tokio::runtime::Runtime, dir: &Path) {
    let h = hsm(dir);
    // SoftHSM2 finds objects slowly once it holds a thousand: first uses take a while.
    let options = ClientOptions { request_timeout: None, ..ClientOptions::default() };
    let client =
        rt.block_on(Client::connect_with(h.daemon.socket_path(), options)).expect("connect");
    rt.block_on(client.generate_key("k", 256)).expect("key");
    let mut direct = Direct::open(&h.backend);
    if want("hsm") {
        hsm_goal_rows(report, rt, &client, &mut direct);
    }
    if want("keys") {
        key_count_row(report, rt, &client, &direct);
    }
    drop(client);
    h.daemon.stop();
}

/// Encrypt and random bytes against direct PKCS#11, and a lone request's latency.
fn hsm_goal_rows(
    report: &mut Report,
    rt: &tokio::runtime::Runtime,
    client: &Client,
    direct: &mut Direct,
) {
    for n in [64, 4096] {
        let req = encrypt("k", n);
        let plain = vec![0x5a; n];
        let batch_of = vec![req.clone(); IN_FLIGHT];
        report.pair(
            &format!("HSM encrypt {n} B, batches of 256 (2 in flight)"),
            0.8,
            || batches(rt, client, &batch_of),
            || {
                direct.encrypt(&plain);
                1
            },
        );
        report.pair(
            &format!("HSM encrypt {n} B, 256 concurrent callers"),
            0.8,
            || callers(rt, client, &req),
            || {
                direct.encrypt(&plain);
                1
            },
        );
    }
    let random = Request::GenerateRandom { len: 32 };
    report.pair(
        "HSM random 32 B, 256 concurrent callers",
        0.8,
        || callers(rt, client, &random),
        || {
            direct.random(32);
            1
        },
    );

    // Latency of a lone request on an idle daemon.
    let mut lat = Vec::with_capacity(2000);
    for _ in 0..2000 {
        let t = Instant::now();
        rt.block_on(client.encrypt("k", &[1; 64], None)).expect("encrypt");
        lat.push(t.elapsed().as_secs_f64() * 1e6);
    }
    lat.sort_by(f64::total_cmp);
    let (p50, p99) = (lat[lat.len() / 2], lat[lat.len() * 99 / 100]);
    println!(
        "\nlone HSM encrypt 64 B, 2000 sequential calls: p50 {p50:.0} µs, p99 {p99:.0} µs, p99/p50 {:.2} (goal ≤ 2)",
        p99 / p50
    );
}

/// 64 B encryptions spread over 1,000 keys against the same work under one key, on one
/// daemon. Making and first using 1,000 keys takes minutes on SoftHSM2: skip it with
/// `HARPO_BENCH_ONLY`.
fn key_count_row(
    report: &mut Report,
    rt: &tokio::runtime::Runtime,
    client: &Client,
    direct: &Direct,
) {
    // Key count: the same work spread over 1,000 keys against one key.
    // Made directly: the daemon's GenerateKey first looks the label up, which SoftHSM2
    // answers slowly once it holds hundreds of objects.
    for i in 0..KEYS {
        make_key(&direct.session, &format!("many-{i}"));
    }
    let spread: Vec<Request> =
        (0..IN_FLIGHT).map(|i| encrypt(&format!("many-{}", i * 997 % KEYS), 64)).collect();
    let one = vec![encrypt("k", 64); IN_FLIGHT];
    // Touch every key once so handle lookups and budget reservations are not measured;
    // their one-time cost is reported on its own.
    let touched = Instant::now();
    for chunk in (0..KEYS).map(|i| encrypt(&format!("many-{i}"), 64)).collect::<Vec<_>>().chunks(16)
    {
        batch(rt, client, chunk);
    }
    println!(
        "\nfirst encryption under each of {KEYS} keys (handle lookup + budget reservation in a \
         token holding {KEYS}+ objects): {:.1} ms per key",
        touched.elapsed().as_secs_f64() * 1e3 / KEYS as f64
    );
    let mut turn = 0usize;
    report.pair(
        "HSM encrypt 64 B over 1,000 keys vs 1 key (batches of 256, 2 in flight)",
        0.9,
        || {
            turn += 1;
            let rotated: Vec<Request> = spread
                .iter()
                .enumerate()
                .map(|(i, _)| encrypt(&format!("many-{}", (i * 997 + turn * 31) % KEYS), 64))
                .collect();
            batches(rt, client, &rotated)
        },
        || batches(rt, client, &one),
    );
}

fn envelope_rows(report: &mut Report, rt: &tokio::runtime::Runtime, dir: &Path) {
    std::fs::create_dir_all(dir).expect("dir");
    let daemon = common::soft_daemon_audited(dir, Some(&dir.join("audit").join("audit.log")));
    let client = rt.block_on(Client::connect(daemon.socket_path())).expect("connect");
    rt.block_on(client.generate_kek("kek")).expect("kek");
    let mut aes = InProcess::new();
    for (n, goal) in [(4096, 0.5), (64, 0.25)] {
        let req = Request::EnvelopeEncrypt {
            kek: "kek".into(),
            context: b"bench-context".to_vec(),
            plaintext: vec![0x5a; n].into(),
            aad: None,
        };
        let plain = vec![0x5a; n];
        let batch_of = vec![req.clone(); IN_FLIGHT];
        report.pair(
            &format!("envelope {n} B in the daemon, batches of 256 (2 in flight)"),
            goal,
            || batches(rt, &client, &batch_of),
            || {
                aes.seal(&plain);
                1
            },
        );
    }
    // The client-side data key: fetched once, then AES in this process, one message at a
    // time as an application's task would seal them.
    let local = rt.block_on(client.envelope("kek", b"bench-context")).expect("local envelope");
    for (n, goal) in [(4096, 0.9), (64, 0.9)] {
        let plain = vec![0x5a; n];
        report.pair(
            &format!("envelope {n} B sealed in the client (local data key)"),
            goal,
            || {
                // An async application awaits one message after another in its task.
                rt.block_on(async {
                    for _ in 0..64 {
                        black_box(local.encrypt(&plain, None).await.expect("seal"));
                    }
                });
                64
            },
            || {
                aes.seal(&plain);
                1
            },
        );
    }
    ping_row(report, rt, &client);
    drop(client);
    daemon.stop();
}

/// Sequential ping against a raw Unix-socket round trip of the same size.
fn ping_row(report: &mut Report, rt: &tokio::runtime::Runtime, client: &Client) {
    let (mut a, mut b) = std::os::unix::net::UnixStream::pair().expect("pair");
    let echo = std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        loop {
            let mut len = [0u8; 4];
            if b.read_exact(&mut len).is_err() {
                return;
            }
            let n = u32::from_be_bytes(len) as usize;
            if b.read_exact(&mut buf[..n]).is_err() || b.write_all(&len).is_err() {
                return;
            }
            let _ = b.write_all(&buf[..n]);
        }
    });
    let frame = [0u8, 0, 0, 16, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16];
    report.pair(
        "sequential ping vs raw Unix-socket round trip",
        0.8,
        || {
            rt.block_on(client.ping()).expect("ping");
            1
        },
        || {
            let mut back = [0u8; 20];
            a.write_all(&frame).expect("write");
            a.read_exact(&mut back).expect("read");
            1
        },
    );
    drop(a);
    let _ = echo.join();
}

fn main() {
    let mut report = Report {
        rounds: env_or("HARPO_BENCH_ROUNDS", 9) as usize,
        round: Duration::from_millis(env_or("HARPO_BENCH_ROUND_MS", 600)),
        rows: Vec::new(),
    };
    // Criterion-style filters are not supported: `cargo bench --bench throughput` runs it all.
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    if want("envelope") {
        envelope_rows(&mut report, &rt, &dir.path().join("soft"));
    }
    if want("hsm") || want("keys") {
        hsm_rows(&mut report, &rt, &dir.path().join("hsm"));
    }
    report.print();
}
