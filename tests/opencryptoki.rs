//! The PKCS#11 backend on a second, independent implementation: opencryptoki's software
//! token. It has no AES-GCM and no AES key wrap, so this checks what it can do (key
//! generation with attributes, listing, random bytes, destruction, health) and that what
//! it cannot do fails with a typed `Unsupported` error instead of anything worse.
//!
//! The token lives in opencryptoki's system-wide store behind its `pkcsslotd` daemon, so a
//! test cannot make a private one: `.ci/opencryptoki.sh` sets it up (as root) and exports
//! `HARPOCRATES_TEST_OPENCRYPTOKI=<module>|<slot>|<pin>` (or `unavailable:<why>` when the
//! machine cannot run pkcsslotd). Without that variable the test has nothing to run against
//! and says so; in CI (`CI=true`) the variable is required.

mod common;

use common::Daemon;
use harpocrates::client::{Client, Error};
use harpocrates::protocol::{HealthState, KeyAttributes};

#[tokio::test]
async fn the_backend_serves_opencryptoki_too() {
    let Ok(spec) = std::env::var("HARPOCRATES_TEST_OPENCRYPTOKI") else {
        assert!(
            std::env::var("CI").is_err(),
            "CI must run this test: .ci/opencryptoki.sh sets HARPOCRATES_TEST_OPENCRYPTOKI"
        );
        eprintln!("opencryptoki not set up (run .ci/opencryptoki.sh as root); nothing to test");
        return;
    };
    if let Some(reason) = spec.strip_prefix("unavailable:") {
        eprintln!("opencryptoki could not be set up on this machine: {reason}");
        return;
    }
    let mut parts = spec.split('|');
    let (Some(module), Some(slot), Some(pin)) = (parts.next(), parts.next(), parts.next()) else {
        panic!("HARPOCRATES_TEST_OPENCRYPTOKI must be <module>|<slot>|<pin>, got {spec:?}");
    };
    let d = Daemon::start_external(
        pin,
        &format!("library_path = {module:?}\nslot_id = {slot}"),
        "",
        &[],
    );
    let c = Client::connect(&d.socket).await.expect("connect");

    let h = c.health_check().await.expect("health");
    assert_eq!((h.state, h.backend.as_str()), (HealthState::Healthy, "pkcs11"));
    // cryptoki 0.12 cannot parse this token's clock field, so the daemon reports the slot.
    assert!(h.token_reachable && !h.token.label.is_empty(), "{h:?}");

    // Labels unique to this run: the token is shared with earlier runs.
    let tag = std::process::id();
    let (a, b) = (format!("ock-a-{tag}"), format!("ock-b-{tag}"));
    let k = c.generate_key(&a, 128).await.expect("keygen");
    assert_eq!(k.attributes, KeyAttributes::aes(128));
    let attrs = KeyAttributes { extractable: true, decrypt: false, ..KeyAttributes::aes(256) };
    c.generate_key_with_attributes(&b, attrs).await.expect("keygen with attributes");
    assert!(matches!(c.generate_key(&a, 128).await, Err(Error::KeyExists(_))));
    let keys = c.list_keys().await.expect("list");
    assert_eq!(keys.iter().find(|k| k.handle.as_str() == b).map(|k| k.attributes), Some(attrs));

    assert_eq!(c.generate_random(64).await.expect("random").len(), 64);
    let no_gcm = c.encrypt(&a, b"x", None).await;
    assert!(matches!(no_gcm, Err(Error::Unsupported(_))), "no AES-GCM: {no_gcm:?}");
    assert!(!c.supports_key_backup().await.expect("capability"), "no AES key wrap");
    assert!(matches!(c.backup_key(&b, b"long password").await, Err(Error::Unsupported(_))));

    for label in [&a, &b] {
        c.destroy_key(label).await.expect("destroy");
    }
    let keys = c.list_keys().await.expect("list");
    assert!(keys.iter().all(|k| k.handle.as_str() != a && k.handle.as_str() != b));
}
