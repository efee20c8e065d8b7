//! The client's local data-key path (`Client::envelope`) against the real daemon: what a
//! `LocalEnvelope` seals the daemon opens and the other way round (soft token and
//! SoftHSM2), tampering and foreign ciphertexts give typed errors, a short TTL picks up a
//! rotation while old versions keep opening, `max_messages` forces a refetch, and a
//! caller without `export` access gets no key.

mod common;

use std::time::Duration;

use common::{Daemon, Token};
use harpocrates::client::{BlockingClient, Client, Error, LocalEnvelopeOptions};
use harpocrates::protocol::envelope::{FORMAT_V2, kek_named};

async fn client(d: &Daemon) -> Client {
    Client::connect(&d.socket).await.expect("connect")
}

/// How many `EnvelopeDataKey` requests the daemon has answered.
async fn key_fetches(c: &Client) -> u64 {
    let m = c.metrics().await.expect("metrics");
    m.per_op.iter().find(|o| o.op == "envelope_data_key").map_or(0, |o| o.count)
}

fn version(ct: &[u8]) -> u32 {
    kek_named(ct).expect("an envelope header").1
}

async fn both_ways_and_every_failure(token: Token) {
    let d = Daemon::start_on(token, "");
    let c = client(&d).await;
    c.generate_kek("orders").await.expect("kek");
    c.generate_kek("other").await.expect("kek");
    let local = c.envelope("orders", b"tenant-7").await.expect("local envelope");
    assert_eq!(local.kek(), "orders");
    let shown = format!("{local:?}");
    assert!(shown.contains("orders") && shown.contains("version: 1"), "{shown}");

    // Sealed here, opened by the daemon; and the other way round.
    let ct = local.encrypt(b"card 4242", Some(b"row 7")).await.expect("seal locally");
    assert_eq!(ct[0], FORMAT_V2);
    assert_eq!(kek_named(&ct).expect("header"), ("orders", 1));
    let pt = c.decrypt_with_context(b"tenant-7", &ct, Some(b"row 7")).await.expect("daemon opens");
    assert_eq!(pt.expose(), b"card 4242");
    let by_daemon =
        c.encrypt_with_context("orders", b"tenant-7", b"iban", None).await.expect("daemon seals");
    assert_eq!(local.decrypt(&by_daemon, None).await.expect("open locally").expose(), b"iban");
    assert_eq!(local.decrypt(&by_daemon, Some(b"")).await.expect("none = empty").expose(), b"iban");

    // Wrong context, wrong AAD, a flipped byte: the daemon's integrity error.
    let elsewhere = c.envelope("orders", b"tenant-8").await.expect("other context");
    assert!(matches!(
        elsewhere.decrypt(&ct, Some(b"row 7")).await,
        Err(Error::IntegrityCheckFailed(_))
    ));
    assert!(matches!(
        local.decrypt(&ct, Some(b"row 8")).await,
        Err(Error::IntegrityCheckFailed(_))
    ));
    assert!(matches!(local.decrypt(&ct, None).await, Err(Error::IntegrityCheckFailed(_))));
    for at in [ct.len() - 1, ct.len() - 20, 8 + "orders".len()] {
        let mut bad = ct.clone();
        bad[at] ^= 1;
        assert!(
            matches!(
                local.decrypt(&bad, Some(b"row 7")).await,
                Err(Error::IntegrityCheckFailed(_))
            ),
            "flipped byte {at}"
        );
    }
    let local_bad = elsewhere.encrypt(b"x", None).await.expect("seal");
    assert!(matches!(
        c.decrypt_with_context(b"tenant-7", &local_bad, None).await,
        Err(Error::IntegrityCheckFailed(_))
    ));

    // Another KEK's ciphertext: typed, and the daemon is not asked.
    let foreign = c.encrypt_with_context("other", b"tenant-7", b"x", None).await.expect("seal");
    let before = key_fetches(&c).await;
    match local.decrypt(&foreign, None).await {
        Err(Error::WrongKek { expected, found }) => {
            assert_eq!((expected.as_str(), found.as_str()), ("orders", "other"));
        }
        other => panic!("expected WrongKek, got {other:?}"),
    }
    assert_eq!(key_fetches(&c).await, before, "no key was fetched for a foreign ciphertext");
    assert!(matches!(local.decrypt(b"\xe2\x00", None).await, Err(Error::InvalidRequest(_))));
    assert!(matches!(local.decrypt(b"", None).await, Err(Error::InvalidRequest(_))));
    assert!(matches!(c.envelope("nope", b"c").await, Err(Error::KeyNotFound(_))));
}

#[tokio::test]
async fn sealed_locally_opened_by_the_daemon_and_back_on_the_soft_token() {
    both_ways_and_every_failure(Token::Soft).await;
}

#[tokio::test]
async fn sealed_locally_opened_by_the_daemon_and_back_on_softhsm2() {
    both_ways_and_every_failure(Token::SoftHsm).await;
}

#[tokio::test]
async fn a_short_ttl_picks_up_a_rotation_and_old_versions_still_open() {
    let d = Daemon::start();
    let c = client(&d).await;
    c.generate_kek("k").await.expect("kek");
    let short = LocalEnvelopeOptions { ttl: Duration::from_millis(200), ..Default::default() };
    let quick = c.envelope_with("k", b"ctx", short).await.expect("short ttl");
    let slow = c.envelope("k", b"ctx").await.expect("default ttl");
    let v1 = quick.encrypt(b"one", None).await.expect("seal");
    assert_eq!(version(&v1), 1);

    c.prepare_rotation("k").await.expect("prepare");
    c.validate_rotation("k").await.expect("validate");
    c.commit_rotation("k").await.expect("commit");
    // Within its TTL (5 minutes) a key keeps sealing under the version it was fetched for.
    assert_eq!(version(&slow.encrypt(b"still", None).await.expect("seal")), 1);
    tokio::time::sleep(Duration::from_millis(250)).await;
    let v2 = quick.encrypt(b"two", None).await.expect("seal after the ttl");
    assert_eq!(version(&v2), 2, "the refetch after the TTL picked up the new active version");
    assert_eq!(c.decrypt_with_context(b"ctx", &v2, None).await.expect("open").expose(), b"two");

    // Old and new versions open on both, fetching the missing version's key once.
    let fetches = key_fetches(&c).await;
    assert_eq!(quick.decrypt(&v1, None).await.expect("v1 after rotation").expose(), b"one");
    assert_eq!(key_fetches(&c).await, fetches + 1, "v1's key was fetched");
    assert_eq!(slow.decrypt(&v2, None).await.expect("v2 on the slow one").expose(), b"two");
    assert_eq!(slow.decrypt(&v2, None).await.expect("again").expose(), b"two");
    assert_eq!(slow.decrypt(&v1, None).await.expect("its own version").expose(), b"one");
    assert_eq!(key_fetches(&c).await, fetches + 2, "v2's key was fetched once, then held");

    // A version the KEK does not have is the daemon's answer, typed.
    let mut forged = v2.clone();
    let n = usize::from(forged[1]);
    forged[2 + n..6 + n].copy_from_slice(&9u32.to_be_bytes());
    assert!(matches!(quick.decrypt(&forged, None).await, Err(Error::KeyNotFound(_))));
}

#[tokio::test]
async fn the_fourth_message_refetches_when_max_messages_is_three() {
    let d = Daemon::start();
    let c = client(&d).await;
    c.generate_kek("k").await.expect("kek");
    let three = LocalEnvelopeOptions { max_messages: 3, ..Default::default() };
    let local = c.envelope_with("k", b"ctx", three).await.expect("envelope");
    assert_eq!(key_fetches(&c).await, 1);
    let mut fetched = Vec::new();
    for i in 0..7u8 {
        let ct = local.encrypt(&[i], None).await.expect("seal");
        assert_eq!(c.decrypt_with_context(b"ctx", &ct, None).await.expect("open").expose(), [i]);
        fetched.push(key_fetches(&c).await);
    }
    assert_eq!(fetched, [1, 1, 1, 2, 2, 2, 3], "a refetch before messages 4 and 7");

    // Concurrent callers share the refetches: 60 messages from 6 tasks, each sealed and
    // opened, with between 60 / 3 and 60 fetches.
    let tasks: Vec<_> = (0..6u8)
        .map(|t| {
            let local = local.clone();
            tokio::spawn(async move {
                let mut out = Vec::new();
                for i in 0..10u8 {
                    out.push((t, i, local.encrypt(&[t, i], None).await.expect("seal")));
                }
                out
            })
        })
        .collect();
    for task in tasks {
        for (t, i, ct) in task.await.expect("task") {
            assert_eq!(local.decrypt(&ct, None).await.expect("open").expose(), [t, i]);
        }
    }
    let concurrent = key_fetches(&c).await - 3;
    assert!((20..=60).contains(&concurrent), "{concurrent} fetches for 60 messages");
    for bad in [
        LocalEnvelopeOptions { max_messages: 0, ..Default::default() },
        LocalEnvelopeOptions { ttl: Duration::ZERO, ..Default::default() },
    ] {
        assert!(matches!(c.envelope_with("k", b"ctx", bad).await, Err(Error::InvalidRequest(_))));
    }
    assert_eq!(
        key_fetches(&c).await,
        3 + concurrent,
        "bad options are refused before the daemon is asked"
    );
}

#[test]
fn the_blocking_client_seals_and_opens_locally() {
    let d = Daemon::start();
    let c = BlockingClient::connect(&d.socket).expect("connect");
    c.generate_kek("k").expect("kek");
    let short = LocalEnvelopeOptions { max_messages: 1, ..Default::default() };
    let local = c.envelope_with("k", b"ctx", short).expect("envelope");
    for i in 0..3u8 {
        let ct = local.encrypt(&[i], Some(b"a")).expect("seal (refetching each time)");
        assert_eq!(c.decrypt_with_context(b"ctx", &ct, Some(b"a")).expect("open").expose(), [i]);
        assert_eq!(local.decrypt(&ct, Some(b"a")).expect("open locally").expose(), [i]);
    }
    let by_daemon = c.encrypt_with_context("k", b"ctx", b"d", None).expect("seal");
    assert_eq!(local.decrypt(&by_daemon, None).expect("open").expose(), b"d");
    assert!(matches!(local.decrypt(&by_daemon, Some(b"x")), Err(Error::IntegrityCheckFailed(_))));
    let _ = local.is_locked(); // true unless RLIMIT_MEMLOCK is exhausted; either is allowed
}

#[test]
fn a_caller_without_export_access_gets_no_data_key() {
    const TEST: &str = "a_caller_without_export_access_gets_no_data_key";
    if let Some(socket) = common::child_argument() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
        let answer = rt.block_on(async {
            let c = Client::connect(&socket).await.expect("connect");
            let sealed = c.encrypt_with_context("k1", b"c", b"x", None).await.is_ok();
            (sealed, c.envelope("k1", b"c").await.map(|_| ()))
        });
        let (code, message) = match &answer.1 {
            Ok(()) => ("ok".to_owned(), String::new()),
            Err(e) => (e.code().map_or("client", |c| c.name()).to_owned(), e.to_string()),
        };
        common::child_report(&serde_json::json!({
            "use_ok": answer.0, "code": code, "message": message,
        }));
        return;
    }
    let Some((u1, _)) = common::test_users() else { return };
    let rules = format!(
        "[[policy]]\nname = \"use-only\"\nusers = [\"{}\"]\nkeks = [\"k1\"]\nallow = [\"use\"]\n",
        u1.name
    );
    let d = Daemon::start_shared("socket_mode = \"0666\"", &rules);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
    rt.block_on(async { client(&d).await.generate_kek("k1").await.expect("kek") });
    let socket = d.socket.to_str().expect("utf-8");
    let reports = common::run_self_as(&u1, TEST, socket, d.dir.path());
    let r = &reports[0];
    assert_eq!(r["use_ok"], true, "use access still seals in the daemon: {r}");
    assert_eq!(r["code"], "permission_denied", "{r}");
    let message = r["message"].as_str().unwrap_or_default();
    assert!(message.contains("'envelope_data_key' (export access) on KEK 'k1'"), "{message}");
}
