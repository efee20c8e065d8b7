//! Envelope ciphertexts (`keys::envelope`) come from clients in `EnvelopeDecrypt` and
//! `Rewrap`; their header names the KEK version whose data key the daemon derives before
//! anything is authenticated. The header parser must only accept what `seal` writes, and
//! `open` must refuse without panicking.

#![no_main]

use harpocrates_daemon::keys::envelope::{self, DEK_LEN, FORMAT_V1, FORMAT_V2, NONCE_V2_LEN};
use harpocrates_daemon::keys::name::validate_label;
use libfuzzer_sys::fuzz_target;

const TAG_LEN: usize = 16;
const DEK: [u8; DEK_LEN] = [0x42; DEK_LEN];

fuzz_target!(|data: &[u8]| {
    if let Ok(kek) = envelope::kek_of(data) {
        assert!(data[0] == FORMAT_V1 || data[0] == FORMAT_V2, "format {:#x}", data[0]);
        assert!(validate_label(&kek.name).is_ok(), "{kek:?}");
        let header_len = 2 + kek.name.len() + 4;
        let nonce_len = if data[0] == FORMAT_V2 { NONCE_V2_LEN } else { 12 };
        assert!(data.len() >= header_len + nonce_len + TAG_LEN);
        if data[0] == FORMAT_V2 {
            // The header the daemon would write for this KEK version, with this nonce, is
            // the input's prefix: parse and serialise agree.
            let nonce: [u8; NONCE_V2_LEN] =
                data[header_len..header_len + NONCE_V2_LEN].try_into().expect("nonce");
            let resealed = envelope::seal_with_nonce(&kek, &DEK, b"", &nonce, b"", b"")
                .expect("a parsed KEK id can be sealed under");
            assert_eq!(resealed[..header_len + NONCE_V2_LEN], data[..header_len + NONCE_V2_LEN]);
        }
    }
    assert!(envelope::open(data, b"ctx", b"aad", &DEK).is_err(), "forged envelope accepted");

    // Sealing under a well-formed KEK id and opening again gives the plaintext back, and
    // the result's header parses to the same id.
    let (head, plaintext) = data.split_at(data.len().min(4));
    let kek = harpocrates_protocol::KekId {
        name: "orders".into(),
        version: u32::from_be_bytes([0, 0, 0, head.first().copied().unwrap_or(1)]),
    };
    let ct = envelope::seal_with_nonce(&kek, &DEK, head, &[7; NONCE_V2_LEN], plaintext, b"a")
        .expect("seal");
    assert_eq!(envelope::kek_of(&ct).expect("own output parses"), kek);
    assert_eq!(envelope::open(&ct, head, b"a", &DEK).expect("opens").as_slice(), plaintext);
});
