//! Every operation through the real daemon binary with the real client: single calls,
//! batches with mixed outcomes, pipelining, restarts.

mod common;

use std::time::Duration;

use common::Daemon;
use harpocrates::client::{BlockingClient, Client, ClientOptions, Error};
use harpocrates::protocol::{Request, Response};

async fn client(d: &Daemon) -> Client {
    Client::connect(&d.socket).await.expect("connect")
}

/// Per-operation behaviour is covered backend by backend in `conformance.rs`; this checks
/// that what happens is counted.
#[tokio::test]
async fn metrics_count_operations_errors_and_connections() {
    let d = Daemon::start();
    let c = client(&d).await;
    let info = c.server_info().await.expect("info");
    assert_eq!(
        (info.protocol_version, info.backend.as_str()),
        (harpocrates::protocol::PROTOCOL_VERSION, "soft")
    );
    c.ping().await.expect("ping");
    c.generate_key("alpha", 256).await.expect("keygen");
    assert!(matches!(c.generate_key("alpha", 256).await, Err(Error::KeyExists(_))));
    assert!(matches!(c.generate_key("bad label", 256).await, Err(Error::InvalidRequest(_))));
    let ct = c.encrypt("alpha", b"x", None).await.expect("encrypt");
    assert!(matches!(
        c.decrypt("alpha", &ct, Some(b"other")).await,
        Err(Error::IntegrityCheckFailed(_))
    ));
    assert!(matches!(c.encrypt("nope", b"x", None).await, Err(Error::KeyNotFound(_))));
    let second = client(&d).await;
    second.ping().await.expect("ping");

    let m = c.metrics().await.expect("metrics");
    let count =
        |op: &str| m.per_op.iter().find(|o| o.op == op).map_or((0, 0), |o| (o.count, o.errors));
    assert_eq!(count("ping"), (2, 0));
    assert_eq!(count("generate_key"), (3, 2));
    assert_eq!(count("encrypt"), (2, 1));
    assert_eq!(count("decrypt"), (1, 1));
    assert_eq!((m.ops_total, m.errors_total), (8, 4));
    assert!((m.error_rate - 0.5).abs() < 1e-9, "{m:?}");
    assert!(m.avg_latency_us > 0.0 && m.ops_per_sec > 0.0, "{m:?}");
    assert_eq!(m.connections, 2);
}

#[tokio::test]
async fn a_batch_answers_each_element_on_its_own() {
    let d = Daemon::start();
    let c = client(&d).await;
    c.generate_key("k", 256).await.expect("keygen");
    let answers = c
        .batch()
        .encrypt("k", b"one", None)
        .encrypt("missing", b"two", None)
        .generate_random(8)
        .push(Request::Ping)
        .push(Request::Hello { version: 1, client_name: "nested".into() })
        .push(Request::Batch(vec![Request::Ping]))
        .generate_random(u32::MAX)
        .decrypt("k", b"garbage", None)
        .send()
        .await
        .expect("batch");
    assert_eq!(answers.len(), 8);
    let ct = match &answers[0] {
        Ok(Response::Ciphertext(ct)) => ct.clone(),
        other => panic!("{other:?}"),
    };
    assert!(matches!(answers[1], Err(Error::KeyNotFound(_))));
    assert!(matches!(&answers[2], Ok(Response::Random(r)) if r.len() == 8));
    assert!(matches!(answers[3], Ok(Response::Pong)));
    assert!(matches!(answers[4], Err(Error::InvalidRequest(_))));
    assert!(matches!(answers[5], Err(Error::InvalidRequest(_))));
    assert!(matches!(answers[6], Err(Error::InvalidRequest(_))));
    assert!(matches!(answers[7], Err(Error::InvalidRequest(_))));
    assert_eq!(c.decrypt("k", &ct, None).await.expect("decrypt").expose(), b"one");

    let too_many = (0..5000).fold(c.batch(), |b, _| b.generate_random(1));
    assert!(matches!(too_many.send().await, Err(Error::InvalidRequest(_))));
    let empty = c.batch().send().await.expect("empty batch");
    assert!(empty.is_empty());
}

#[tokio::test]
async fn concurrent_calls_are_pipelined_and_all_answered_correctly() {
    let d = Daemon::start();
    let c = client(&d).await;
    c.generate_key("k", 256).await.expect("keygen");
    let tasks: Vec<_> = (0..500u32)
        .map(|i| {
            let c = c.clone();
            tokio::spawn(async move {
                let msg = format!("message {i}");
                let ct = c.encrypt("k", msg.as_bytes(), Some(&i.to_be_bytes())).await?;
                let pt = c.decrypt("k", &ct, Some(&i.to_be_bytes())).await?;
                Ok::<_, Error>((msg, pt))
            })
        })
        .collect();
    for t in tasks {
        let (msg, pt) = t.await.expect("task").expect("round trip");
        assert_eq!(pt.expose(), msg.as_bytes());
    }
    let m = c.metrics().await.expect("metrics");
    let batches = m.per_op.iter().find(|o| o.op == "batch").map_or(0, |o| o.count);
    assert!(batches > 0, "500 concurrent calls were never coalesced: {m:?}");
}

#[tokio::test]
async fn pipelining_without_auto_batching_also_works() {
    let d = Daemon::start();
    let options = ClientOptions { max_auto_batch: 1, ..ClientOptions::default() };
    let c = Client::connect_with(&d.socket, options).await.expect("connect");
    let calls = (0..200).map(|_| c.generate_random(16));
    let answers = futures::future::join_all(calls).await;
    assert!(answers.iter().all(|a| a.as_ref().is_ok_and(|r| r.len() == 16)));
    let m = c.metrics().await.expect("metrics");
    assert!(m.per_op.iter().all(|o| o.op != "batch"), "auto-batching was off");
}

#[tokio::test]
async fn keys_survive_a_restart_and_the_client_reconnects() {
    let mut d = Daemon::start();
    let c = client(&d).await;
    c.generate_key("persist", 192).await.expect("keygen");
    let ct = c.encrypt("persist", b"kept", None).await.expect("encrypt");

    d.restart();
    // The old connection is gone; the next call reconnects (possibly after one
    // ConnectionLost for a call that raced the restart).
    let pt = match c.decrypt("persist", &ct, None).await {
        Err(Error::ConnectionLost(_)) => c.decrypt("persist", &ct, None).await,
        other => other,
    }
    .expect("decrypt after restart");
    assert_eq!(pt.expose(), b"kept");

    d.crash_and_restart();
    let keys = match c.list_keys().await {
        Err(Error::ConnectionLost(_)) => c.list_keys().await,
        other => other,
    }
    .expect("list after crash");
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].attributes.size_bits, 192);
}

#[test]
fn the_blocking_client_works_from_many_threads() {
    let d = Daemon::start();
    let c = std::sync::Arc::new(BlockingClient::connect(&d.socket).expect("connect"));
    c.generate_key("k", 128).expect("keygen");
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let c = c.clone();
            std::thread::spawn(move || {
                for j in 0..50 {
                    let msg = format!("{i}-{j}");
                    let ct = c.encrypt("k", msg.as_bytes(), None).expect("encrypt");
                    assert_eq!(
                        c.decrypt("k", &ct, None).expect("decrypt").expose(),
                        msg.as_bytes()
                    );
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("thread");
    }
    let answers =
        c.batch(|b| b.generate_random(4).destroy_key("k").destroy_key("k")).expect("batch");
    assert!(answers[0].is_ok() && answers[1].is_ok());
    assert!(matches!(answers[2], Err(Error::KeyNotFound(_))));
}

#[tokio::test]
async fn sigterm_finishes_in_flight_requests_and_removes_the_socket() {
    let mut d = Daemon::start();
    let c = client(&d).await;
    c.generate_key("k", 256).await.expect("keygen");
    let load: Vec<_> = (0..300)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move { c.encrypt("k", &[7u8; 4096], None).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let status = tokio::task::spawn_blocking({
        let pid = d.pid();
        move || {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(pid, libc::SIGTERM) }
        }
    })
    .await
    .expect("kill");
    assert_eq!(status, 0);
    for t in load {
        // Each call either completed or was refused cleanly; none hangs.
        match t.await.expect("task") {
            Ok(ct) => assert_eq!(ct.len(), 4096 + 30),
            Err(Error::ConnectionLost(_) | Error::Unavailable(_) | Error::Connect { .. }) => {}
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    let status = d.signal_and_wait(0);
    assert!(status.success(), "{status:?}");
    assert!(!d.socket.exists(), "socket file removed on shutdown");
}

/// The blocking client offers every key-manager call the async one does.
#[test]
fn blocking_client_covers_the_key_manager() {
    let d = Daemon::start();
    let c = BlockingClient::connect(&d.socket).expect("connect");
    assert_eq!(c.socket_path(), d.socket.as_path());
    assert_eq!(c.server_info().expect("info").backend, "soft");
    assert_eq!(c.generate_kek("bk").expect("kek").active_version, 1);
    assert!(c.list_keks().expect("keks").iter().any(|k| k.name == "bk"));
    let a = c.derive_data_key("bk", b"ctx", 32).expect("derive");
    let b = c.derive_data_key("bk", b"ctx", 32).expect("derive again");
    assert_eq!(a.dek.expose(), b.dek.expose(), "deterministic for one version and context");
    let fresh = c.generate_data_key("bk").expect("generate");
    let wrapped = fresh.wrapped.clone().expect("wrapped");
    assert_eq!(c.unwrap_data_key(&wrapped).expect("unwrap").dek.expose(), fresh.dek.expose());
    let ct = c.encrypt_with_context("bk", b"ctx", b"blocking", Some(b"aad")).expect("seal");
    assert_eq!(c.prepare_rotation("bk").expect("prepare").pending_version, Some(2));
    c.validate_rotation("bk").expect("validate");
    assert_eq!(c.commit_rotation("bk").expect("commit").active_version, 2);
    let moved = c.rewrap(b"ctx", &ct, Some(b"aad")).expect("rewrap");
    assert_eq!(
        c.decrypt_with_context(b"ctx", &moved, Some(b"aad")).expect("open").expose(),
        b"blocking"
    );
    c.retire_kek_version("bk", 1, false).expect("retire v1");
    assert!(c.decrypt_with_context(b"ctx", &ct, Some(b"aad")).is_err(), "v1 retired");
    c.prepare_rotation("bk").expect("prepare v3");
    let info = c.rollback_rotation("bk").expect("rollback");
    assert_eq!((info.active_version, info.pending_version), (2, None));
}
