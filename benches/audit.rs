//! What the audit file costs: the same work through two daemons in one run, one with
//! audit off and one recording every operation (every `use` included) to the
//! hash-chained file.
//!
//! Groups: `audit_encrypt_64B` (token `Encrypt` of 64 bytes) and `audit_envelope_4KiB`
//! (`EnvelopeEncrypt` of 4 KiB), each auto-batched (256 concurrent calls on one client)
//! and as one explicit 256-operation batch. The goal is at most 10% loss with the file
//! on. After criterion's groups, the same four workloads run again in alternated rounds
//! (off, on, on, off, ...: one second each) and the medians and their ratio are printed:
//! on a noisy 2-core machine that pairing is steadier than two criterion runs in a row.

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
    paired(&runtime, &off, &on, &encrypt, &envelope);
    let records = runtime.block_on(on.client.metrics()).expect("metrics").audit_records;
    eprintln!("audit records written by the audited daemon: {records}");
    for s in [off, on] {
        drop(s.client);
        s.daemon.stop();
    }
}

/// Rounds per workload in the paired comparison, and the length of each.
const ROUNDS: usize = 20;
const ROUND: Duration = Duration::from_secs(1);

/// Operations per second of `request` through `side` for one round.
fn round(runtime: &tokio::runtime::Runtime, side: &Side, request: &Request, batched: bool) -> f64 {
    let started = std::time::Instant::now();
    let mut ops = 0usize;
    while started.elapsed() < ROUND {
        if batched {
            let batch = (0..IN_FLIGHT).fold(side.client.batch(), |b, _| b.push(request.clone()));
            runtime.block_on(batch.send()).expect("batch");
        } else {
            let calls = (0..IN_FLIGHT).map(|_| side.client.call(request.clone()));
            runtime.block_on(futures::future::try_join_all(calls)).expect("calls");
        }
        ops += IN_FLIGHT;
    }
    ops as f64 / started.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Audit off and on in alternated rounds; prints medians and ratios.
fn paired(
    runtime: &tokio::runtime::Runtime,
    off: &Side,
    on: &Side,
    encrypt: &Request,
    envelope: &Request,
) {
    println!("\n## audit file on vs off, {ROUNDS} alternated rounds of {ROUND:?} each\n");
    println!(
        "| workload | off (ops/s, median) | on (ops/s, median) | on/off | median of round ratios |"
    );
    println!("|---|---|---|---|---|");
    for (name, request, batched) in [
        ("encrypt 64 B, auto-batched", encrypt, false),
        ("encrypt 64 B, batch of 256", encrypt, true),
        ("envelope 4 KiB, auto-batched", envelope, false),
        ("envelope 4 KiB, batch of 256", envelope, true),
    ] {
        let (mut offs, mut ons, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        for r in 0..ROUNDS {
            // Alternate which side goes first, so a drift in the machine favours neither.
            let (a, b) = if r % 2 == 0 {
                let a = round(runtime, off, request, batched);
                (a, round(runtime, on, request, batched))
            } else {
                let b = round(runtime, on, request, batched);
                (round(runtime, off, request, batched), b)
            };
            offs.push(a);
            ons.push(b);
            ratios.push(b / a);
        }
        let (off_m, on_m) = (median(offs), median(ons));
        println!(
            "| {name} | {off_m:.0} | {on_m:.0} | {:.3} | {:.3} |",
            on_m / off_m,
            median(ratios)
        );
    }
}

criterion_group! {
    name = audit;
    config = Criterion::default().sample_size(30).measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = benches
}
criterion_main!(audit);
