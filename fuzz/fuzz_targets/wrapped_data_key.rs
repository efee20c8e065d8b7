//! Wrapped data keys come from clients in `UnwrapDataKey` and `Rewrap`: a header naming
//! the KEK version (`0xD1`, name length, name, version u32 BE), then a ciphertext the token
//! decrypts with the header as AAD. The header is parsed before any authentication.

#![no_main]

use harpocrates_daemon::backend::soft::cipher::GcmKey;
use harpocrates_daemon::formats::ciphertext::OVERHEAD;
use harpocrates_daemon::keys::manager::parse_wrapped;
use harpocrates_daemon::keys::name::validate_label;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok((kek, header_len)) = parse_wrapped(data) else { return };
    assert_eq!(data[0], 0xD1);
    assert_eq!(usize::from(data[1]), kek.name.len());
    assert_eq!(header_len, 2 + kek.name.len() + 4);
    assert_eq!(&data[2..2 + kek.name.len()], kek.name.as_bytes());
    assert!(validate_label(&kek.name).is_ok(), "{kek:?}");
    let version: [u8; 4] = data[header_len - 4..header_len].try_into().expect("4 bytes");
    assert_eq!(u32::from_be_bytes(version), kek.version);
    assert!(data.len() >= header_len + OVERHEAD);
    // What `unwrap_data_key` then hands the token: the rest, with the header as AAD.
    let (aad, sealed) = data.split_at(header_len);
    // A key no seed was sealed with: nothing the fuzzer makes can carry its tag.
    let key = GcmKey::new(&[0x5c; 32]).expect("AES-256 key");
    assert!(key.open(sealed, aad).is_err(), "forged wrapped key accepted");
});
