//! Password-protected key backups (see `docs/backup.md`).
//!
//! ```text
//! "HARPBKUP"              8 bytes magic
//! version                 1 byte (1)
//! Argon2id m, t, p        3 × u32 little-endian
//! salt                    16 bytes
//! algorithm               1 byte (1 = AES)
//! size in bits            u32 little-endian
//! usage flags             1 byte: encrypt 1, decrypt 2, wrap 4, unwrap 8, sensitive 16
//! wrapped length          u16 little-endian
//! wrapped key             AES-256 key wrap with padding (RFC 5649) of the key value
//! MAC                     32 bytes HMAC-SHA256 over everything above
//! ```
//!
//! Argon2id turns the password and salt into 64 bytes: the first 32 wrap the key, the last
//! 32 authenticate the header, so attributes cannot be altered without the password. Key
//! wrap with padding is deterministic, so every backend produces and reads the same bytes:
//! a backup made on one token restores on another.

use harpocrates_protocol::KeyAttributes;
use hmac::{KeyInit, Mac};
use zeroize::Zeroizing;

use crate::formats::kdf::KdfParams;

/// Why a backup could not be made or opened. Messages never carry key material or the
/// password.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The input is not a backup we can read, or an argument is out of range.
    #[error("{0}")]
    Invalid(String),
    /// Wrong password or tampered backup.
    #[error("wrong password or tampered backup")]
    IntegrityCheckFailed,
    /// A backup of a kind this version cannot restore.
    #[error("{0}")]
    Unsupported(String),
    /// Randomness or key wrapping failed.
    #[error("{0}")]
    Failed(String),
}

const MAGIC: &[u8; 8] = b"HARPBKUP";
const VERSION: u8 = 1;
const SALT_LEN: usize = 16;
const MAC_LEN: usize = 32;
const ALG_AES: u8 = 1;
/// Bytes before the wrapped key.
const HEADER_LEN: usize = 8 + 1 + 12 + SALT_LEN + 1 + 4 + 1 + 2;
/// Shortest password accepted for a backup, in bytes.
pub const MIN_PASSWORD_LEN: usize = 8;
/// Longest backup accepted.
pub const MAX_BACKUP_LEN: usize = 4096;
/// Most Argon2id cost a backup may ask of a restore. Backups are written with
/// [`KdfParams::default`]; the bound keeps a forged header from making every session actor
/// allocate gigabytes before the MAC can be checked.
const MAX_RESTORE_COST: KdfParams =
    KdfParams { memory_kib: 64 * 1024, iterations: 8, parallelism: 4 };

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// Keys derived from the backup password.
pub struct BackupKeys {
    wrap: Zeroizing<[u8; 32]>,
    mac: Zeroizing<[u8; 32]>,
}

impl BackupKeys {
    fn derive(password: &[u8], salt: &[u8], kdf: KdfParams) -> Result<Self, BackupError> {
        let mut both = Zeroizing::new([0u8; 64]);
        kdf.derive(password, salt, both.as_mut_slice()).map_err(BackupError::Invalid)?;
        let mut keys = Self { wrap: Zeroizing::new([0; 32]), mac: Zeroizing::new([0; 32]) };
        keys.wrap.copy_from_slice(&both[..32]);
        keys.mac.copy_from_slice(&both[32..]);
        Ok(keys)
    }

    /// The AES-256 key that wraps (or unwraps) the backed-up key.
    pub fn wrapping_key(&self) -> &[u8; 32] {
        &self.wrap
    }

    fn mac(&self, data: &[u8]) -> HmacSha256 {
        let mut mac = <HmacSha256 as KeyInit>::new_from_slice(self.mac.as_slice())
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(data);
        mac
    }
}

fn check_password(password: &[u8]) -> Result<(), BackupError> {
    if password.len() < MIN_PASSWORD_LEN {
        return Err(BackupError::Invalid(format!(
            "backup passwords need at least {MIN_PASSWORD_LEN} bytes"
        )));
    }
    Ok(())
}

fn flags(a: &KeyAttributes) -> u8 {
    u8::from(a.encrypt)
        | u8::from(a.decrypt) << 1
        | u8::from(a.wrap) << 2
        | u8::from(a.unwrap) << 3
        | u8::from(a.sensitive) << 4
}

/// A backup being made: keys first, then the backend wraps, then the header is written.
pub struct Sealer {
    kdf: KdfParams,
    salt: [u8; SALT_LEN],
    keys: BackupKeys,
}

impl Sealer {
    /// Starts a backup under `password`.
    pub fn new(password: &[u8], kdf: KdfParams) -> Result<Self, BackupError> {
        check_password(password)?;
        let mut salt = [0u8; SALT_LEN];
        getrandom::fill(&mut salt)
            .map_err(|e| BackupError::Failed(format!("no randomness: {e}")))?;
        let keys = BackupKeys::derive(password, &salt, kdf)?;
        Ok(Self { kdf, salt, keys })
    }

    /// The key to wrap with.
    pub fn keys(&self) -> &BackupKeys {
        &self.keys
    }

    /// Completes the backup of a key with `attributes` around its wrapped value. A size of
    /// 0 (some modules leave `CKA_VALUE_LEN` unset) is taken from the wrapped length, which
    /// RFC 5649 makes exact for AES keys.
    pub fn finish(
        self,
        attributes: &KeyAttributes,
        wrapped: &[u8],
    ) -> Result<Vec<u8>, BackupError> {
        let mut attributes = *attributes;
        if attributes.size_bits == 0 {
            attributes.size_bits = u32::try_from(wrapped.len().saturating_sub(8) * 8).unwrap_or(0);
        }
        let len = u16::try_from(wrapped.len())
            .map_err(|_| BackupError::Failed("wrapped key too long".into()))?;
        let mut out = Vec::with_capacity(HEADER_LEN + wrapped.len() + MAC_LEN);
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        for v in [self.kdf.memory_kib, self.kdf.iterations, self.kdf.parallelism] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&self.salt);
        out.push(ALG_AES);
        out.extend_from_slice(&attributes.size_bits.to_le_bytes());
        out.push(flags(&attributes));
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(wrapped);
        let tag = self.keys.mac(&out).finalize().into_bytes();
        out.extend_from_slice(&tag);
        Ok(out)
    }
}

/// A verified backup, ready to unwrap.
pub struct Opened {
    /// The key's attributes as backed up (it is restored extractable, as it was).
    pub attributes: KeyAttributes,
    /// The wrapped key value.
    pub wrapped: Vec<u8>,
    /// The unwrapping key.
    pub keys: BackupKeys,
}

/// Parses a backup and checks its MAC with `password`. A wrong password and a tampered
/// backup look the same: `IntegrityCheckFailed`.
pub fn open(blob: &[u8], password: &[u8]) -> Result<Opened, BackupError> {
    check_password(password)?;
    let bad = |why: &str| BackupError::Invalid(format!("not a key backup: {why}"));
    if blob.len() > MAX_BACKUP_LEN {
        return Err(bad("too long"));
    }
    if blob.len() < HEADER_LEN + MAC_LEN || &blob[..8] != MAGIC {
        return Err(bad("bad magic or too short"));
    }
    if blob[8] != VERSION {
        return Err(bad(&format!("version {} is not supported", blob[8])));
    }
    let u32_at =
        |at: usize| u32::from_le_bytes([blob[at], blob[at + 1], blob[at + 2], blob[at + 3]]);
    let kdf = KdfParams { memory_kib: u32_at(9), iterations: u32_at(13), parallelism: u32_at(17) };
    kdf.check().map_err(|e| bad(&e))?;
    if kdf.memory_kib > MAX_RESTORE_COST.memory_kib
        || kdf.iterations > MAX_RESTORE_COST.iterations
        || kdf.parallelism > MAX_RESTORE_COST.parallelism
    {
        return Err(bad("its key-derivation cost is above what a restore accepts"));
    }
    let salt = &blob[21..21 + SALT_LEN];
    let at = 21 + SALT_LEN;
    let (alg, size_bits, flags) = (blob[at], u32_at(at + 1), blob[at + 5]);
    let wrapped_len = usize::from(u16::from_le_bytes([blob[at + 6], blob[at + 7]]));
    if blob.len() != HEADER_LEN + wrapped_len + MAC_LEN {
        return Err(bad("length fields disagree"));
    }
    let (body, tag) = blob.split_at(blob.len() - MAC_LEN);
    let keys = BackupKeys::derive(password, salt, kdf)?;
    keys.mac(body).verify_slice(tag).map_err(|_| BackupError::IntegrityCheckFailed)?;
    if alg != ALG_AES || !matches!(size_bits, 128 | 192 | 256) {
        return Err(BackupError::Unsupported(format!(
            "restoring a backup of algorithm {alg}, {size_bits} bits"
        )));
    }
    let attributes = KeyAttributes {
        size_bits,
        extractable: true,
        sensitive: flags & 16 != 0,
        encrypt: flags & 1 != 0,
        decrypt: flags & 2 != 0,
        wrap: flags & 4 != 0,
        unwrap: flags & 8 != 0,
    };
    Ok(Opened { attributes, wrapped: body[HEADER_LEN..].to_vec(), keys })
}

/// RFC 5649 key wrap with padding in memory (the soft token; PKCS#11 tokens do it inside).
pub fn kwp_wrap(kek: &[u8; 32], key: &[u8]) -> Result<Vec<u8>, BackupError> {
    let kwp = aes_kw::KwpAes256::new_from_slice(kek)
        .map_err(|_| BackupError::Failed("bad KEK".into()))?;
    let mut buf = vec![0u8; key.len().div_ceil(8) * 8 + 8];
    let n = kwp
        .wrap_key(key, &mut buf)
        .map_err(|e| BackupError::Failed(format!("key wrap: {e:?}")))?
        .len();
    buf.truncate(n);
    Ok(buf)
}

/// Reverses [`kwp_wrap`].
pub fn kwp_unwrap(kek: &[u8; 32], wrapped: &[u8]) -> Result<Zeroizing<Vec<u8>>, BackupError> {
    let kwp = aes_kw::KwpAes256::new_from_slice(kek)
        .map_err(|_| BackupError::Failed("bad KEK".into()))?;
    let mut buf = Zeroizing::new(vec![0u8; wrapped.len()]);
    let n = kwp.unwrap_key(wrapped, &mut buf).map_err(|_| BackupError::IntegrityCheckFailed)?.len();
    buf.truncate(n);
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::hex;

    fn fast() -> KdfParams {
        KdfParams { memory_kib: 64, iterations: 1, parallelism: 1 }
    }

    fn sample() -> Vec<u8> {
        let attrs = KeyAttributes { extractable: true, wrap: true, ..KeyAttributes::aes(256) };
        let sealer = Sealer::new(b"correct horse", fast()).expect("sealer");
        let wrapped = kwp_wrap(sealer.keys().wrapping_key(), &[7u8; 32]).expect("wrap");
        sealer.finish(&attrs, &wrapped).expect("finish")
    }

    #[test]
    fn round_trip_restores_value_and_attributes() {
        let blob = sample();
        let opened = open(&blob, b"correct horse").expect("open");
        assert_eq!(
            opened.attributes,
            KeyAttributes { extractable: true, wrap: true, ..KeyAttributes::aes(256) }
        );
        let key = kwp_unwrap(opened.keys.wrapping_key(), &opened.wrapped).expect("unwrap");
        assert_eq!(key.as_slice(), &[7u8; 32]);
    }

    #[test]
    fn an_unknown_size_is_taken_from_the_wrapped_key() {
        let attrs = KeyAttributes { size_bits: 0, extractable: true, ..KeyAttributes::aes(0) };
        let sealer = Sealer::new(b"correct horse", fast()).expect("sealer");
        let wrapped = kwp_wrap(sealer.keys().wrapping_key(), &[7u8; 24]).expect("wrap");
        let blob = sealer.finish(&attrs, &wrapped).expect("finish");
        assert_eq!(open(&blob, b"correct horse").expect("open").attributes.size_bits, 192);
    }

    #[test]
    fn a_forged_expensive_header_is_refused_before_derivation() {
        let mut blob = sample();
        blob[9..13].copy_from_slice(&(1024u32 * 1024).to_le_bytes()); // 1 GiB
        let err = open(&blob, b"correct horse").err().expect("refused");
        assert!(err.to_string().contains("cost"), "{err}");
    }

    #[test]
    fn wrong_password_and_every_tampered_byte_are_refused() {
        let blob = sample();
        assert!(matches!(open(&blob, b"wrong horse"), Err(BackupError::IntegrityCheckFailed)));
        for i in 0..blob.len() {
            let mut bad = blob.clone();
            bad[i] ^= 1;
            assert!(open(&bad, b"correct horse").is_err(), "flip at byte {i} accepted");
        }
        assert!(matches!(open(&blob[..20], b"correct horse"), Err(BackupError::Invalid(_))));
        assert!(matches!(open(&blob, b"short"), Err(BackupError::Invalid(_))));
    }

    /// The published RFC 5649 §6 vectors (192-bit KEK), through the same crate.
    #[test]
    fn rfc_5649_vectors() {
        let kek = hex("5840df6e29b02af1ab493b705bf16ea1ae8338f4dcc176a8");
        let kwp = aes_kw::KwpAes192::new_from_slice(&kek).expect("kek");
        for (key, want) in [
            (
                "c37b7e6492584340bed12207808941155068f738",
                "138bdeaa9b8fa7fc61f97742e72248ee5ae6ae5360d1ae6a5f54f373fa543b6a",
            ),
            ("466f7250617369", "afbeb0f07dfbf5419200f2ccb50bb24f"),
        ] {
            let mut buf = [0u8; 64];
            assert_eq!(kwp.wrap_key(&hex(key), &mut buf).expect("wrap"), hex(want).as_slice());
        }
    }

    #[test]
    fn wrapped_length_follows_rfc_5649() {
        for len in [1usize, 7, 8, 9, 16, 24, 32] {
            let w = kwp_wrap(&[1; 32], &vec![9; len]).expect("wrap");
            assert_eq!(w.len(), len.div_ceil(8).max(1) * 8 + 8, "len {len}");
            assert_eq!(
                kwp_unwrap(&[1; 32], &w).expect("unwrap").as_slice(),
                vec![9; len].as_slice()
            );
        }
    }
}
