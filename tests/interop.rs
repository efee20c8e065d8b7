//! Interoperability with OpenSC's `pkcs11-tool` on the same SoftHSM2 token: keys made by
//! either side are visible to and usable by the other, and a key another process destroys
//! is noticed.

mod common;

use common::{Daemon, PIN, TOKEN_LABEL, Token};
use harpocrates::client::{Client, Error};

#[tokio::test]
async fn keys_cross_between_the_daemon_and_pkcs11_tool() {
    let d = Daemon::start_on(Token::SoftHsm, "");
    let hsm = d.softhsm.as_ref().expect("softhsm");
    let tool = |args: &[&str]| {
        let mut all = vec!["--token-label", TOKEN_LABEL, "--login", "--pin", PIN];
        all.extend_from_slice(args);
        hsm.pkcs11_tool(&all)
    };
    let c = Client::connect(&d.socket).await.expect("connect");

    // A key made by pkcs11-tool is listed and usable through the daemon.
    tool(&["--keygen", "--key-type", "AES:32", "--label", "made-by-opensc", "--id", "a1b2"]);
    let keys = c.list_keys().await.expect("list");
    let ext = keys.iter().find(|k| k.handle.as_str() == "made-by-opensc").expect("listed");
    assert_eq!(ext.attributes.size_bits, 256);
    assert_eq!(ext.id, [0xa1, 0xb2]);
    let ct =
        c.encrypt("made-by-opensc", b"interop", None).await.expect("encrypt with external key");
    assert_eq!(c.decrypt("made-by-opensc", &ct, None).await.expect("decrypt").expose(), b"interop");

    // A key made by the daemon shows up in pkcs11-tool with its label.
    c.generate_key("made-by-harpocrates", 128).await.expect("keygen");
    let listing = tool(&["--list-objects", "--type", "secrkey"]);
    assert!(listing.contains("made-by-harpocrates"), "{listing}");
    assert!(listing.contains("AES"), "{listing}");

    // pkcs11-tool destroys a key whose handle the daemon has cached: the daemon notices
    // (stale handle → fresh lookup → not found) instead of failing obscurely.
    tool(&["--delete-object", "--type", "secrkey", "--label", "made-by-opensc"]);
    assert!(matches!(c.encrypt("made-by-opensc", b"x", None).await, Err(Error::KeyNotFound(_))));
    // ... and a new key under the old label is found again.
    tool(&["--keygen", "--key-type", "AES:16", "--label", "made-by-opensc"]);
    let ct = c.encrypt("made-by-opensc", b"again", None).await.expect("re-created key");
    assert_eq!(c.decrypt("made-by-opensc", &ct, None).await.expect("decrypt").expose(), b"again");
}
