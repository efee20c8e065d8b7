//! Crash safety of KEK rotation: the daemon is killed with SIGKILL at every step of a
//! rotation (before and after each token write, via `HARPOCRATES_CRASH_AT`) and started
//! again. Each time the KEK must be in exactly one consistent state, a pending rotation
//! must be completable, and every ciphertext made before the crash must still decrypt.

mod common;

use std::time::Duration;

use common::{Daemon, PIN, TOKEN_LABEL, Token};
use harpocrates::client::{Client, Error, KekInfo, KekVersionState, RotationStep};

use harpocrates_daemon::actors::rotation::CRASH_POINTS as POINTS;

async fn client(d: &Daemon) -> Client {
    Client::connect(&d.socket).await.expect("connect")
}

/// Drives the KEK towards `point`; the call that reaches it never answers.
async fn drive(c: &Client, point: &str) -> Vec<Vec<u8>> {
    let dies = |r: Result<KekInfo, Error>| {
        assert!(
            matches!(r, Err(Error::ConnectionLost(_))),
            "{point}: expected the daemon to die, got {r:?}"
        );
    };
    if point.starts_with("create") {
        dies(c.generate_kek("k").await);
        return Vec::new();
    }
    c.generate_kek("k").await.expect("kek");
    let mut cts = vec![c.encrypt_with_context("k", b"ctx", b"v1 data", None).await.expect("seal")];
    let phase = point.split(':').next().unwrap_or_default();
    if phase == "retire" {
        for step in [RotationStep::Prepare, RotationStep::Validate, RotationStep::Commit] {
            c.rotate("k", step).await.expect("rotate");
        }
        cts.push(c.encrypt_with_context("k", b"ctx", b"v2 data", None).await.expect("seal"));
        dies(c.retire_kek_version("k", 1, true).await);
        return cts;
    }
    let steps: &[RotationStep] = match phase {
        "prepare" => &[RotationStep::Prepare],
        "validate" => &[RotationStep::Prepare, RotationStep::Validate],
        "commit" => &[RotationStep::Prepare, RotationStep::Validate, RotationStep::Commit],
        "rollback" => &[RotationStep::Prepare, RotationStep::Rollback],
        other => panic!("unknown phase {other}"),
    };
    let (last, earlier) = steps.split_last().expect("steps");
    for step in earlier {
        c.rotate("k", *step).await.expect("earlier step");
    }
    dies(c.rotate("k", *last).await);
    cts
}

/// After the restart: one consistent state, completable, and nothing lost.
async fn check(c: &Client, point: &str, cts: &[Vec<u8>]) {
    if point.starts_with("create:") && point != "create:after-state" {
        // The state was never written: no KEK, and creating it works (orphans replaced).
        assert!(c.list_keks().await.expect("list").is_empty(), "{point}");
        c.generate_kek("k").await.expect("create after crash");
    }
    let info = c.rotate("k", RotationStep::Status).await.expect("status");
    let expect_pending = matches!(
        point,
        "prepare:after-state"
            | "validate:before-effects"
            | "validate:after-effects"
            | "validate:before-state"
            | "validate:after-state"
            | "commit:before-state"
            | "rollback:before-state"
    );
    assert_eq!(info.pending_version.is_some(), expect_pending, "{point}: {info:?}");
    if let Some(v) = info.pending_version {
        // A pending rotation can be finished.
        if !info.pending_validated {
            c.validate_rotation("k").await.expect("validate after crash");
        }
        let done = c.commit_rotation("k").await.expect("commit after crash");
        assert_eq!(done.active_version, v, "{point}");
    }
    for (i, ct) in cts.iter().enumerate() {
        let got = c.decrypt_with_context(b"ctx", ct, None).await;
        if matches!(point, "retire:after-state" | "retire:after-destroy") && i == 0 {
            assert!(
                matches!(got, Err(Error::InvalidState(_))),
                "{point}: v1 was destroyed before the crash"
            );
        } else {
            let want: &[u8] = if i == 0 { b"v1 data" } else { b"v2 data" };
            assert_eq!(got.expect("decrypts after the crash").expose(), want, "{point}");
        }
    }
    // And the KEK keeps working: a full rotation after recovery.
    for step in [RotationStep::Prepare, RotationStep::Validate, RotationStep::Commit] {
        c.rotate("k", step)
            .await
            .unwrap_or_else(|e| panic!("{point}: rotation after recovery: {e}"));
    }
    let ct = c.encrypt_with_context("k", b"ctx", b"fresh", None).await.expect("seal");
    assert_eq!(c.decrypt_with_context(b"ctx", &ct, None).await.expect("open").expose(), b"fresh");
}

/// On SoftHSM2, no key of a destroyed version may be left in the token once the KEK
/// has been changed again after the crash.
fn no_leftover_keys(d: &Daemon, info: &KekInfo, point: &str) {
    let Some(hsm) = &d.softhsm else { return };
    let listing =
        hsm.pkcs11_tool(&["--token-label", TOKEN_LABEL, "--login", "--pin", PIN, "--list-objects"]);
    for v in info.versions.iter().filter(|v| v.state == KekVersionState::Destroyed) {
        let prefix = format!("#kek/k/v{}/", v.version);
        assert!(
            !listing.contains(&prefix),
            "{point}: keys of destroyed v{} remain:\n{listing}",
            v.version
        );
    }
}

async fn every_crash_point(token: Token) {
    for point in POINTS {
        let mut d = Daemon::start_on_env(token, "", &[("HARPOCRATES_CRASH_AT", point)]);
        let c = client(&d).await;
        let cts = drive(&c, point).await;
        d.set_env("HARPOCRATES_CRASH_AT", None);
        let status = d.wait_and_restart();
        assert!(!status.success(), "{point}: the daemon should have been killed, got {status:?}");
        let c = client(&d).await;
        check(&c, point, &cts).await;
        no_leftover_keys(&d, &c.rotate("k", RotationStep::Status).await.expect("status"), point);
    }
}

#[tokio::test]
async fn soft_token_survives_a_crash_at_every_step() {
    every_crash_point(Token::Soft).await;
}

#[tokio::test]
async fn softhsm2_survives_a_crash_at_every_step() {
    every_crash_point(Token::SoftHsm).await;
}

/// A step that panics inside the coordinator: the request gets a typed error at once
/// (not a hang, not a lost connection), the coordinator restarts from the token's state,
/// and the daemon carries on.
async fn a_panicking_step_restarts_the_coordinator(token: Token) {
    let d = Daemon::start_on_env(token, "", &[("HARPOCRATES_PANIC_AT", "prepare:after-state")]);
    let c = client(&d).await;
    c.generate_kek("k").await.expect("kek");
    let ct = c.encrypt_with_context("k", b"ctx", b"v1 data", None).await.expect("seal");
    let got = tokio::time::timeout(Duration::from_secs(10), c.rotate("k", RotationStep::Prepare))
        .await
        .expect("the request in flight is answered");
    assert!(matches!(got, Err(Error::OperationFailed(_))), "{token:?}: {got:?}");
    // The state write happened before the panic; the restarted coordinator reads it.
    let info = c.rotate("k", RotationStep::Status).await.expect("status");
    assert_eq!(info.pending_version, Some(2), "{token:?}: {info:?}");
    c.validate_rotation("k").await.expect("validate after the restart");
    assert_eq!(c.commit_rotation("k").await.expect("commit").active_version, 2);
    assert_eq!(
        c.decrypt_with_context(b"ctx", &ct, None).await.expect("old data").expose(),
        b"v1 data"
    );
    for step in [RotationStep::Prepare, RotationStep::Validate, RotationStep::Commit] {
        c.rotate("k", step).await.expect("a full rotation after the restart");
    }
    assert!(d.output().contains("rotation coordinator restarted"), "{token:?}");
}

#[tokio::test]
async fn soft_token_coordinator_survives_a_panic() {
    a_panicking_step_restarts_the_coordinator(Token::Soft).await;
}

#[tokio::test]
async fn softhsm2_coordinator_survives_a_panic() {
    a_panicking_step_restarts_the_coordinator(Token::SoftHsm).await;
}
