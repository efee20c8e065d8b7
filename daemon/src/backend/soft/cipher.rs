//! AES-GCM under a soft-token key, in the [ciphertext format](crate::formats::ciphertext).

use aes_gcm::aead::consts::U12;
use aes_gcm::aes::Aes192;
use aes_gcm::{AeadInOut, Aes128Gcm, Aes256Gcm, AesGcm, KeyInit, Nonce, Tag};
use zeroize::Zeroizing;

use crate::backend::BackendError;
use crate::formats::ciphertext::{self, IV_LEN, TAG_LEN};

type Aes192Gcm = AesGcm<Aes192, U12>;

/// A ready key schedule for one AES key size.
pub enum GcmKey {
    /// AES-128.
    Aes128(Box<Aes128Gcm>),
    /// AES-192.
    Aes192(Box<Aes192Gcm>),
    /// AES-256.
    Aes256(Box<Aes256Gcm>),
}

macro_rules! with_cipher {
    ($key:expr, $c:ident => $body:expr) => {
        match $key {
            GcmKey::Aes128($c) => $body,
            GcmKey::Aes192($c) => $body,
            GcmKey::Aes256($c) => $body,
        }
    };
}

impl GcmKey {
    /// Builds the key schedule for 16-, 24- or 32-byte key material.
    pub fn new(material: &[u8]) -> Result<Self, BackendError> {
        let bad = |_| BackendError::Failed("corrupt key material".into());
        Ok(match material.len() {
            16 => GcmKey::Aes128(Box::new(Aes128Gcm::new_from_slice(material).map_err(bad)?)),
            24 => GcmKey::Aes192(Box::new(Aes192Gcm::new_from_slice(material).map_err(bad)?)),
            32 => GcmKey::Aes256(Box::new(Aes256Gcm::new_from_slice(material).map_err(bad)?)),
            n => {
                return Err(BackendError::Failed(format!("unsupported AES key length {n}")));
            }
        })
    }

    /// Encrypts `plaintext` with a fresh random IV into a self-describing ciphertext.
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, BackendError> {
        let mut iv = [0u8; IV_LEN];
        getrandom::fill(&mut iv)
            .map_err(|e| BackendError::Failed(format!("no randomness: {e}")))?;
        self.seal_with_iv(&iv, plaintext, aad)
    }

    /// Encrypts with a caller-chosen IV (known-answer tests only need this).
    pub fn seal_with_iv(
        &self,
        iv: &[u8; IV_LEN],
        plaintext: &[u8],
        aad: &[u8],
    ) -> Result<Vec<u8>, BackendError> {
        let mut out = ciphertext::begin(iv, plaintext.len());
        let start = out.len();
        out.extend_from_slice(plaintext);
        let nonce = Nonce::<U12>::from(*iv);
        let aad = ciphertext::gcm_aad(aad);
        let tag: Tag = with_cipher!(self, c => c.encrypt_inout_detached(&nonce, &aad, (&mut out[start..]).into()))
            .map_err(|_| BackendError::Failed("AES-GCM encryption failed".into()))?;
        out.extend_from_slice(&tag);
        Ok(out)
    }

    /// Decrypts and authenticates a self-describing ciphertext.
    pub fn open(&self, ct: &[u8], aad: &[u8]) -> Result<Zeroizing<Vec<u8>>, BackendError> {
        let parsed =
            ciphertext::parse(ct).map_err(|e| BackendError::InvalidArgument(e.to_string()))?;
        let body_len = parsed.sealed.len() - TAG_LEN;
        let mut plain = Zeroizing::new(parsed.sealed[..body_len].to_vec());
        let tag = Tag::try_from(&parsed.sealed[body_len..])
            .map_err(|_| BackendError::IntegrityCheckFailed)?;
        let nonce = Nonce::<U12>::from(*parsed.iv);
        let aad = ciphertext::gcm_aad(aad);
        with_cipher!(self, c => c.decrypt_inout_detached(&nonce, &aad, plain.as_mut_slice().into(), &tag))
            .map_err(|_| BackendError::IntegrityCheckFailed)?;
        Ok(plain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_all_sizes_and_tamper_detection() {
        for len in [16usize, 24, 32] {
            let key = GcmKey::new(&vec![0x42; len]).expect("key");
            let ct = key.seal(b"attack at dawn", b"aad").expect("seal");
            assert_eq!(ct.len(), 14 + ciphertext::OVERHEAD);
            assert_eq!(key.open(&ct, b"aad").expect("open").as_slice(), b"attack at dawn");
            assert!(matches!(key.open(&ct, b"other"), Err(BackendError::IntegrityCheckFailed)));
            for i in 0..ct.len() {
                let mut bad = ct.clone();
                bad[i] ^= 1;
                assert!(key.open(&bad, b"aad").is_err(), "flip at byte {i} of {len}-byte key");
            }
        }
    }

    #[test]
    fn fresh_iv_every_time() {
        let key = GcmKey::new(&[1; 32]).expect("key");
        let a = key.seal(b"x", b"").expect("seal");
        let b = key.seal(b"x", b"").expect("seal");
        assert_ne!(a, b);
    }

    #[test]
    fn refuses_bad_key_lengths() {
        assert!(GcmKey::new(&[0; 20]).is_err());
    }
}
