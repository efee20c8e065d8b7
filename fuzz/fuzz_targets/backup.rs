//! Key backups (`formats::backup`) are handed to `RestoreKey` by clients. The header carries
//! Argon2id costs that are read before the MAC can be checked, so the parser must refuse
//! costs above its restore ceiling before deriving anything, and never panic.
//!
//! Argon2 is only run in this loop at toy costs: an input whose costs the daemon would
//! accept but that are expensive is skipped, and one above the ceiling must be refused
//! with `InvalidArgument` (were the bound lost, this target would fail instead of slowly
//! allocating gigabytes). Post-MAC parsing is reached by a seal → open round trip.

#![no_main]

use harpocrates_daemon::formats::backup::{self, BackupError, Sealer};
use harpocrates_daemon::formats::kdf::KdfParams;
use harpocrates_protocol::KeyAttributes;
use libfuzzer_sys::fuzz_target;

/// The password of the seed corpus (see `tests/seeds.rs`).
const PASSWORD: &[u8] = b"correct horse battery";
/// The daemon's private `MAX_RESTORE_COST`; lower it here too if it is lowered there.
const RESTORE_MAX: KdfParams = KdfParams { memory_kib: 64 * 1024, iterations: 8, parallelism: 4 };
/// The cheapest costs Argon2id allows: what the round trip seals with.
const TOY: KdfParams = KdfParams { memory_kib: 8, iterations: 1, parallelism: 1 };

fn costs(blob: &[u8]) -> Option<KdfParams> {
    let u32_at = |at: usize| Some(u32::from_le_bytes(blob.get(at..at + 4)?.try_into().ok()?));
    Some(KdfParams { memory_kib: u32_at(9)?, iterations: u32_at(13)?, parallelism: u32_at(17)? })
}

fn open_untrusted(data: &[u8]) {
    if let Some(kdf) = costs(data) {
        let accepted = kdf.check().is_ok()
            && kdf.memory_kib <= RESTORE_MAX.memory_kib
            && kdf.iterations <= RESTORE_MAX.iterations
            && kdf.parallelism <= RESTORE_MAX.parallelism;
        if !accepted {
            let r = backup::open(data, PASSWORD);
            assert!(matches!(r, Err(BackupError::Invalid(_))), "costs {kdf:?} let through");
            return;
        }
        if kdf.memory_kib > 256 || kdf.iterations > 2 {
            return; // legitimately expensive: not worth a fuzz iteration
        }
    }
    match backup::open(data, PASSWORD) {
        // Only a MAC made with the password gets here; the fuzzer cannot forge one, but the
        // seeds were made with it.
        Ok(opened) => assert!(matches!(opened.attributes.size_bits, 128 | 192 | 256)),
        Err(_) => {}
    }
}

fn round_trip(data: &[u8]) {
    let [flags, size, key @ ..] = data else { return };
    let key = &key[..key.len().min(64)];
    let size_bits = [0, 128, 192, 256, u32::from(*size) << 3][usize::from(*size % 5)];
    let attrs = KeyAttributes {
        size_bits,
        extractable: true,
        sensitive: flags & 16 != 0,
        encrypt: flags & 1 != 0,
        decrypt: flags & 2 != 0,
        wrap: flags & 4 != 0,
        unwrap: flags & 8 != 0,
    };
    let sealer = Sealer::new(PASSWORD, TOY).expect("sealer");
    let Ok(wrapped) = backup::kwp_wrap(sealer.keys().wrapping_key(), key) else {
        assert!(key.is_empty(), "key wrap refused {} bytes", key.len());
        return;
    };
    let blob = sealer.finish(&attrs, &wrapped).expect("finish");
    assert!(blob.len() <= backup::MAX_BACKUP_LEN);
    let want_size = if size_bits == 0 { (wrapped.len() as u32 - 8) * 8 } else { size_bits };
    match backup::open(&blob, PASSWORD) {
        Ok(opened) => {
            assert_eq!(opened.attributes, KeyAttributes { size_bits: want_size, ..attrs });
            let value = backup::kwp_unwrap(opened.keys.wrapping_key(), &opened.wrapped)
                .expect("own wrap unwraps");
            assert_eq!(value.as_slice(), key);
        }
        Err(BackupError::Unsupported(_)) => {
            assert!(!matches!(want_size, 128 | 192 | 256), "size {want_size} refused")
        }
        Err(e) => panic!("own backup refused: {e}"),
    }
    assert!(backup::open(&blob, b"wrong password").is_err());
}

fuzz_target!(|data: &[u8]| {
    open_untrusted(data);
    round_trip(data);
});
