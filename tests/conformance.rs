//! One suite, every backend: each test runs against the embedded soft token and against a
//! fresh SoftHSM2 token (PKCS#11 backend), each in its own daemon and temp directory.

mod common;

use common::{Daemon, Token};
use harpocrates::client::{Client, Error};
use harpocrates::protocol::{HealthState, KeyAlgorithm, KeyAttributes, Request, Response};

async fn client(d: &Daemon) -> Client {
    Client::connect(&d.socket).await.expect("connect")
}

async fn keys_are_generated_listed_and_destroyed(token: Token) {
    let d = Daemon::start_on(token, "");
    let c = client(&d).await;
    for bits in [128, 192, 256] {
        let k = c.generate_key(&format!("aes{bits}"), bits).await.expect("keygen");
        assert_eq!(k.attributes, KeyAttributes::aes(bits), "safe defaults");
        assert_eq!(k.id.len(), 16);
    }
    let custom = KeyAttributes {
        extractable: true,
        wrap: true,
        unwrap: true,
        decrypt: false,
        ..KeyAttributes::aes(256)
    };
    c.generate_key_with_attributes("custom", custom).await.expect("keygen with attributes");
    assert!(matches!(c.generate_key("aes128", 128).await, Err(Error::KeyExists(_))));
    assert!(matches!(c.generate_key("odd", 100).await, Err(Error::InvalidRequest(_))));

    let keys = c.list_keys().await.expect("list");
    let labels: Vec<_> = keys.iter().map(|k| k.handle.as_str()).collect();
    assert_eq!(labels, ["aes128", "aes192", "aes256", "custom"]);
    for k in &keys {
        assert_eq!(k.algorithm, KeyAlgorithm::Aes);
    }
    let listed = keys.iter().find(|k| k.handle.as_str() == "custom").expect("custom listed");
    assert_eq!(listed.attributes, custom, "attributes read back from the token");
    assert_eq!(
        keys.iter().find(|k| k.handle.as_str() == "aes192").map(|k| k.attributes.size_bits),
        Some(192)
    );

    c.destroy_key("aes192").await.expect("destroy");
    assert!(matches!(c.destroy_key("aes192").await, Err(Error::KeyNotFound(_))));
    assert!(matches!(c.encrypt("aes192", b"x", None).await, Err(Error::KeyNotFound(_))));
    assert_eq!(c.list_keys().await.expect("list").len(), 3);
}

async fn encryption_round_trips_and_refuses_tampering(token: Token) {
    let d = Daemon::start_on(token, "");
    let c = client(&d).await;
    c.generate_key("k", 256).await.expect("keygen");
    for len in [0usize, 1, 15, 16, 17, 4096, 1 << 20] {
        let pt: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
        let ct = c.encrypt("k", &pt, Some(b"ctx")).await.expect("encrypt");
        assert_eq!(ct.len(), len + 30, "header 2 + IV 12 + tag 16");
        assert_eq!(&ct[..2], &[1, 1], "format version 1, AES-GCM");
        assert_eq!(
            c.decrypt("k", &ct, Some(b"ctx")).await.expect("decrypt").expose(),
            pt.as_slice()
        );
    }
    let ct = c.encrypt("k", b"secret", None).await.expect("encrypt");
    assert_ne!(ct, c.encrypt("k", b"secret", None).await.expect("encrypt"), "fresh IV each time");
    assert_eq!(c.decrypt("k", &ct, None).await.expect("decrypt").expose(), b"secret");
    assert!(matches!(c.decrypt("k", &ct, Some(b"aad")).await, Err(Error::IntegrityCheckFailed(_))));
    for i in [2, 13, 14, ct.len() - 1] {
        let mut bad = ct.clone();
        bad[i] ^= 1;
        assert!(
            matches!(c.decrypt("k", &bad, None).await, Err(Error::IntegrityCheckFailed(_))),
            "flip at {i}"
        );
    }
    let mut relabelled = ct.clone();
    relabelled[0] = 9;
    assert!(matches!(c.decrypt("k", &relabelled, None).await, Err(Error::InvalidRequest(_))));
    assert!(matches!(c.decrypt("k", &ct[..29], None).await, Err(Error::InvalidRequest(_))));

    c.generate_key("other", 256).await.expect("keygen");
    assert!(matches!(c.decrypt("other", &ct, None).await, Err(Error::IntegrityCheckFailed(_))));
    let enc_only = KeyAttributes { decrypt: false, ..KeyAttributes::aes(128) };
    c.generate_key_with_attributes("enc-only", enc_only).await.expect("keygen");
    let ct = c.encrypt("enc-only", b"x", None).await.expect("may encrypt");
    assert!(matches!(c.decrypt("enc-only", &ct, None).await, Err(Error::PermissionDenied(_))));
    assert!(matches!(c.encrypt("ghost", b"x", None).await, Err(Error::KeyNotFound(_))));
}

async fn random_bytes_come_from_the_token(token: Token) {
    let d = Daemon::start_on(token, "");
    let c = client(&d).await;
    for len in [0u32, 1, 32, 1 << 20] {
        assert_eq!(c.generate_random(len).await.expect("random").len(), len as usize);
    }
    let a = c.generate_random(32).await.expect("random");
    let b = c.generate_random(32).await.expect("random");
    assert_ne!(a.expose(), b.expose());
    assert!(matches!(c.generate_random((1 << 20) + 1).await, Err(Error::InvalidRequest(_))));
}

async fn health_describes_the_token(token: Token) {
    let d = Daemon::start_on(token, "");
    let c = client(&d).await;
    c.generate_key("k", 256).await.expect("keygen");
    let h = c.health_check().await.expect("health");
    assert_eq!(h.state, HealthState::Healthy);
    assert!(h.token_reachable);
    assert_eq!(h.key_count, 1);
    assert!(h.active_sessions >= 1 && h.active_sessions <= h.max_sessions, "{h:?}");
    match token {
        Token::Soft => assert_eq!((h.backend.as_str(), h.max_sessions), ("soft", 2)),
        Token::SoftHsm => {
            assert_eq!((h.backend.as_str(), h.max_sessions), ("pkcs11", 10));
            assert_eq!(h.token.label, common::TOKEN_LABEL);
            assert_eq!(h.token.manufacturer, "SoftHSM project");
            assert!(!h.token.serial.is_empty());
        }
    }
    assert_eq!(c.server_info().await.expect("info").backend, h.backend);
}

async fn keys_and_ciphertexts_survive_a_restart(token: Token) {
    let mut d = Daemon::start_on(token, "");
    let c = client(&d).await;
    c.generate_key("persist", 192).await.expect("keygen");
    let ct = c.encrypt("persist", b"kept", Some(b"a")).await.expect("encrypt");
    d.restart();
    let c = client(&d).await;
    assert_eq!(c.decrypt("persist", &ct, Some(b"a")).await.expect("decrypt").expose(), b"kept");
    let keys = c.list_keys().await.expect("list");
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].attributes.size_bits, 192);
}

async fn batches_mix_successes_and_failures(token: Token) {
    let d = Daemon::start_on(token, "");
    let c = client(&d).await;
    c.generate_key("k", 256).await.expect("keygen");
    let answers = c
        .batch()
        .encrypt("k", b"one", None)
        .encrypt("missing", b"two", None)
        .generate_random(8)
        .push(Request::Ping)
        .decrypt("k", b"short", None)
        .generate_key("k", KeyAttributes::aes(256))
        .send()
        .await
        .expect("batch");
    assert_eq!(answers.len(), 6);
    let Ok(Response::Ciphertext(ct)) = &answers[0] else { panic!("{:?}", answers[0]) };
    assert!(matches!(answers[1], Err(Error::KeyNotFound(_))));
    assert!(matches!(&answers[2], Ok(Response::Random(r)) if r.len() == 8));
    assert!(matches!(answers[3], Ok(Response::Pong)));
    assert!(matches!(answers[4], Err(Error::InvalidRequest(_))));
    assert!(matches!(answers[5], Err(Error::KeyExists(_))));
    assert_eq!(c.decrypt("k", ct, None).await.expect("decrypt").expose(), b"one");
}

async fn concurrent_clients_get_their_own_answers(token: Token) {
    let d = Daemon::start_on(token, "");
    let setup = client(&d).await;
    setup.generate_key("k", 256).await.expect("keygen");
    let mut tasks = Vec::new();
    for t in 0..4u32 {
        let c = client(&d).await;
        tasks.push(tokio::spawn(async move {
            for i in 0..100u32 {
                let msg = format!("client {t} message {i}");
                let ct =
                    c.encrypt("k", msg.as_bytes(), Some(&t.to_be_bytes())).await.expect("encrypt");
                let pt = c.decrypt("k", &ct, Some(&t.to_be_bytes())).await.expect("decrypt");
                assert_eq!(pt.expose(), msg.as_bytes());
            }
        }));
    }
    for t in tasks {
        t.await.expect("client task");
    }
}

async fn backups_restore_extractable_keys_only(token: Token) {
    let d = Daemon::start_on(token, "");
    let c = client(&d).await;
    assert!(c.supports_key_backup().await.expect("capability"));
    let attrs = KeyAttributes { extractable: true, wrap: true, ..KeyAttributes::aes(192) };
    c.generate_key_with_attributes("src", attrs).await.expect("keygen");
    let ct = c.encrypt("src", b"backed up", Some(b"ctx")).await.expect("encrypt");
    let blob = c.backup_key("src", b"backup password").await.expect("backup");
    assert!(!blob.windows(9).any(|w| w == b"backed up"));

    let restored = c.restore_key("copy", &blob, b"backup password").await.expect("restore");
    assert_eq!(restored.attributes, attrs);
    assert_eq!(
        c.decrypt("copy", &ct, Some(b"ctx")).await.expect("same key").expose(),
        b"backed up"
    );
    let listed = c.list_keys().await.expect("list");
    assert_eq!(
        listed.iter().find(|k| k.handle.as_str() == "copy").map(|k| k.attributes),
        Some(attrs)
    );

    assert!(matches!(
        c.restore_key("copy", &blob, b"backup password").await,
        Err(Error::KeyExists(_))
    ));
    assert!(matches!(
        c.restore_key("other", &blob, b"wrong password").await,
        Err(Error::IntegrityCheckFailed(_))
    ));
    let mut tampered = blob.clone();
    tampered[blob.len() / 2] ^= 1;
    assert!(c.restore_key("other", &tampered, b"backup password").await.is_err());
    assert!(matches!(
        c.restore_key("other", &blob[..10], b"backup password").await,
        Err(Error::InvalidRequest(_))
    ));
    assert!(matches!(c.backup_key("src", b"short").await, Err(Error::InvalidRequest(_))));
    c.generate_key("locked", 256).await.expect("non-extractable by default");
    assert!(matches!(
        c.backup_key("locked", b"backup password").await,
        Err(Error::PermissionDenied(_))
    ));
    assert!(matches!(c.backup_key("ghost", b"backup password").await, Err(Error::KeyNotFound(_))));
}

/// Key wrap with padding is deterministic, so a backup is portable between backends.
#[tokio::test]
async fn a_backup_moves_between_the_soft_token_and_softhsm2() {
    let soft = Daemon::start_on(Token::Soft, "");
    let hsm = Daemon::start_on(Token::SoftHsm, "");
    let (s, h) = (client(&soft).await, client(&hsm).await);
    let attrs = KeyAttributes { extractable: true, ..KeyAttributes::aes(256) };

    s.generate_key_with_attributes("from-soft", attrs).await.expect("keygen");
    let ct = s.encrypt("from-soft", b"soft to hsm", None).await.expect("encrypt");
    let blob = s.backup_key("from-soft", b"moving password").await.expect("backup");
    h.restore_key("from-soft", &blob, b"moving password").await.expect("restore into SoftHSM2");
    assert_eq!(h.decrypt("from-soft", &ct, None).await.expect("decrypt").expose(), b"soft to hsm");

    h.generate_key_with_attributes("from-hsm", attrs).await.expect("keygen");
    let ct = h.encrypt("from-hsm", b"hsm to soft", None).await.expect("encrypt");
    let blob = h.backup_key("from-hsm", b"moving password").await.expect("backup");
    s.restore_key("from-hsm", &blob, b"moving password").await.expect("restore into soft");
    assert_eq!(s.decrypt("from-hsm", &ct, None).await.expect("decrypt").expose(), b"hsm to soft");
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod soft {
            $(#[tokio::test] async fn $name() { super::$name(super::Token::Soft).await })*
        }
        mod softhsm2 {
            $(#[tokio::test] async fn $name() { super::$name(super::Token::SoftHsm).await })*
        }
    };
}

conformance!(
    keys_are_generated_listed_and_destroyed,
    encryption_round_trips_and_refuses_tampering,
    random_bytes_come_from_the_token,
    health_describes_the_token,
    keys_and_ciphertexts_survive_a_restart,
    batches_mix_successes_and_failures,
    concurrent_clients_get_their_own_answers,
    backups_restore_extractable_keys_only,
);
