//! The seed corpora under `corpus/<target>/`. `HARPO_WRITE_SEEDS=1 cargo test --test seeds`
//! rewrites them; a plain `cargo test` checks each seed is still what its name claims
//! (`valid-*` parses, `bad-*` is refused), so a format change cannot quietly turn a corpus
//! into noise that never reaches the code behind the parser.

use std::fs;
use std::path::{Path, PathBuf};

use bytes::BytesMut;
use harpocrates_daemon::backend::soft::cipher::GcmKey;
use harpocrates_daemon::config::Settings;
use harpocrates_daemon::config::raw::RawConfig;
use harpocrates_daemon::formats::backup::{self, Sealer};
use harpocrates_daemon::formats::ciphertext;
use harpocrates_daemon::formats::kdf::KdfParams;
use harpocrates_daemon::keys::envelope;
use harpocrates_protocol::{
    ErrorCode, KekId, KeyAttributes, MessageCodec, Request, RequestFrame, Response, ResponseFrame,
    WireError,
};
use tokio_util::codec::{Decoder, Encoder};

/// Must match `PASSWORD` in `fuzz_targets/backup.rs`.
const PASSWORD: &[u8] = b"correct horse battery";
const TOY: KdfParams = KdfParams { memory_kib: 8, iterations: 1, parallelism: 1 };

fn corpus(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus").join(target)
}

fn frame<T: serde::Serialize>(msg: T) -> Vec<u8> {
    let mut buf = BytesMut::new();
    MessageCodec::<(), T>::default().encode(msg, &mut buf).expect("encode");
    buf.to_vec()
}

fn request(id: u64, request: Request) -> Vec<u8> {
    frame(RequestFrame { id, request })
}

fn frame_decoder() -> Vec<(&'static str, Vec<u8>)> {
    // The first byte is the target's knobs: 0x0f = 2 MiB limit, 1-byte chunks;
    // 0xf8 = 16 KiB limit, 106-byte chunks; 0x30 = 64-byte limit.
    let hello = request(1, Request::Hello { version: 1, client_name: "seed".into() });
    let encrypt = request(
        2,
        Request::Encrypt {
            key: "demo".into(),
            plaintext: b"hello".to_vec().into(),
            aad: Some(b"ctx".to_vec()),
        },
    );
    let batch =
        request(3, Request::Batch(vec![Request::Ping, Request::GenerateRandom { len: 32 }]));
    let ok = frame(ResponseFrame { id: 2, result: Ok(Response::Ciphertext(vec![1, 1, 0, 9])) });
    let err = frame(ResponseFrame {
        id: 3,
        result: Err(WireError::new(ErrorCode::KeyNotFound, "no such key")),
    });
    let big =
        request(5, Request::Decrypt { key: "demo".into(), ciphertext: vec![0xab; 80], aad: None });
    let mut trailing = request(4, Request::Ping);
    trailing[3] += 1; // the length now covers one byte the body does not use
    trailing.push(0);
    let knobs = |k: u8, parts: &[&[u8]]| {
        [&[k][..]].iter().chain(parts).flat_map(|p| p.iter().copied()).collect()
    };
    vec![
        ("valid-hello", knobs(0x0f, &[&hello])),
        ("valid-pipelined", knobs(0x0f, &[&hello, &encrypt, &batch])),
        ("valid-chunked", knobs(0xf8, &[&hello, &encrypt])),
        ("valid-response-ok", knobs(0x0f, &[&ok])),
        ("valid-response-err", knobs(0x0f, &[&err])),
        ("bad-too-large", knobs(0x30, &[&hello, &big])),
        ("bad-trailing-byte", knobs(0x0f, &[&trailing])),
        ("bad-length-max", knobs(0x0f, &[&[0xff, 0xff, 0xff, 0xff, 0]])),
    ]
}

/// Decodes every frame of a `frame_decoder` seed; `None` when one is refused.
fn decode_frames(seed: &[u8]) -> Option<usize> {
    let (&knobs, rest) = seed.split_first()?;
    let mut codecs = 0;
    let mut frames = 0;
    for server in [true, false] {
        let max = 64u32 << (knobs & 0x0f);
        let mut buf = BytesMut::from(rest);
        let mut n = 0;
        while !buf.is_empty() {
            let ok = if server {
                matches!(
                    MessageCodec::<RequestFrame, ()>::new(max).decode(&mut buf),
                    Ok(Some(Ok(_)))
                )
            } else {
                matches!(
                    MessageCodec::<ResponseFrame, ()>::new(max).decode(&mut buf),
                    Ok(Some(Ok(_)))
                )
            };
            if !ok {
                n = 0;
                break;
            }
            n += 1;
        }
        if n > 0 {
            codecs += 1;
            frames = n;
        }
    }
    (codecs > 0).then_some(frames)
}

fn ciphertext() -> Vec<(&'static str, Vec<u8>)> {
    let iv = [9; ciphertext::IV_LEN];
    let seal = |key: &[u8], plain: &[u8], aad: &[u8]| {
        GcmKey::new(key).expect("key").seal_with_iv(&iv, plain, aad).expect("seal")
    };
    let mut foreign = seal(&[1; 32], b"hello", b"");
    foreign[0] = 2;
    vec![
        ("valid-aes128-empty", seal(&[0x11; 16], b"", b"")),
        ("valid-aes256", seal(&[0x33; 32], b"hello ciphertext", b"")),
        ("valid-aes192-aad", seal(&[0x22; 24], b"with aad", b"aad")),
        ("bad-too-short", vec![1; ciphertext::OVERHEAD - 1]),
        ("bad-version-2", foreign),
    ]
}

fn envelope() -> Vec<(&'static str, Vec<u8>)> {
    let seal = |name: &str, version, plain: &[u8]| {
        let kek = KekId { name: name.into(), version };
        envelope::seal_with_nonce(&kek, &[0x42; 32], b"tenant-7", &[9; 24], plain, b"aad")
            .expect("seal")
    };
    let mut bad_name = seal("orders", 3, b"x");
    bad_name[4] = b' ';
    let mut zero_name = seal("orders", 3, b"x");
    zero_name[1] = 0;
    // Format v2 (what `seal` writes); v1 seeds made before it stay in the corpus.
    let truncated = seal("orders", 3, b"")[..2 + 6 + 4 + 24 + 15].to_vec();
    vec![
        ("valid-orders-v3", seal("orders", 3, b"hello envelope")),
        ("valid-long-name", seal(&"k".repeat(128), u32::MAX, b"")),
        ("valid-odd-label", seal("app/db-key:v1@x+y", 1, &[0; 40])),
        ("bad-name-char", bad_name),
        ("bad-zero-name", zero_name),
        ("bad-truncated", truncated),
    ]
}

fn wrapped_data_key() -> Vec<(&'static str, Vec<u8>)> {
    // The layout of `keys::manager::wrapped_header`, then what the token seals under it.
    let wrapped = |name: &str, version: u32| {
        let mut w = vec![0xD1, name.len() as u8];
        w.extend_from_slice(name.as_bytes());
        w.extend_from_slice(&version.to_be_bytes());
        let sealed = GcmKey::new(&[0x33; 32])
            .expect("key")
            .seal_with_iv(&[5; ciphertext::IV_LEN], &[0x44; 32], &w)
            .expect("seal");
        w.extend_from_slice(&sealed);
        w
    };
    let mut zero_name = wrapped("orders", 1);
    zero_name[1] = 0;
    let short = wrapped("orders", 1)[..2 + 6 + 4 + ciphertext::OVERHEAD - 1].to_vec();
    vec![
        ("valid-orders-v1", wrapped("orders", 1)),
        ("valid-long-name", wrapped(&"k".repeat(128), 77)),
        ("bad-zero-name", zero_name),
        ("bad-too-short", short),
        ("bad-envelope-format", envelope().remove(0).1),
    ]
}

fn backup() -> Vec<(&'static str, Vec<u8>)> {
    let make = |attrs: KeyAttributes, key: &[u8]| {
        let sealer = Sealer::new(PASSWORD, TOY).expect("sealer");
        let wrapped = backup::kwp_wrap(sealer.keys().wrapping_key(), key).expect("wrap");
        sealer.finish(&attrs, &wrapped).expect("finish")
    };
    let aes256 = make(KeyAttributes { extractable: true, ..KeyAttributes::aes(256) }, &[7; 32]);
    let mut gib = aes256.clone();
    gib[9..13].copy_from_slice(&(1024u32 * 1024).to_le_bytes());
    let mut version = aes256.clone();
    version[8] = 2;
    vec![
        ("valid-aes256", aes256.clone()),
        (
            "valid-aes128-size-from-wrap",
            make(KeyAttributes { size_bits: 0, wrap: true, ..KeyAttributes::aes(0) }, &[1; 16]),
        ),
        ("bad-cost-1gib", gib),
        ("bad-version-2", version),
        ("bad-truncated", aes256[..60].to_vec()),
    ]
}

fn config() -> Vec<(&'static str, Vec<u8>)> {
    let soft = r#"backend = "soft"
socket_path = "/run/harpocrates/harpocrates.sock"
socket_mode = "0660"
max_frame = 16777216
queue_depth = 4096
max_connections = 1024
max_in_flight = 1024
shutdown_timeout = "10s"
max_sessions = 2
session_timeout = "30m"
retry_attempts = 3
retry_delay = "5s"
pin_file = "/etc/harpocrates/pin"
kek_refresh = "5s"
dek_cache_size = 10000
dek_cache_ttl = "5m"
log_level = "info"

[soft]
state_dir = "/var/lib/harpocrates/soft"
kdf_memory_kib = 19456
kdf_iterations = 2
kdf_parallelism = 1
"#;
    let pkcs11 = "backend = \"pkcs11\"\npin_env = \"HSM_PIN\"\n\n[pkcs11]\n\
                  uri = \"pkcs11:token=vault%20token;slot-id=3?module-path=/usr/lib/softhsm/libsofthsm2.so\"\n";
    let slot = "backend = \"pkcs11\"\n[pkcs11]\nlibrary_path = \"/m.so\"\nslot_id = 0\n";
    let cloudhsm = "backend = \"cloudhsm\"\npin_credential = \"hsm-pin\"\n\n[cloudhsm]\n\
                    cluster_id = \"cluster-abc\"\nhsm_ca_file = \"/etc/cloudhsm/ca.crt\"\n\
                    hsm_user = \"cu\"\nregion = \"eu-west-1\"\nmax_sessions = 6\n";
    [
        ("valid-empty", ""),
        ("valid-soft-every-field", soft),
        ("valid-pkcs11-uri", pkcs11),
        ("valid-pkcs11-slot", slot),
        ("valid-cloudhsm", cloudhsm),
        ("bad-unknown-field", "backend = \"soft\"\ncolour = \"blue\"\n"),
        ("bad-kdf", "[soft]\nkdf_iterations = 0\n"),
        ("bad-two-selectors", "backend = \"pkcs11\"\n[pkcs11]\nlibrary_path = \"/m.so\"\nslot_id = 1\ntoken_label = \"t\"\n"),
        ("bad-duration", "retry_delay = \"soon\"\n"),
        ("bad-socket-mode", "socket_mode = \"0999\"\n"),
        ("valid-audit-and-policy", "[audit]\nfile = \"/var/log/harpocrates/audit.log\"\njournal = \"all\"\n\n[[policy]]\nname = \"ops\"\nusers = [\"root\"]\nkeks = [\"*\"]\nallow = [\"rotate\", \"admin\"]\n"),
        ("bad-policy-class", "[[policy]]\nuids = [1000]\nkeys = [\"*\"]\nallow = [\"everything\"]\n"),
    ]
    .into_iter()
    .map(|(name, text)| (name, text.as_bytes().to_vec()))
    .collect()
}

fn config_ok(seed: &[u8]) -> bool {
    let text = std::str::from_utf8(seed).expect("UTF-8");
    toml::from_str::<RawConfig>(text).ok().and_then(|raw| Settings::validate(raw).ok()).is_some()
}

/// A chain of a genesis and two events, whole or broken in the ways `verify` names. The
/// first byte is the target's knob (where to split into two files): 0 keeps one file.
fn audit_chain() -> Vec<(&'static str, Vec<u8>)> {
    use harpocrates_protocol::audit::chain::{ChainHead, RecordBody, encode};
    use harpocrates_protocol::{AuditEvent, AuditPhase};
    let event = |op: &str, result: &str| AuditEvent {
        time: "2026-11-29T04:05:06.123456Z".into(),
        uid: 1001,
        gid: 1001,
        pid: Some(42),
        exe: Some("/usr/bin/app".into()),
        conn: 1,
        request: 2,
        element: None,
        op: op.into(),
        class: "use".into(),
        key: Some("orders".into()),
        kek: None,
        version: None,
        phase: AuditPhase::Done,
        result: result.into(),
        latency_us: 17,
    };
    let mut head = ChainHead::default();
    let mut lines = Vec::new();
    for body in [
        RecordBody::Genesis { time: "2026-11-29T04:05:06.000001Z".into(), nonce: [7; 32] },
        RecordBody::Event(event("encrypt", "ok")),
        RecordBody::Event(event("decrypt", "permission_denied")),
    ] {
        let (line, next) = encode(&head, &body);
        lines.push(line.into_bytes());
        head = next;
    }
    let whole = |lines: &[Vec<u8>]| {
        let mut out = vec![0u8];
        lines.iter().for_each(|l| out.extend_from_slice(l));
        out
    };
    let mut changed = whole(&lines);
    let at = changed.len() - 100;
    changed[at] ^= 1;
    let mut swapped = lines.clone();
    swapped.swap(1, 2);
    let mut truncated = whole(&lines);
    truncated.truncate(truncated.len() - 10);
    vec![
        ("valid-chain", whole(&lines)),
        ("bad-changed-byte", changed),
        ("bad-swapped", whole(&swapped)),
        ("bad-truncated", truncated),
        ("bad-no-genesis", whole(&lines[1..])),
    ]
}

fn audit_chain_ok(seed: &[u8]) -> bool {
    use harpocrates_protocol::audit::chain::Verifier;
    let Some((_, body)) = seed.split_first() else { return false };
    let mut v = Verifier::new();
    v.start_file("audit.log").is_ok()
        && body
            .split_inclusive(|b| *b == b'\n')
            .enumerate()
            .all(|(n, line)| v.line(n as u64 + 1, line).is_ok())
        && v.finish().is_ok()
}

fn seeds() -> Vec<(&'static str, Vec<(&'static str, Vec<u8>)>, fn(&[u8]) -> bool)> {
    vec![
        ("frame_decoder", frame_decoder(), |s| decode_frames(s).is_some_and(|n| n > 0)),
        ("ciphertext", ciphertext(), |s| ciphertext::parse(s).is_ok()),
        ("envelope", envelope(), |s| envelope::kek_of(s).is_ok()),
        ("wrapped_data_key", wrapped_data_key(), wrapped_ok),
        ("backup", backup(), |s| backup::open(s, PASSWORD).is_ok()),
        ("config", config(), config_ok),
        ("audit_chain", audit_chain(), audit_chain_ok),
    ]
}

fn wrapped_ok(seed: &[u8]) -> bool {
    harpocrates_daemon::keys::manager::parse_wrapped(seed).is_ok()
}

#[test]
fn seeds_are_what_their_names_say() {
    if std::env::var_os("HARPO_WRITE_SEEDS").is_some() {
        for (target, seeds, _) in seeds() {
            let dir = corpus(target);
            fs::create_dir_all(&dir).expect("mkdir");
            for (name, bytes) in seeds {
                fs::write(dir.join(name), bytes).expect("write seed");
            }
        }
    }
    for (target, generated, valid) in seeds() {
        let dir = corpus(target);
        let mut names: Vec<String> = fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.expect("entry").file_name().into_string().expect("UTF-8 name"))
            .collect();
        names.sort();
        assert!(names.len() >= generated.len(), "{target}: seeds missing; set HARPO_WRITE_SEEDS=1");
        for name in names {
            let seed = fs::read(dir.join(&name)).expect("read seed");
            assert!(seed.len() <= 4096, "{target}/{name}: keep seeds small");
            let want = name.starts_with("valid-");
            assert_eq!(valid(&seed), want, "{target}/{name}");
        }
    }
}
