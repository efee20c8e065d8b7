use aes_gcm::aead::consts::U12;
use aes_gcm::{AeadInOut, Aes256Gcm, KeyInit, Nonce};
use xaes_256_gcm::Xaes256Gcm;

use super::*;

fn hex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex")).collect()
}

fn kek() -> KekId {
    KekId { name: "orders".into(), version: 3 }
}

fn key(byte: u8) -> EnvelopeKey {
    EnvelopeKey::new(kek(), &[byte; 32]).expect("key")
}

/// The GCM specification's test cases 13 and 14 (AES-256, zero key and IV): v1's
/// primitive is standard AES-256-GCM.
#[test]
fn nist_gcm_vectors_aes256() {
    let c = Aes256Gcm::new_from_slice(&[0u8; 32]).expect("key");
    let nonce = Nonce::<U12>::from([0u8; 12]);
    let mut empty: [u8; 0] = [];
    let tag = c.encrypt_inout_detached(&nonce, &[], (&mut empty[..]).into()).expect("tc13");
    assert_eq!(tag.to_vec(), hex("530f8afbc74536b9a963b4f1c4cb738b"));
    let mut block = [0u8; 16];
    let tag = c.encrypt_inout_detached(&nonce, &[], (&mut block[..]).into()).expect("tc14");
    assert_eq!(block.to_vec(), hex("cea7403d4d606b6e074ec5d3baf39d18"));
    assert_eq!(tag.to_vec(), hex("d0d1c8a799996bf0265b98b5d48ab919"));
}

/// C2SP's XAES-256-GCM vectors (c2sp.org/XAES-256-GCM): v2's primitive is the standard
/// construction, so any XAES-256-GCM implementation can read our ciphertexts.
#[test]
fn c2sp_xaes_vectors() {
    let cases = [
        ([1u8; 32], &b""[..], "ce546ef63c9cc60765923609", "b33a9a1974e96e52daf2fcf7075e2271"),
        (
            [3u8; 32],
            &b"c2sp.org/XAES-256-GCM"[..],
            "986ec1832593df5443a17943",
            "7fd083bf3fdb41abd740a21f71eb769d",
        ),
    ];
    for (k, aad, ct, tag) in cases {
        let c = Xaes256Gcm::new(&k.into());
        let mut buf = *b"XAES-256-GCM";
        let nonce: [u8; 24] = *b"ABCDEFGHIJKLMNOPQRSTUVWX";
        let t = c.encrypt_inout_detached(&nonce.into(), aad, (&mut buf[..]).into()).expect("seal");
        assert_eq!(buf.to_vec(), hex(ct));
        assert_eq!(t.to_vec(), hex(tag));
    }
}

/// Pins format v1 forever: ciphertexts stored before v2 must keep opening.
#[test]
fn v1_vector_never_changes_and_still_opens() {
    let ct = seal_v1_with_nonce(&key(0x42), b"tenant-7", &[9; 12], b"hello envelope", b"aad")
        .expect("seal");
    assert_eq!(
        ct,
        hex(concat!(
            "e1",
            "06",
            "6f7264657273",
            "00000003",
            "090909090909090909090909",
            "55acc5063eb9222789e21ce2a65c",
            "279191ee63477375d91f62b8210f216b"
        ))
    );
    assert_eq!(
        key(0x42).open(&ct, b"tenant-7", b"aad").expect("open").as_slice(),
        b"hello envelope"
    );
}

/// Pins format v2 forever. If this fails, the format changed and every stored
/// ciphertext would stop decrypting.
#[test]
fn v2_vector_never_changes() {
    let ct =
        key(0x42).seal_with_nonce(b"tenant-7", &[9; 24], b"hello envelope", b"aad").expect("seal");
    assert_eq!(
        ct,
        hex(concat!(
            "e2",
            "06",
            "6f7264657273",
            "00000003",
            "090909090909090909090909090909090909090909090909",
            "0738afdde08a871620b4b2b8c481",
            "37961686ff9f1ac7c6e45ba18ae9deed"
        ))
    );
    assert_eq!(
        key(0x42).open(&ct, b"tenant-7", b"aad").expect("open").as_slice(),
        b"hello envelope"
    );
}

#[test]
fn context_aad_header_and_every_byte_are_authenticated() {
    let k = key(1);
    let ct = k.seal(b"ctx", b"secret", b"a").expect("seal");
    assert_eq!(ct[0], FORMAT_V2);
    assert_eq!(kek_named(&ct).expect("kek"), ("orders", 3));
    assert_eq!(k.open(&ct, b"other", b"a"), Err(EnvelopeError::Integrity));
    assert_eq!(k.open(&ct, b"ctx", b"b"), Err(EnvelopeError::Integrity));
    assert_eq!(key(2).open(&ct, b"ctx", b"a"), Err(EnvelopeError::Integrity));
    for i in 0..ct.len() {
        let mut bad = ct.clone();
        bad[i] ^= 1;
        assert!(k.open(&bad, b"ctx", b"a").is_err(), "flip at {i}");
    }
    for len in 0..ct.len() {
        assert!(k.open(&ct[..len], b"ctx", b"a").is_err(), "cut to {len}");
    }
}

#[test]
fn nonces_differ_and_other_versions_are_named() {
    let k = key(1);
    let a = k.seal(b"ctx", b"same", b"").expect("seal");
    let b = k.seal(b"ctx", b"same", b"").expect("seal");
    assert_ne!(a, b, "a fresh nonce per message");
    let newer = EnvelopeKey::new(KekId { name: "orders".into(), version: 4 }, &[1; 32])
        .expect("key")
        .seal(b"ctx", b"x", b"")
        .expect("seal");
    assert_eq!(
        k.open(&newer, b"ctx", b""),
        Err(EnvelopeError::OtherKek { name: "orders".into(), version: 4 })
    );
}

#[test]
fn bad_keys_and_names_are_refused() {
    assert_eq!(EnvelopeKey::new(kek(), &[0; 16]).unwrap_err(), EnvelopeError::KeyLength(16));
    assert!(matches!(
        EnvelopeKey::new(KekId { name: "bad name".into(), version: 1 }, &[0; 32]),
        Err(EnvelopeError::InvalidKekName(_))
    ));
    assert_eq!(
        kek_named(&[0xE3, 1, b'a']).unwrap_err(),
        EnvelopeError::Malformed("unknown format")
    );
}
