//! Two daemons on one SoftHSM2 token (two processes, one token directory): they agree on
//! KEK versions because the state lives in the token; after one commits a rotation the
//! other moves to the new version within its `kek_refresh`, and each decrypts everything
//! either produced.

mod common;

use std::time::{Duration, Instant};

use common::{Daemon, PIN, SOFTHSM2_MODULE, TOKEN_LABEL, Token};
use harpocrates::client::{Client, RotationStep};

fn version_of(ct: &[u8]) -> u32 {
    let n = usize::from(ct[1]);
    u32::from_be_bytes(ct[2 + n..6 + n].try_into().expect("4 bytes"))
}

#[tokio::test]
async fn two_daemons_share_kek_state_through_the_token() {
    let refresh = Duration::from_millis(300);
    let a = Daemon::start_on(Token::SoftHsm, "kek_refresh = \"300ms\"");
    let conf = a.softhsm.as_ref().expect("softhsm").conf.to_str().expect("utf-8").to_owned();
    let b = Daemon::start_external(
        PIN,
        &format!("library_path = {SOFTHSM2_MODULE:?}\ntoken_label = {TOKEN_LABEL:?}"),
        "kek_refresh = \"300ms\"",
        &[("SOFTHSM2_CONF", &conf)],
    );
    let (ca, cb) = (
        Client::connect(&a.socket).await.expect("a"),
        Client::connect(&b.socket).await.expect("b"),
    );

    ca.generate_kek("shared").await.expect("kek on a");
    let from_a =
        ca.encrypt_with_context("shared", b"ctx", b"from a at v1", None).await.expect("seal on a");
    assert_eq!(cb.list_keks().await.expect("b lists").len(), 1, "b sees a's KEK");
    let from_b =
        cb.encrypt_with_context("shared", b"ctx", b"from b at v1", None).await.expect("seal on b");
    assert_eq!(version_of(&from_b), 1);
    assert_eq!(
        cb.decrypt_with_context(b"ctx", &from_a, None).await.expect("b opens a's").expose(),
        b"from a at v1"
    );

    for step in [RotationStep::Prepare, RotationStep::Validate, RotationStep::Commit] {
        ca.rotate("shared", step).await.expect("rotate on a");
    }
    let committed = Instant::now();
    // b moves to v2 for new data within its refresh period (plus scheduling slack).
    let from_b2 = loop {
        let ct = cb
            .encrypt_with_context("shared", b"ctx", b"from b after", None)
            .await
            .expect("seal on b");
        if version_of(&ct) == 2 {
            break ct;
        }
        assert!(
            committed.elapsed() < refresh * 3,
            "b still used v1 after {:?}",
            committed.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(committed.elapsed() < refresh * 3);
    let from_a2 =
        ca.encrypt_with_context("shared", b"ctx", b"from a after", None).await.expect("seal on a");
    assert_eq!(version_of(&from_a2), 2);

    for (ct, text) in [
        (&from_a, &b"from a at v1"[..]),
        (&from_b, b"from b at v1"),
        (&from_a2, b"from a after"),
        (&from_b2, b"from b after"),
    ] {
        for c in [&ca, &cb] {
            assert_eq!(
                c.decrypt_with_context(b"ctx", ct, None).await.expect("decrypt").expose(),
                text
            );
        }
    }
    // A rotation on b is seen by a: both agree on the state in the token.
    for step in [RotationStep::Prepare, RotationStep::Validate, RotationStep::Commit] {
        cb.rotate("shared", step).await.expect("rotate on b");
    }
    assert_eq!(
        ca.rotate("shared", RotationStep::Status).await.expect("status on a").active_version,
        3
    );
}
