//! Throughput through the daemon next to the same work done in-process, in one run.
//!
//! Every group measures one operation several ways — directly on the backend session (no
//! daemon), then through the Unix socket one request at a time, pipelined (256 in flight,
//! auto-batching off), auto-batched (256 concurrent calls on one client), and as one
//! explicit 256-operation batch — so ratios come from the same run on the same machine.
//! `benches/report.py` turns criterion's output into the side-by-side table.

mod common;

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use harpocrates::client::Client;
use harpocrates_daemon::backend::soft::store::KdfParams;
use harpocrates_daemon::backend::soft::{SoftConfig, SoftToken};
use harpocrates_daemon::backend::{Backend, BackendSession};
use harpocrates_daemon::server::RunningDaemon;
use zeroize::Zeroizing;

const IN_FLIGHT: usize = 256;

struct Fixture {
    _dir: tempfile::TempDir,
    daemon: RunningDaemon,
    /// A separate token of the same kind, used in-process as the baseline.
    direct: Box<dyn BackendSession>,
    runtime: tokio::runtime::Runtime,
    batching: Client,
    pipelining: Client,
    many: Vec<Client>,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = common::soft_daemon(dir.path());

    let direct_token = SoftToken::open(
        &SoftConfig {
            state_dir: dir.path().join("direct-state"),
            kdf: KdfParams { memory_kib: 1024, iterations: 1, parallelism: 1 },
        },
        &Zeroizing::new("bench-pin".into()),
    )
    .expect("direct token");
    let mut direct = direct_token.open_session().expect("session");
    direct.generate_key("k", &harpocrates::protocol::KeyAttributes::aes(256)).expect("key");

    let common::Clients { runtime, batching, pipelining, many } =
        common::Clients::connect(daemon.socket_path());
    runtime.block_on(batching.generate_key("k", 256)).expect("key");
    runtime.block_on(batching.generate_kek("kek")).expect("kek");
    Fixture { _dir: dir, daemon, direct, runtime, batching, pipelining, many }
}

fn ping(c: &mut Criterion, f: &mut Fixture) {
    let mut g = c.benchmark_group("ping");
    g.throughput(Throughput::Elements(1));
    g.bench_function("daemon_sequential", |b| {
        b.iter(|| f.runtime.block_on(f.batching.ping()).expect("ping"))
    });
    g.throughput(Throughput::Elements(IN_FLIGHT as u64));
    g.bench_function("daemon_pipelined", |b| {
        b.iter(|| {
            f.runtime.block_on(futures::future::try_join_all(
                (0..IN_FLIGHT).map(|_| f.pipelining.ping()),
            ))
        })
    });
    g.finish();
}

fn encrypt(c: &mut Criterion, f: &mut Fixture, size: usize) {
    let name = if size >= 1024 {
        format!("encrypt_{}KiB", size / 1024)
    } else {
        format!("encrypt_{size}B")
    };
    let data = vec![0x5au8; size];
    let mut g = c.benchmark_group(&name);
    g.throughput(Throughput::Elements(1));
    g.bench_function("in_process", |b| {
        b.iter(|| black_box(f.direct.encrypt("k", &data, &[]).expect("encrypt")))
    });
    g.bench_function("daemon_sequential", |b| {
        b.iter(|| f.runtime.block_on(f.batching.encrypt("k", &data, None)).expect("encrypt"))
    });
    g.throughput(Throughput::Elements(IN_FLIGHT as u64));
    for (label, client) in
        [("daemon_pipelined", &f.pipelining), ("daemon_autobatched", &f.batching)]
    {
        g.bench_function(label, |b| {
            b.iter(|| {
                let calls = (0..IN_FLIGHT).map(|_| client.encrypt("k", &data, None));
                f.runtime.block_on(futures::future::try_join_all(calls)).expect("encrypt")
            })
        });
    }
    g.bench_function(BenchmarkId::new("daemon_batch", IN_FLIGHT), |b| {
        b.iter(|| {
            let batch = (0..IN_FLIGHT).fold(f.batching.batch(), |b, _| b.encrypt("k", &data, None));
            f.runtime.block_on(batch.send()).expect("batch")
        })
    });
    g.finish();
}

/// Envelope encryption (AES-256-GCM in the daemon under a derived data key) next to the
/// same AES-256-GCM done in this process with the `aes-gcm` crate.
fn envelope(c: &mut Criterion, f: &mut Fixture, size: usize) {
    use aes_gcm::aead::consts::U12;
    use aes_gcm::{AeadInOut, Aes256Gcm, KeyInit, Nonce};
    let name = if size >= 1024 {
        format!("envelope_{}KiB", size / 1024)
    } else {
        format!("envelope_{size}B")
    };
    let data = vec![0x5au8; size];
    let mut g = c.benchmark_group(&name);
    g.throughput(Throughput::Elements(1));
    let cipher = Aes256Gcm::new_from_slice(&[7u8; 32]).expect("key");
    let mut n = 0u64;
    g.bench_function("in_process", |b| {
        b.iter(|| {
            n += 1;
            let mut nonce = [0u8; 12];
            nonce[..8].copy_from_slice(&n.to_le_bytes());
            let mut buf = data.clone();
            let tag = cipher
                .encrypt_inout_detached(&Nonce::<U12>::from(nonce), b"aad", (&mut buf[..]).into())
                .expect("seal");
            black_box((buf, tag))
        })
    });
    g.throughput(Throughput::Elements(IN_FLIGHT as u64));
    for (label, client) in
        [("daemon_pipelined", &f.pipelining), ("daemon_autobatched", &f.batching)]
    {
        g.bench_function(label, |b| {
            b.iter(|| {
                let calls = (0..IN_FLIGHT)
                    .map(|_| client.encrypt_with_context("kek", b"bench-context", &data, None));
                f.runtime.block_on(futures::future::try_join_all(calls)).expect("seal")
            })
        });
    }
    let request = harpocrates::protocol::Request::EnvelopeEncrypt {
        kek: "kek".into(),
        context: b"bench-context".to_vec(),
        plaintext: data.clone().into(),
        aad: None,
    };
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
    g.finish();
}

fn benches(c: &mut Criterion) {
    let mut f = fixture();
    ping(c, &mut f);
    encrypt(c, &mut f, 64);
    encrypt(c, &mut f, 4096);
    envelope(c, &mut f, 64);
    envelope(c, &mut f, 4096);
    common::derive(c, "derive_data_key", &f.runtime, &f.batching);
    let Fixture { daemon, runtime, batching, pipelining, many, .. } = f;
    drop((batching, pipelining, many));
    drop(runtime);
    daemon.stop();
}

criterion_group! {
    name = daemon;
    config = Criterion::default().sample_size(30).measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = benches
}
criterion_main!(daemon);
