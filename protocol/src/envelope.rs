//! Envelope ciphertexts: AES-256-GCM under a data key derived from a KEK version and the
//! caller's context (see `docs/envelope.md`). The daemon and the client's local data-key
//! path both seal and open with this module, so either side reads the other's output.
//!
//! ```text
//! byte 0        format: 0xE2 = envelope v2 (written today), 0xE1 = v1 (still read)
//! byte 1        n = length of the KEK name (1..=128)
//! 2 .. 2+n      KEK name
//! next 4        KEK version, u32 big-endian
//! next 24 | 12  nonce, random: 192 bits in v2, 96 bits in v1
//! rest          ciphertext || 16-byte tag
//! ```
//!
//! The AAD is `header || u32 BE len(context) || context || caller AAD`: the header (so the
//! KEK name and version cannot be swapped) and the context (so a ciphertext only opens
//! under the context it was made for) are authenticated, on top of the context being an
//! input of the key derivation.
//!
//! # Nonce budget
//!
//! One data key serves every message of a (KEK version, context) pair, at any rate. v1
//! used AES-256-GCM with random 96-bit nonces, which NIST SP 800-38D §8.3 caps at 2^32
//! messages per key: a hot context at 500k messages/s reaches that in under 3 hours. v2
//! is C2SP's XAES-256-GCM: each message's AES-GCM key is derived (NIST SP 800-108r1 CMAC
//! KDF) from the data key and the first 96 bits of a random 192-bit nonce, and the last
//! 96 bits are its GCM nonce. A collision needs two messages to share all 192 bits, so
//! 2^80 messages per data key keep the collision chance below 2^-32: no count to keep,
//! no limit an application can reach.

use aes_gcm::aead::consts::U12;
use aes_gcm::{AeadInOut, Aes256Gcm, KeyInit, Tag};
use xaes_256_gcm::Xaes256Gcm;
use zeroize::Zeroizing;

use crate::kek::KekId;
use crate::label::validate_label;

/// Format byte of envelope version 1 (96-bit nonces; read, no longer written).
pub const FORMAT_V1: u8 = 0xE1;
/// Format byte of envelope version 2 (XAES-256-GCM, 192-bit nonces).
pub const FORMAT_V2: u8 = 0xE2;
/// Nonce length of version 1.
pub const NONCE_V1_LEN: usize = 12;
/// Nonce length of version 2.
pub const NONCE_V2_LEN: usize = 24;
/// Tag length.
pub const TAG_LEN: usize = 16;
/// The data-key length (AES-256).
pub const DEK_LEN: usize = 32;

/// Why bytes could not be sealed or opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// The bytes are not an envelope ciphertext of a known format.
    #[error("not an envelope ciphertext: {0}")]
    Malformed(&'static str),
    /// The KEK name cannot be written into a header.
    #[error("invalid KEK name: {0}")]
    InvalidKekName(String),
    /// The data key is not [`DEK_LEN`] bytes.
    #[error("a data key is {DEK_LEN} bytes, not {0}")]
    KeyLength(usize),
    /// The ciphertext names another KEK version than this key's.
    #[error("the ciphertext is under KEK '{name}' version {version}, not this key's")]
    OtherKek {
        /// The KEK the ciphertext names.
        name: String,
        /// Its version.
        version: u32,
    },
    /// Wrong key, context or AAD, or the bytes were changed.
    #[error("integrity check failed: wrong context or AAD, or the ciphertext was altered")]
    Integrity,
    /// The system's random generator failed.
    #[error("no randomness: {0}")]
    Random(String),
}

/// The parts of an envelope ciphertext, borrowed from it.
struct Parsed<'a> {
    format: u8,
    kek_name: &'a str,
    version: u32,
    header: &'a [u8],
    nonce: &'a [u8],
    sealed: &'a [u8],
}

fn parse(ct: &[u8]) -> Result<Parsed<'_>, EnvelopeError> {
    let bad = EnvelopeError::Malformed;
    let format = *ct.first().ok_or(bad("empty"))?;
    let nonce_len = match format {
        FORMAT_V2 => NONCE_V2_LEN,
        FORMAT_V1 => NONCE_V1_LEN,
        _ => return Err(bad("unknown format")),
    };
    let n = usize::from(*ct.get(1).ok_or(bad("truncated"))?);
    let header_len = 2 + n + 4;
    if n == 0 || ct.len() < header_len + nonce_len + TAG_LEN {
        return Err(bad("truncated"));
    }
    let name = std::str::from_utf8(&ct[2..2 + n]).map_err(|_| bad("KEK name is not UTF-8"))?;
    validate_label(name).map_err(|_| bad("invalid KEK name"))?;
    let version = u32::from_be_bytes([ct[2 + n], ct[3 + n], ct[4 + n], ct[5 + n]]);
    Ok(Parsed {
        format,
        kek_name: name,
        version,
        header: &ct[..header_len],
        nonce: &ct[header_len..header_len + nonce_len],
        sealed: &ct[header_len + nonce_len..],
    })
}

/// The KEK name and version an envelope names, borrowed from it; nothing is decrypted.
pub fn kek_named(ciphertext: &[u8]) -> Result<(&str, u32), EnvelopeError> {
    parse(ciphertext).map(|p| (p.kek_name, p.version))
}

/// Writes the header of `format` for `kek` into a buffer with room for the rest.
fn header(format: u8, kek: &KekId, rest: usize) -> Result<Vec<u8>, EnvelopeError> {
    validate_label(&kek.name).map_err(EnvelopeError::InvalidKekName)?;
    let name = kek.name.as_bytes();
    let mut h = Vec::with_capacity(6 + name.len() + rest);
    h.push(format);
    h.push(name.len() as u8); // at most 128: validate_label checked it
    h.extend_from_slice(name);
    h.extend_from_slice(&kek.version.to_be_bytes());
    Ok(h)
}

fn aad(header: &[u8], context: &[u8], caller: &[u8]) -> Vec<u8> {
    let mut a = Vec::with_capacity(header.len() + 4 + context.len() + caller.len());
    a.extend_from_slice(header);
    a.extend_from_slice(&(context.len() as u32).to_be_bytes());
    a.extend_from_slice(context);
    a.extend_from_slice(caller);
    a
}

/// The data key of one KEK version for one context, ready to seal and open envelopes.
/// The key material is wiped when this is dropped.
pub struct EnvelopeKey {
    kek: KekId,
    /// The v2 header for `kek`, built (and its name checked) once, not per message.
    header: Vec<u8>,
    dek: Zeroizing<[u8; DEK_LEN]>,
    /// XAES-256-GCM's key schedule and subkey, computed once per data key.
    xaes: Xaes256Gcm,
}

impl std::fmt::Debug for EnvelopeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnvelopeKey").field("kek", &self.kek).finish_non_exhaustive()
    }
}

impl EnvelopeKey {
    /// The data key `dek` of KEK version `kek`.
    pub fn new(kek: KekId, dek: &[u8]) -> Result<Self, EnvelopeError> {
        let dek: [u8; DEK_LEN] = dek.try_into().map_err(|_| EnvelopeError::KeyLength(dek.len()))?;
        let dek = Zeroizing::new(dek);
        let header = header(FORMAT_V2, &kek, 0)?;
        let xaes = Xaes256Gcm::new(&(*dek).into());
        Ok(Self { kek, header, dek, xaes })
    }

    /// The KEK version whose data key this is.
    pub fn kek(&self) -> &KekId {
        &self.kek
    }

    /// Seals `plaintext` in the current format (v2) with a fresh random nonce.
    pub fn seal(
        &self,
        context: &[u8],
        plaintext: &[u8],
        caller_aad: &[u8],
    ) -> Result<Vec<u8>, EnvelopeError> {
        let mut nonce = [0u8; NONCE_V2_LEN];
        getrandom::fill(&mut nonce).map_err(|e| EnvelopeError::Random(e.to_string()))?;
        self.seal_with_nonce(context, &nonce, plaintext, caller_aad)
    }

    /// [`seal`](Self::seal) with a given nonce, for known-answer tests. A nonce must
    /// never be used twice with one key.
    pub fn seal_with_nonce(
        &self,
        context: &[u8],
        nonce: &[u8; NONCE_V2_LEN],
        plaintext: &[u8],
        caller_aad: &[u8],
    ) -> Result<Vec<u8>, EnvelopeError> {
        let mut out =
            Vec::with_capacity(self.header.len() + NONCE_V2_LEN + plaintext.len() + TAG_LEN);
        out.extend_from_slice(&self.header);
        let aad = aad(&out, context, caller_aad);
        out.extend_from_slice(nonce);
        let start = out.len();
        out.extend_from_slice(plaintext);
        let tag = self
            .xaes
            .encrypt_inout_detached(&(*nonce).into(), &aad, (&mut out[start..]).into())
            .map_err(|_| EnvelopeError::Malformed("plaintext or AAD too long"))?;
        out.extend_from_slice(&tag);
        Ok(out)
    }

    /// Authenticates and decrypts an envelope of either format made under this key's
    /// KEK version.
    pub fn open(
        &self,
        ciphertext: &[u8],
        context: &[u8],
        caller_aad: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, EnvelopeError> {
        let p = parse(ciphertext)?;
        if p.kek_name != self.kek.name || p.version != self.kek.version {
            return Err(EnvelopeError::OtherKek {
                name: p.kek_name.to_owned(),
                version: p.version,
            });
        }
        let aad = aad(p.header, context, caller_aad);
        let body_len = p.sealed.len() - TAG_LEN;
        let mut plain = Zeroizing::new(p.sealed[..body_len].to_vec());
        let tag = Tag::try_from(&p.sealed[body_len..]).map_err(|_| EnvelopeError::Integrity)?;
        let buffer = plain.as_mut_slice().into();
        let opened = if p.format == FORMAT_V2 {
            let nonce: [u8; NONCE_V2_LEN] =
                p.nonce.try_into().map_err(|_| EnvelopeError::Integrity)?;
            self.xaes.decrypt_inout_detached(&nonce.into(), &aad, buffer, &tag)
        } else {
            let nonce =
                aes_gcm::Nonce::<U12>::try_from(p.nonce).map_err(|_| EnvelopeError::Integrity)?;
            v1_cipher(&self.dek).decrypt_inout_detached(&nonce, &aad, buffer, &tag)
        };
        opened.map_err(|_| EnvelopeError::Integrity)?;
        Ok(plain)
    }
}

fn v1_cipher(dek: &[u8; DEK_LEN]) -> Aes256Gcm {
    Aes256Gcm::new(dek.into())
}

/// Seals in the old format (v1) with a given 96-bit nonce. Nothing writes v1 any more;
/// this exists so tests can prove v1 ciphertexts stored before still open.
pub fn seal_v1_with_nonce(
    key: &EnvelopeKey,
    context: &[u8],
    nonce: &[u8; NONCE_V1_LEN],
    plaintext: &[u8],
    caller_aad: &[u8],
) -> Result<Vec<u8>, EnvelopeError> {
    let mut out = header(FORMAT_V1, &key.kek, NONCE_V1_LEN + plaintext.len() + TAG_LEN)?;
    let aad = aad(&out, context, caller_aad);
    out.extend_from_slice(nonce);
    let start = out.len();
    out.extend_from_slice(plaintext);
    let tag = v1_cipher(&key.dek)
        .encrypt_inout_detached(&(*nonce).into(), &aad, (&mut out[start..]).into())
        .map_err(|_| EnvelopeError::Malformed("plaintext or AAD too long"))?;
    out.extend_from_slice(&tag);
    Ok(out)
}

#[cfg(test)]
mod tests;
