//! The key manager on both backends: KEKs in the token, derived data keys, envelope
//! encryption, and every rotation transition (legal and illegal).

mod common;

use common::{Daemon, Token};
use harpocrates::client::{Client, Error, KekVersionState, RotationStep};

async fn client(d: &Daemon) -> Client {
    Client::connect(&d.socket).await.expect("connect")
}

/// The KEK version an envelope ciphertext names (format: 0xE1/0xE2, n, name, u32 BE version).
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

/// Set in the child process that plays the old code (see `legacy_token_writer`).
const LEGACY_OUT: &str = "HARPOCRATES_TEST_LEGACY_OUT";

/// Ids of the two keys the old code made under each of v1's labels when two daemons raced.
const LEGACY_IDS: [[u8; 16]; 2] = [[0x11; 16], [0x22; 16]];

/// Plays the code before key ids were recorded, in its own process (SoftHSM2 reads
/// `SOFTHSM2_CONF` at C_Initialize, and setting it in this multi-threaded test process
/// would race): a format-1 state for KEK `legacy` (v1 active), two AES and two HMAC keys
/// under v1's labels made directly through cryptoki, and under each of them an envelope
/// and a wrapped data key. Writes `kind hex(ciphertext) hex(plaintext)` lines.
#[test]
#[ignore = "helper: run by duplicated_legacy_labels_still_decrypt in a child process"]
fn legacy_token_writer() {
    use cryptoki::mechanism::Mechanism;
    use cryptoki::object::{Attribute, KeyType, ObjectClass};
    use harpocrates::protocol::KekId;
    use harpocrates_daemon::backend::pkcs11::{Pkcs11Backend, Pkcs11Config, TokenChoice, uri};
    use harpocrates_daemon::backend::{Backend, key_ref};
    use harpocrates_daemon::keys::dek::{self, Purpose};
    use harpocrates_daemon::keys::{envelope, kek::KekState};

    let Ok(out) = std::env::var(LEGACY_OUT) else { return };
    let backend = Pkcs11Backend::open(
        Pkcs11Config {
            library_path: common::SOFTHSM2_MODULE.into(),
            token: TokenChoice::Match(uri::TokenSelector {
                token: Some(common::TOKEN_LABEL.into()),
                ..Default::default()
            }),
            name: "pkcs11",
        },
        zeroize::Zeroizing::new(common::PIN.into()),
    )
    .expect("open the token");
    let raw = backend.context().open_rw_session(backend.slot()).expect("session");
    let pin = cryptoki::types::AuthPin::from(common::PIN.to_owned());
    raw.login(cryptoki::session::UserType::User, Some(&pin)).expect("login");
    let (aes, mac) = ("#kek/legacy/v1/aes", "#kek/legacy/v1/mac");
    for id in LEGACY_IDS {
        let common_attrs = |label: &str| {
            vec![
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Label(label.as_bytes().to_vec()),
                Attribute::Id(id.to_vec()),
                Attribute::Sensitive(true),
                Attribute::Extractable(false),
            ]
        };
        let mut t = common_attrs(aes);
        t.extend([
            Attribute::KeyType(KeyType::AES),
            Attribute::ValueLen(32.into()),
            Attribute::Encrypt(true),
            Attribute::Decrypt(true),
        ]);
        raw.generate_key(&Mechanism::AesKeyGen, &t).expect("aes key");
        let mut t = common_attrs(mac);
        t.extend([
            Attribute::KeyType(KeyType::GENERIC_SECRET),
            Attribute::ValueLen(32.into()),
            Attribute::Sign(true),
            Attribute::Verify(true),
        ]);
        raw.generate_key(&Mechanism::GenericSecretKeyGen, &t).expect("mac key");
    }
    // Format 1, bincode standard: format 1, active 1, no pending, no retired, no
    // destroyed, highest 1, revision 1, no cleanup — behind the u64 BE sequence 1.
    let state = [1u8, 1, 0, 0, 0, 1, 1, 0];
    let decoded = KekState::decode(&state).expect("a format-1 state");
    assert_eq!((decoded.format, decoded.active, decoded.highest), (1, 1, 1));
    let mut value = 1u64.to_be_bytes().to_vec();
    value.extend_from_slice(&state);
    raw.create_object(&[
        Attribute::Class(ObjectClass::DATA),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Application(b"harpocrates".to_vec()),
        Attribute::Label(b"#kek/legacy/state".to_vec()),
        Attribute::Value(value),
    ])
    .expect("state object");

    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let mut s = backend.open_session().expect("backend session");
    let kek = KekId { name: "legacy".into(), version: 1 };
    let mut lines = String::new();
    for id in LEGACY_IDS {
        let text = format!("sealed under the key with id {:02x}", id[0]);
        let prk = s.hmac_sha256(&key_ref(mac, &id), b"ctx").expect("hmac");
        let dek = dek::expand(&prk, 32, Purpose::Envelope).expect("expand");
        let ct = envelope::seal(&kek, &dek, b"ctx", text.as_bytes(), b"").expect("seal");
        lines.push_str(&format!("envelope {} {}\n", hex(&ct), hex(text.as_bytes())));
        let data_key = [id[0]; 32];
        let mut header = vec![0xD1, 6];
        header.extend_from_slice(b"legacy");
        header.extend_from_slice(&1u32.to_be_bytes());
        let sealed = s.encrypt(&key_ref(aes, &id), &data_key, &header).expect("wrap");
        let mut wrapped = header;
        wrapped.extend_from_slice(&sealed);
        lines.push_str(&format!("wrapped {} {}\n", hex(&wrapped), hex(&data_key)));
    }
    std::fs::write(out, lines).expect("write ciphertexts");
}

/// Ciphertexts written by the code before key ids were recorded, under a KEK whose v1
/// label names two keys each (two daemons raced its creation), still open after the
/// upgrade: every candidate key is tried until the GCM tag verifies. New versions then
/// record their ids.
#[tokio::test]
async fn duplicated_legacy_labels_still_decrypt() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hsm = common::SoftHsm::init(&dir.path().join("softhsm"), common::TOKEN_LABEL);
    let out = dir.path().join("legacy.txt");
    let helper = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", "legacy_token_writer", "--ignored", "--nocapture", "--test-threads=1"])
        .env("SOFTHSM2_CONF", &hsm.conf)
        .env(LEGACY_OUT, &out)
        .output()
        .expect("run the helper");
    assert!(
        helper.status.success(),
        "helper: {}{}",
        String::from_utf8_lossy(&helper.stdout),
        String::from_utf8_lossy(&helper.stderr)
    );
    let unhex = |h: &str| {
        (0..h.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&h[i..i + 2], 16).expect("hex"))
            .collect()
    };
    let written: Vec<(String, Vec<u8>, Vec<u8>)> = std::fs::read_to_string(&out)
        .expect("helper output")
        .lines()
        .map(|l| {
            let mut f = l.split(' ');
            let kind = f.next().expect("kind").to_owned();
            (kind, unhex(f.next().expect("ct")), unhex(f.next().expect("pt")))
        })
        .collect();
    assert_eq!(written.len(), 4);

    let conf = hsm.conf.to_str().expect("utf-8").to_owned();
    let d = Daemon::start_external(
        common::PIN,
        &format!(
            "library_path = {:?}\ntoken_label = {:?}",
            common::SOFTHSM2_MODULE,
            common::TOKEN_LABEL
        ),
        "",
        &[("SOFTHSM2_CONF", &conf)],
    );
    let c = client(&d).await;
    let check = |c: Client, written: Vec<(String, Vec<u8>, Vec<u8>)>| async move {
        for (kind, ct, want) in &written {
            let got = match kind.as_str() {
                "envelope" => {
                    c.decrypt_with_context(b"ctx", ct, None).await.map(|p| p.expose().to_vec())
                }
                _ => c.unwrap_data_key(ct).await.map(|k| k.dek.expose().to_vec()),
            };
            assert_eq!(&got.unwrap_or_else(|e| panic!("{kind} does not open: {e}")), want);
        }
        c
    };
    let c = check(c, written.clone()).await;
    // New data under the duplicated version opens too, and so does everything after a
    // rotation, whose version records its key ids.
    let fresh = c.encrypt_with_context("legacy", b"ctx", b"new at v1", None).await.expect("seal");
    for step in [RotationStep::Prepare, RotationStep::Validate, RotationStep::Commit] {
        c.rotate("legacy", step).await.expect("rotate a legacy KEK");
    }
    let c = check(c, written).await;
    assert_eq!(
        c.decrypt_with_context(b"ctx", &fresh, None).await.expect("fresh").expose(),
        b"new at v1"
    );
    let v2 = c.encrypt_with_context("legacy", b"ctx", b"at v2", None).await.expect("seal v2");
    assert_eq!(version_of(&v2), 2);
    assert_eq!(c.decrypt_with_context(b"ctx", &v2, None).await.expect("v2").expose(), b"at v2");
}

/// A KEK version that does not exist is reported once, clearly.
#[tokio::test]
async fn a_missing_kek_version_is_named_once() {
    let d = Daemon::start_on(Token::Soft, "");
    let c = client(&d).await;
    c.generate_kek("k1").await.expect("kek");
    let ct = c.encrypt_with_context("k1", b"c", b"x", None).await.expect("seal");
    let mut forged = ct.clone();
    let n = usize::from(forged[1]);
    forged[2 + n..6 + n].copy_from_slice(&99u32.to_be_bytes());
    match c.decrypt_with_context(b"c", &forged, None).await {
        Err(Error::KeyNotFound(m)) => {
            assert_eq!(m, "KEK 'k1' has no version 99", "message: {m}");
        }
        other => panic!("expected key_not_found, got {other:?}"),
    }
    match c.rotate("nope", RotationStep::Status).await {
        Err(Error::KeyNotFound(m)) => assert_eq!(m, "no KEK named 'nope'"),
        other => panic!("expected key_not_found, got {other:?}"),
    }
}

/// A batch mixing KEKs and contexts: elements under the same KEK and context share one
/// key lookup, and no element is ever sealed or opened under a neighbour's key.
#[tokio::test]
async fn mixed_envelope_batches_keep_every_element_under_its_own_key() {
    use harpocrates::protocol::{Request, Response};
    let d = Daemon::start();
    let c = client(&d).await;
    c.generate_kek("a").await.expect("kek a");
    c.generate_kek("b").await.expect("kek b");
    let plan: Vec<(&str, &[u8])> =
        vec![("a", b"x"), ("a", b"x"), ("a", b"y"), ("b", b"y"), ("b", b"y"), ("a", b"x")];
    let seal = plan.iter().enumerate().fold(c.batch(), |batch, (i, (kek, ctx))| {
        batch.push(Request::EnvelopeEncrypt {
            kek: (*kek).into(),
            context: ctx.to_vec(),
            plaintext: vec![i as u8; 8].into(),
            aad: None,
        })
    });
    let sealed: Vec<Vec<u8>> = seal
        .send()
        .await
        .expect("batch")
        .into_iter()
        .map(|r| match r.expect("sealed") {
            Response::Ciphertext(ct) => ct,
            other => panic!("{other:?}"),
        })
        .collect();
    for (i, ((kek, ctx), ct)) in plan.iter().zip(&sealed).enumerate() {
        assert_eq!(harpocrates::protocol::envelope::kek_named(ct).expect("header").0, *kek);
        let plain = c.decrypt_with_context(ctx, ct, None).await.expect("opens alone");
        assert_eq!(plain.expose(), &[i as u8; 8]);
    }
    // Opened together, in a batch that also swaps contexts: the swapped ones fail alone.
    let open =
        plan.iter().zip(&sealed).enumerate().fold(c.batch(), |batch, (i, ((_, ctx), ct))| {
            let context = if i == 2 { b"x".to_vec() } else { ctx.to_vec() };
            batch.push(Request::EnvelopeDecrypt { context, ciphertext: ct.clone(), aad: None })
        });
    let opened = open.send().await.expect("batch");
    for (i, r) in opened.into_iter().enumerate() {
        match (i, r) {
            (2, Err(Error::IntegrityCheckFailed(_))) => {}
            (2, other) => panic!("element 2 opened under the wrong context: {other:?}"),
            (_, Ok(Response::Plaintext(p))) => assert_eq!(p.expose(), &[i as u8; 8]),
            (_, other) => panic!("element {i}: {other:?}"),
        }
    }
}
