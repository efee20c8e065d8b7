//! A token key's encryption budget (random 96-bit IVs: NIST SP 800-38D §8.3 allows 2^32
//! per key), shown at an artificially low limit: the key refuses past it, the count
//! survives a restart, decryption goes on, and a new key starts afresh.

mod common;

use common::{Daemon, Token};
use harpocrates::client::{Client, Error};

#[tokio::test]
async fn a_key_refuses_past_its_limit_even_after_a_restart() {
    let mut d = Daemon::start_on(Token::SoftHsm, "max_encryptions_per_key = 5");
    let c = Client::connect(&d.socket).await.expect("connect");
    c.generate_key("k", 256).await.expect("key");
    let mut sealed = Vec::new();
    for i in 0..5u8 {
        sealed.push(c.encrypt("k", &[i; 16], None).await.expect("within the limit"));
    }
    let refused = c.encrypt("k", b"one too many", None).await.unwrap_err();
    assert!(
        matches!(&refused, Error::InvalidState(m) if m.contains("5 encryptions")),
        "{refused:?}"
    );
    drop(c);

    d.restart();
    let c = Client::connect(&d.socket).await.expect("reconnect");
    let again = c.encrypt("k", b"after restart", None).await.unwrap_err();
    assert!(matches!(again, Error::InvalidState(_)), "{again:?}");
    // What it sealed still opens.
    for (i, ct) in sealed.iter().enumerate() {
        assert_eq!(c.decrypt("k", ct, None).await.expect("decrypt").expose(), &[i as u8; 16]);
    }
    // A new key, and a key re-made under the old label, start with a full budget.
    c.generate_key("fresh", 256).await.expect("key");
    c.encrypt("fresh", b"x", None).await.expect("new key encrypts");
    c.destroy_key("k").await.expect("destroy");
    c.generate_key("k", 256).await.expect("re-made");
    for _ in 0..5 {
        c.encrypt("k", b"y", None).await.expect("a re-made key starts at zero");
    }
    assert!(c.encrypt("k", b"z", None).await.is_err());

    // Names of keys that do not exist cost nothing: no count, no record in the token.
    for i in 0..20 {
        let missing = c.encrypt(&format!("missing-{i}"), b"x", None).await.unwrap_err();
        assert!(matches!(missing, Error::KeyNotFound(_)), "{missing:?}");
    }
    let hsm = d.softhsm.as_ref().expect("softhsm");
    let data = hsm.list_objects("data");
    assert!(data.contains("harpocrates-usage/k"), "the budget records are listed: {data}");
    assert!(!data.contains("missing-"), "a record was made for a missing key: {data}");
}
