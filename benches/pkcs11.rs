//! The daemon on SoftHSM2 next to the same calls made in-process on the same token, in one
//! run: AES-GCM encrypt of 64 B and 4 KiB, and 32 random bytes.
//!
//! `in_process` calls the PKCS#11 backend's session directly — the same token calls the
//! daemon's session actors make (one C_EncryptInit + one C_Encrypt, IVs drawn 64 per
//! C_GenerateRandom), with no socket and no thread hand-off: it isolates the daemon's own
//! overhead. It is not the user's limit; `benches/throughput.rs` measures against that
//! (direct single-call PKCS#11 with caller IVs). The daemon variants go through the Unix socket: one
//! request at a time, 256 pipelined (auto-batching off), 256 concurrent calls auto-batched,
//! one explicit 256-operation batch, four connections each sending a 64-operation batch at
//! once, and four client connections of 64 concurrent calls.
//! `HARPO_BENCH_SESSIONS` sets the daemon's session pool (default 2).

mod common;

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use harpocrates::client::Client;
use harpocrates::protocol::{KeyAttributes, Request};
use harpocrates_daemon::backend::{Backend, BackendSession};
use harpocrates_daemon::config::{RawConfig, Settings};
use harpocrates_daemon::server::{self, RunningDaemon};

const IN_FLIGHT: usize = 256;
const PIN: &str = "bench-pin-1234";

struct Fixture {
    _dir: tempfile::TempDir,
    daemon: RunningDaemon,
    direct: Box<dyn BackendSession>,
    runtime: tokio::runtime::Runtime,
    batching: Client,
    pipelining: Client,
    many: Vec<Client>,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = common::softhsm_backend(dir.path(), PIN);
    let mut direct = backend.open_session().expect("session");
    direct.generate_key("k", &KeyAttributes::aes(256)).expect("key");

    let sessions =
        std::env::var("HARPO_BENCH_SESSIONS").ok().and_then(|s| s.parse().ok()).unwrap_or(2);
    let settings = Settings::validate(RawConfig {
        socket_path: Some(dir.path().join("bench.sock")),
        max_sessions: Some(sessions),
        log_level: Some("warn".into()),
        ..RawConfig::default()
    })
    .expect("settings");
    let daemon = server::spawn(settings, Arc::new(backend)).expect("daemon");

    let common::Clients { runtime, batching, pipelining, many } =
        common::Clients::connect(daemon.socket_path());
    Fixture { _dir: dir, daemon, direct, runtime, batching, pipelining, many }
}

/// One operation, measured every way.
fn group(c: &mut Criterion, f: &mut Fixture, name: &str, request: Request) {
    let mut g = c.benchmark_group(name);
    g.throughput(Throughput::Elements(1));
    let direct_request = request.clone();
    g.bench_function("in_process", |b| {
        b.iter(|| match &direct_request {
            Request::Encrypt { key, plaintext, .. } => {
                black_box(
                    f.direct.encrypt(key.as_str(), plaintext.expose(), &[]).expect("encrypt"),
                );
            }
            Request::GenerateRandom { len } => {
                black_box(f.direct.generate_random(*len as usize).expect("random"));
            }
            other => unreachable!("{other:?}"),
        })
    });
    g.bench_function("daemon_sequential", |b| {
        b.iter(|| f.runtime.block_on(f.batching.call(request.clone())).expect("call"))
    });
    g.throughput(Throughput::Elements(IN_FLIGHT as u64));
    for (label, client) in
        [("daemon_pipelined", &f.pipelining), ("daemon_autobatched", &f.batching)]
    {
        g.bench_function(label, |b| {
            b.iter(|| {
                let calls = (0..IN_FLIGHT).map(|_| client.call(request.clone()));
                f.runtime.block_on(futures::future::try_join_all(calls)).expect("calls")
            })
        });
    }
    g.bench_function("daemon_batch", |b| {
        b.iter(|| {
            let batch = (0..IN_FLIGHT).fold(f.batching.batch(), |b, _| b.push(request.clone()));
            f.runtime.block_on(batch.send()).expect("batch")
        })
    });
    g.bench_function("daemon_batch_4_clients", |b| {
        b.iter(|| {
            let batches = f
                .many
                .iter()
                .map(|c| (0..IN_FLIGHT / 4).fold(c.batch(), |b, _| b.push(request.clone())).send());
            f.runtime.block_on(futures::future::try_join_all(batches)).expect("batches")
        })
    });
    g.bench_function("daemon_4_clients", |b| {
        b.iter(|| {
            let calls =
                f.many.iter().flat_map(|c| (0..IN_FLIGHT / 4).map(|_| c.call(request.clone())));
            f.runtime.block_on(futures::future::try_join_all(calls)).expect("calls")
        })
    });
    g.finish();
}

fn benches(c: &mut Criterion) {
    let mut f = fixture();
    let encrypt =
        |n: usize| Request::Encrypt { key: "k".into(), plaintext: vec![0x5a; n].into(), aad: None };
    group(c, &mut f, "softhsm_encrypt_64B", encrypt(64));
    group(c, &mut f, "softhsm_encrypt_4KiB", encrypt(4096));
    group(c, &mut f, "softhsm_random_32B", Request::GenerateRandom { len: 32 });
    f.runtime.block_on(f.batching.generate_kek("kek")).expect("kek");
    common::derive(c, "softhsm_derive_data_key", &f.runtime, &f.batching);
    let Fixture { daemon, runtime, batching, pipelining, many, .. } = f;
    drop((batching, pipelining, many));
    drop(runtime);
    daemon.stop();
}

criterion_group! {
    name = pkcs11;
    config = Criterion::default()
        .sample_size(30)
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    targets = benches
}
criterion_main!(pkcs11);
