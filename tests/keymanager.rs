//! The key manager on both backends: KEKs in the token, derived data keys, envelope
//! encryption, and every rotation transition (legal and illegal).

mod common;

use common::{Daemon, Token};
use harpocrates::client::{Client, Error, KekVersionState, RotationStep};

async fn client(d: &Daemon) -> Client {
    Client::connect(&d.socket).await.expect("connect")
}

/// The KEK version an envelope ciphertext names (format: 0xE1, n, name, u32 BE version).
fn version_of(ct: &[u8]) -> u32 {
    let n = usize::from(ct[1]);
    u32::from_be_bytes(ct[2 + n..6 + n].try_into().expect("4 bytes"))
}

async fn keks_derive_and_envelope(token: Token) {
    let d = Daemon::start_on(token, "");
    let c = client(&d).await;
    let info = c.generate_kek("orders").await.expect("generate kek");
    assert_eq!((info.active_version, info.pending_version), (1, None));
    assert!(matches!(c.generate_kek("orders").await, Err(Error::KeyExists(_))));
    assert!(matches!(c.generate_kek("bad name").await, Err(Error::InvalidRequest(_))));
    assert_eq!(c.list_keks().await.expect("list").len(), 1);
    assert!(c.list_keys().await.expect("keys").is_empty(), "KEK internals are not listed as keys");
    assert!(matches!(
        c.encrypt("#kek/orders/v1/aes", b"x", None).await,
        Err(Error::InvalidRequest(_))
    ));

    let a = c.derive_data_key("orders", b"tenant-1", 32).await.expect("derive");
    let again = c.derive_data_key("orders", b"tenant-1", 32).await.expect("derive");
    let other = c.derive_data_key("orders", b"tenant-2", 32).await.expect("derive");
    let short = c.derive_data_key("orders", b"tenant-1", 16).await.expect("derive");
    assert_eq!(a.dek.expose(), again.dek.expose(), "deterministic");
    assert_ne!(a.dek.expose(), other.dek.expose(), "context-bound");
    assert_eq!(short.dek.len(), 16);
    assert_ne!(short.dek.expose(), &a.dek.expose()[..16], "lengths are unrelated keys");
    assert_eq!((a.kek.name.as_str(), a.kek.version), ("orders", 1));
    assert!(matches!(c.derive_data_key("orders", b"x", 8).await, Err(Error::InvalidRequest(_))));
    assert!(matches!(c.derive_data_key("nope", b"x", 32).await, Err(Error::KeyNotFound(_))));

    let ct = c
        .encrypt_with_context("orders", b"tenant-1", b"card 4242", Some(b"row 7"))
        .await
        .expect("seal");
    assert_eq!(version_of(&ct), 1);
    let pt = c.decrypt_with_context(b"tenant-1", &ct, Some(b"row 7")).await.expect("open");
    assert_eq!(pt.expose(), b"card 4242");
    assert!(matches!(
        c.decrypt_with_context(b"tenant-2", &ct, Some(b"row 7")).await,
        Err(Error::IntegrityCheckFailed(_))
    ));
    assert!(matches!(
        c.decrypt_with_context(b"tenant-1", &ct, None).await,
        Err(Error::IntegrityCheckFailed(_))
    ));
    let mut bad = ct.clone();
    *bad.last_mut().expect("non-empty") ^= 1;
    assert!(matches!(
        c.decrypt_with_context(b"tenant-1", &bad, Some(b"row 7")).await,
        Err(Error::IntegrityCheckFailed(_))
    ));

    let dk = c.generate_data_key("orders").await.expect("generate data key");
    let wrapped = dk.wrapped.clone().expect("wrapped");
    let back = c.unwrap_data_key(&wrapped).await.expect("unwrap");
    assert_eq!(back.dek.expose(), dk.dek.expose());
    assert_eq!(dk.dek.len(), 32);
}

async fn rotation_walks_every_transition(token: Token) {
    let d = Daemon::start_on(token, "");
    let c = client(&d).await;
    c.generate_kek("k").await.expect("kek");
    for step in [RotationStep::Validate, RotationStep::Commit, RotationStep::Rollback] {
        assert!(
            matches!(c.rotate("k", step).await, Err(Error::InvalidState(_))),
            "{step:?} before prepare"
        );
    }
    let before = c.encrypt_with_context("k", b"ctx", b"written at v1", None).await.expect("seal");

    let info = c.prepare_rotation("k").await.expect("prepare");
    assert_eq!(
        (info.active_version, info.pending_version, info.pending_validated),
        (1, Some(2), false)
    );
    assert!(matches!(c.prepare_rotation("k").await, Err(Error::InvalidState(_))), "prepare twice");
    assert!(
        matches!(c.commit_rotation("k").await, Err(Error::InvalidState(_))),
        "commit before validate"
    );
    let during = c
        .encrypt_with_context("k", b"ctx", b"during", None)
        .await
        .expect("encryption never pauses");
    assert_eq!(version_of(&during), 1, "v stays active until commit");

    let info = c.rollback_rotation("k").await.expect("rollback");
    assert_eq!((info.active_version, info.pending_version), (1, None));
    assert!(info.versions.iter().any(|v| v.version == 2 && v.state == KekVersionState::Destroyed));

    c.prepare_rotation("k").await.expect("prepare again");
    let info = c.validate_rotation("k").await.expect("validate");
    assert!(info.pending_validated);
    let info = c.commit_rotation("k").await.expect("commit");
    assert_eq!(
        (info.active_version, info.pending_version),
        (3, None),
        "destroyed v2 is never reused"
    );
    let after = c.encrypt_with_context("k", b"ctx", b"after", None).await.expect("seal");
    assert_eq!(version_of(&after), 3);
    let status = c.rotate("k", RotationStep::Status).await.expect("status");
    assert_eq!(
        status.versions.iter().find(|v| v.version == 1).map(|v| v.state),
        Some(KekVersionState::DecryptOnly)
    );

    // Two more rotations: the v1 ciphertext still decrypts, and rewrap moves it forward.
    for _ in 0..2 {
        for step in [RotationStep::Prepare, RotationStep::Validate, RotationStep::Commit] {
            c.rotate("k", step).await.expect("rotate");
        }
    }
    assert_eq!(c.rotate("k", RotationStep::Status).await.expect("status").active_version, 5);
    for (ct, text) in [(&before, &b"written at v1"[..]), (&during, b"during"), (&after, b"after")] {
        assert_eq!(
            c.decrypt_with_context(b"ctx", ct, None).await.expect("old ciphertext").expose(),
            text
        );
    }
    let moved = c.rewrap(b"ctx", &before, None).await.expect("rewrap");
    assert_eq!(version_of(&moved), 5);
    assert_eq!(
        c.decrypt_with_context(b"ctx", &moved, None).await.expect("rewrapped").expose(),
        b"written at v1"
    );

    // A wrapped data key made at v5 survives a rotation and can be moved forward too.
    let dk = c.generate_data_key("k").await.expect("data key");
    for step in [RotationStep::Prepare, RotationStep::Validate, RotationStep::Commit] {
        c.rotate("k", step).await.expect("rotate");
    }
    let rewrapped =
        c.rewrap(b"", dk.wrapped.as_deref().expect("wrapped"), None).await.expect("rewrap key");
    let back = c.unwrap_data_key(&rewrapped).await.expect("unwrap");
    assert_eq!((back.dek.expose(), back.kek.version), (dk.dek.expose(), 6));

    // Retire: never the active version; a retired version refuses; destroy is final.
    assert!(matches!(c.retire_kek_version("k", 6, false).await, Err(Error::InvalidState(_))));
    let info = c.retire_kek_version("k", 1, false).await.expect("retire v1");
    assert!(info.versions.iter().any(|v| v.version == 1 && v.state == KekVersionState::Retired));
    assert!(matches!(
        c.decrypt_with_context(b"ctx", &before, None).await,
        Err(Error::InvalidState(_))
    ));
    assert_eq!(
        c.decrypt_with_context(b"ctx", &moved, None).await.expect("v5 still fine").expose(),
        b"written at v1"
    );
    c.retire_kek_version("k", 1, true).await.expect("destroy v1");
    assert!(matches!(c.retire_kek_version("k", 1, true).await, Err(Error::InvalidState(_))));
    assert!(matches!(
        c.decrypt_with_context(b"ctx", &before, None).await,
        Err(Error::InvalidState(_))
    ));
}

async fn state_survives_a_restart(token: Token) {
    let mut d = Daemon::start_on(token, "");
    let c = client(&d).await;
    c.generate_kek("k").await.expect("kek");
    let ct = c.encrypt_with_context("k", b"c", b"kept", None).await.expect("seal");
    c.prepare_rotation("k").await.expect("prepare");
    d.restart();
    let c = client(&d).await;
    let info = c.rotate("k", RotationStep::Status).await.expect("status");
    assert_eq!(
        (info.active_version, info.pending_version),
        (1, Some(2)),
        "pending survives in the token"
    );
    c.validate_rotation("k").await.expect("validate");
    c.commit_rotation("k").await.expect("commit");
    assert_eq!(c.decrypt_with_context(b"c", &ct, None).await.expect("decrypt").expose(), b"kept");
}

macro_rules! both {
    ($($name:ident),* $(,)?) => {
        mod soft {
            $(#[tokio::test] async fn $name() { super::$name(super::Token::Soft).await })*
        }
        mod softhsm2 {
            $(#[tokio::test] async fn $name() { super::$name(super::Token::SoftHsm).await })*
        }
    };
}

both!(keks_derive_and_envelope, rotation_walks_every_transition, state_survives_a_restart);
