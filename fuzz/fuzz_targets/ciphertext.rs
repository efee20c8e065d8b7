//! The self-describing ciphertext of `Encrypt`/`Decrypt` (`formats::ciphertext`) arrives from
//! clients and goes to the token. The parser must accept exactly what `begin` writes, and
//! the soft token's AES-GCM on top of it must refuse anything it did not seal without
//! panicking (its tag split is plain slice arithmetic).

#![no_main]

use harpocrates_daemon::backend::soft::cipher::GcmKey;
use harpocrates_daemon::formats::ciphertext::{self, FormatError, HEADER_V1_AES_GCM, OVERHEAD};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match ciphertext::parse(data) {
        Ok(p) => {
            // Serialising the parts again gives back the input, byte for byte.
            let mut again = ciphertext::begin(p.iv, p.sealed.len());
            again.extend_from_slice(p.sealed);
            assert_eq!(again, data);
        }
        Err(FormatError::TooShort(n)) => assert!(n == data.len() && n < OVERHEAD),
        Err(FormatError::UnknownFormat { version, algorithm }) => {
            assert!(data.len() >= OVERHEAD);
            assert_ne!([version, algorithm], HEADER_V1_AES_GCM);
            assert_eq!([version, algorithm], data[..2]);
        }
    }

    // One key of each AES size: a random ciphertext never authenticates, and what a key
    // seals it opens again (the AAD is part of the input so both halves vary).
    let (aad, body) = data.split_at(data.len().min(8));
    for material in [&[0x11u8; 16][..], &[0x22; 24], &[0x33; 32]] {
        let key = GcmKey::new(material).expect("AES key sizes");
        assert!(key.open(data, aad).is_err(), "forged ciphertext accepted");
        let iv = [0x5a; ciphertext::IV_LEN];
        let sealed = key.seal_with_iv(&iv, body, aad).expect("seal");
        assert_eq!(sealed.len(), body.len() + OVERHEAD);
        assert_eq!(ciphertext::parse(&sealed).expect("own output parses").iv, &iv);
        assert_eq!(key.open(&sealed, aad).expect("own output opens").as_slice(), body);
    }
});
