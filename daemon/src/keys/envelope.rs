//! Envelope ciphertexts in the daemon: the protocol's [format](harpocrates_protocol::envelope)
//! (shared with the client's local data-key path), with its errors mapped to the daemon's.
//!
//! New envelopes are written in format v2 (XAES-256-GCM, 192-bit random nonces: no
//! per-key message limit to track); v1 envelopes (96-bit nonces) keep opening.

use harpocrates_protocol::KekId;
use harpocrates_protocol::envelope::{EnvelopeError, EnvelopeKey};
use zeroize::Zeroizing;

use crate::backend::BackendError;

pub use harpocrates_protocol::envelope::{DEK_LEN, FORMAT_V1, FORMAT_V2, NONCE_V2_LEN};

impl From<EnvelopeError> for BackendError {
    fn from(e: EnvelopeError) -> Self {
        match e {
            EnvelopeError::Integrity => BackendError::IntegrityCheckFailed,
            EnvelopeError::Random(why) => BackendError::Failed(format!("no randomness: {why}")),
            EnvelopeError::KeyLength(_) => BackendError::Failed(e.to_string()),
            other => BackendError::InvalidArgument(other.to_string()),
        }
    }
}

fn key(kek: &KekId, dek: &[u8]) -> Result<EnvelopeKey, BackendError> {
    Ok(EnvelopeKey::new(kek.clone(), dek)?)
}

/// Reads the KEK version an envelope names, without decrypting.
pub fn kek_of(ciphertext: &[u8]) -> Result<KekId, BackendError> {
    kek_named(ciphertext).map(|(name, version)| KekId { name: name.to_owned(), version })
}

/// [`kek_of`], borrowing the name from the ciphertext: nothing is allocated.
pub fn kek_named(ciphertext: &[u8]) -> Result<(&str, u32), BackendError> {
    Ok(harpocrates_protocol::envelope::kek_named(ciphertext)?)
}

/// Encrypts with a fresh random nonce, in the current format.
pub fn seal(
    kek: &KekId,
    dek: &[u8],
    context: &[u8],
    plaintext: &[u8],
    caller_aad: &[u8],
) -> Result<Vec<u8>, BackendError> {
    Ok(key(kek, dek)?.seal(context, plaintext, caller_aad)?)
}

/// Encrypts with a given nonce (known-answer tests and fuzzing).
pub fn seal_with_nonce(
    kek: &KekId,
    dek: &[u8],
    context: &[u8],
    nonce: &[u8; NONCE_V2_LEN],
    plaintext: &[u8],
    caller_aad: &[u8],
) -> Result<Vec<u8>, BackendError> {
    Ok(key(kek, dek)?.seal_with_nonce(context, nonce, plaintext, caller_aad)?)
}

/// Decrypts and authenticates under `dek`, the data key of the KEK version the
/// ciphertext names (the caller checked that version may decrypt).
pub fn open(
    ciphertext: &[u8],
    context: &[u8],
    caller_aad: &[u8],
    dek: &[u8],
) -> Result<Zeroizing<Vec<u8>>, BackendError> {
    let kek = kek_of(ciphertext)?;
    Ok(key(&kek, dek)?.open(ciphertext, context, caller_aad)?)
}
