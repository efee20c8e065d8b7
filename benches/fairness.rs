//! Cheap operations while expensive ones run: the latency of `ping` + `random(16)` on an
//! idle daemon next to the same loop while three clients send batches of 100
//! wrong-password restores (Argon2id each) and one sends 15 MiB envelope encryptions.
//! Rounds alternate (idle, loaded, idle, ...) in one run; the table gives p50/p90/p99/max
//! of each. Run: `cargo bench --bench fairness`.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use harpocrates::client::BlockingClient;
use harpocrates::protocol::{KeyAttributes, Request};

const ROUNDS: usize = 3;
const ROUND: Duration = Duration::from_secs(4);

fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = common::soft_daemon(dir.path());
    let socket = daemon.socket_path().to_owned();

    let setup = BlockingClient::connect(&socket).expect("connect");
    let attrs = KeyAttributes { extractable: true, ..KeyAttributes::aes(256) };
    setup.generate_key_with_attributes("exportable", attrs).expect("key");
    let backup = setup.backup_key("exportable", b"correct horse").expect("backup");
    setup.call(Request::GenerateKek { name: "bulk".into() }).expect("kek");
    let cheap = BlockingClient::connect(&socket).expect("connect");

    let (mut idle, mut loaded) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        idle.extend(measure(&cheap, ROUND));
        let stop = Arc::new(AtomicBool::new(false));
        let load = start_load(&socket, &backup, &stop);
        loaded.extend(measure(&cheap, ROUND));
        stop.store(true, Ordering::Relaxed);
        for t in load {
            let _ = t.join();
        }
    }
    println!("\n## ping + random(16) round trip, {ROUNDS} alternated rounds of {ROUND:?}\n");
    println!("| daemon | samples | p50 | p90 | p99 | max |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (name, mut v) in [("idle", idle), ("KDF batches + 15 MiB envelopes", loaded)] {
        v.sort();
        let p = |q: f64| v[((v.len() as f64 * q) as usize).min(v.len() - 1)];
        println!(
            "| {name} | {} | {:.2?} | {:.2?} | {:.2?} | {:.2?} |",
            v.len(),
            p(0.5),
            p(0.9),
            p(0.99),
            v[v.len() - 1]
        );
    }
}

fn measure(cheap: &BlockingClient, length: Duration) -> Vec<Duration> {
    let started = Instant::now();
    let mut out = Vec::new();
    while started.elapsed() < length {
        let t = Instant::now();
        cheap.ping().expect("ping");
        cheap.generate_random(16).expect("random");
        out.push(t.elapsed());
        std::thread::sleep(Duration::from_millis(2));
    }
    out
}

fn start_load(
    socket: &std::path::Path,
    backup: &[u8],
    stop: &Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<()>> {
    let mut threads = Vec::new();
    for t in 0..3 {
        let (socket, backup, stop) = (socket.to_owned(), backup.to_vec(), stop.clone());
        threads.push(std::thread::spawn(move || {
            let c = BlockingClient::connect(&socket).expect("connect");
            let mut round = 0;
            while !stop.load(Ordering::Relaxed) {
                round += 1;
                let _ = c.batch(|mut b| {
                    for i in 0..100 {
                        b = b.push(Request::RestoreKey {
                            label: format!("r{t}-{round}-{i}"),
                            backup: backup.clone(),
                            password: b"wrong password".to_vec().into(),
                        });
                    }
                    b
                });
            }
        }));
    }
    let (socket, stop) = (socket.to_owned(), stop.clone());
    threads.push(std::thread::spawn(move || {
        let c = BlockingClient::connect(&socket).expect("connect");
        let big = vec![7u8; 15 << 20];
        while !stop.load(Ordering::Relaxed) {
            let _ = c.call(Request::EnvelopeEncrypt {
                kek: "bulk".into(),
                context: b"ctx".to_vec(),
                plaintext: big.clone().into(),
                aad: None,
            });
        }
    }));
    threads
}
