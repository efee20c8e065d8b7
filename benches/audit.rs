//! What the audit file costs: the same work through two daemons in one run, one with
//! audit off and one recording every operation (every `use` included) to the
//! hash-chained file.
//!
//! Groups: `audit_encrypt_64B` (token `Encrypt` of 64 bytes) and `audit_envelope_4KiB`
//! (`EnvelopeEncrypt` of 4 KiB), each auto-batched (256 concurrent calls on one client)
//! and as one explicit 256-operation batch. The goal is at most 10% loss with the file
//! on; `benches/report.py` prints the ratios.

mod common;

use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use harpocrates::client::Client;
use harpocrates::protocol::Request;
use harpocrates_daemon::server::RunningDaemon;

const IN_FLIGHT: usize = 256;

struct Side {
    daemon: RunningDaemon,
    client: Client,
}

fn side(runtime: &tokio::runtime::Runtime, dir: &std::path::Path, audit: bool) -> Side {
    std::fs::create_dir_all(dir).expect("dir");
    let file = dir.join("audit").join("audit.log");
    let daemon = common::soft_daemon_audited(dir, audit.then_some(file.as_path()));
    let client = runtime.block_on(Client::connect(daemon.socket_path())).expect("connect");
    runtime.block_on(client.generate_key("k", 256)).expect("key");
    runtime.block_on(client.generate_kek("kek")).expect("kek");
    Side { daemon, client }
}

fn group(
    c: &mut Criterion,
    name: &str,
    runtime: &tokio::runtime::Runtime,
    sides: &[(&str, &Side)],
    request: &Request,
) {
    let mut g = c.benchmark_group(name);
    g.throughput(Throughput::Elements(IN_FLIGHT as u64));
    for (label, side) in sides {
        g.bench_function(format!("{label}_autobatched"), |b| {
            b.iter(|| {
                let calls = (0..IN_FLIGHT).map(|_| side.client.call(request.clone()));
                runtime.block_on(futures::future::try_join_all(calls)).expect("calls")
            })
        });
        g.bench_function(format!("{label}_batch"), |b| {
            b.iter(|| {
                let batch =
                    (0..IN_FLIGHT).fold(side.client.batch(), |b, _| b.push(request.clone()));
                runtime.block_on(batch.send()).expect("batch")
            })
        });
    }
    g.finish();
}

fn benches(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let off = side(&runtime, &dir.path().join("off"), false);
    let on = side(&runtime, &dir.path().join("on"), true);
    let sides = [("audit_off", &off), ("audit_file", &on)];
    let encrypt = Request::Encrypt { key: "k".into(), plaintext: vec![0x5a; 64].into(), aad: None };
    group(c, "audit_encrypt_64B", &runtime, &sides, &encrypt);
    let envelope = Request::EnvelopeEncrypt {
        kek: "kek".into(),
        context: b"bench-context".to_vec(),
        plaintext: vec![0x5a; 4096].into(),
        aad: None,
    };
    group(c, "audit_envelope_4KiB", &runtime, &sides, &envelope);
    let records = runtime.block_on(on.client.metrics()).expect("metrics").audit_records;
    eprintln!("audit records written by the audited daemon: {records}");
    for s in [off, on] {
        drop(s.client);
        s.daemon.stop();
    }
}

criterion_group! {
    name = audit;
    config = Criterion::default().sample_size(30).measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = benches
}
criterion_main!(audit);
