//! Envelope ciphertexts: AES-256-GCM in the daemon under a data key derived from a KEK
//! version and the caller's context (see `docs/envelope.md`).
//!
//! ```text
//! byte 0        format (0xE1 = envelope v1)
//! byte 1        n = length of the KEK name (1..=128)
//! 2 .. 2+n      KEK name
//! next 4        KEK version, u32 big-endian
//! next 12       nonce (random)
//! rest          ciphertext || 16-byte tag
//! ```
//!
//! The AAD given to AES-GCM is `header || u32 BE len(context) || context || caller AAD`:
//! the header (so the KEK name and version cannot be swapped) and the context (so a
//! ciphertext only opens under the context it was made for) are both authenticated, on
//! top of the context being an input of the key derivation.

use aes_gcm::aead::consts::U12;
use aes_gcm::{AeadInOut, Aes256Gcm, KeyInit, Nonce, Tag};
use harpocrates_protocol::KekId;
use zeroize::Zeroizing;

use crate::backend::BackendError;

/// Format byte of envelope version 1.
pub const FORMAT_V1: u8 = 0xE1;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;

/// The data-key length the envelope uses (AES-256).
pub const DEK_LEN: usize = 32;

fn header(kek: &KekId) -> Result<Vec<u8>, BackendError> {
    let name = kek.name.as_bytes();
    let n = u8::try_from(name.len())
        .ok()
        .filter(|n| (1..=128).contains(n))
        .ok_or_else(|| BackendError::InvalidArgument("KEK names are 1 to 128 bytes".into()))?;
    let mut h = Vec::with_capacity(2 + name.len() + 4);
    h.push(FORMAT_V1);
    h.push(n);
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

fn cipher(dek: &[u8]) -> Result<Aes256Gcm, BackendError> {
    Aes256Gcm::new_from_slice(dek)
        .map_err(|_| BackendError::Failed("data key is not 32 bytes".into()))
}

/// Reads the KEK version an envelope names, without decrypting.
pub fn kek_of(ciphertext: &[u8]) -> Result<KekId, BackendError> {
    kek_named(ciphertext).map(|(name, version)| KekId { name: name.to_owned(), version })
}

/// [`kek_of`], borrowing the name from the ciphertext: nothing is allocated.
pub fn kek_named(ciphertext: &[u8]) -> Result<(&str, u32), BackendError> {
    parse(ciphertext).map(|p| (p.kek_name, p.version))
}

struct Parsed<'a> {
    kek_name: &'a str,
    version: u32,
    header: &'a [u8],
    nonce: &'a [u8],
    sealed: &'a [u8],
}

fn parse(ct: &[u8]) -> Result<Parsed<'_>, BackendError> {
    let bad =
        |why: &str| BackendError::InvalidArgument(format!("not an envelope ciphertext: {why}"));
    if ct.first() != Some(&FORMAT_V1) {
        return Err(bad("unknown format"));
    }
    let n = usize::from(*ct.get(1).ok_or_else(|| bad("truncated"))?);
    let header_len = 2 + n + 4;
    if n == 0 || ct.len() < header_len + NONCE_LEN + TAG_LEN {
        return Err(bad("truncated"));
    }
    let name = std::str::from_utf8(&ct[2..2 + n]).map_err(|_| bad("KEK name is not UTF-8"))?;
    crate::keys::name::validate_label(name).map_err(|_| bad("invalid KEK name"))?;
    let version = u32::from_be_bytes([ct[2 + n], ct[3 + n], ct[4 + n], ct[5 + n]]);
    Ok(Parsed {
        kek_name: name,
        version,
        header: &ct[..header_len],
        nonce: &ct[header_len..header_len + NONCE_LEN],
        sealed: &ct[header_len + NONCE_LEN..],
    })
}

/// Encrypts with a fresh random nonce.
pub fn seal(
    kek: &KekId,
    dek: &[u8],
    context: &[u8],
    plaintext: &[u8],
    caller_aad: &[u8],
) -> Result<Vec<u8>, BackendError> {
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::fill(&mut nonce).map_err(|e| BackendError::Failed(format!("no randomness: {e}")))?;
    seal_with_nonce(kek, dek, context, &nonce, plaintext, caller_aad)
}

/// Encrypts with a given nonce (known-answer tests).
pub fn seal_with_nonce(
    kek: &KekId,
    dek: &[u8],
    context: &[u8],
    nonce: &[u8; NONCE_LEN],
    plaintext: &[u8],
    caller_aad: &[u8],
) -> Result<Vec<u8>, BackendError> {
    let mut out = header(kek)?;
    let aad = aad(&out, context, caller_aad);
    out.extend_from_slice(nonce);
    let start = out.len();
    out.extend_from_slice(plaintext);
    let tag: Tag = cipher(dek)?
        .encrypt_inout_detached(&Nonce::<U12>::from(*nonce), &aad, (&mut out[start..]).into())
        .map_err(|_| BackendError::Failed("AES-GCM encryption failed".into()))?;
    out.extend_from_slice(&tag);
    Ok(out)
}

/// Decrypts and authenticates; `dek_for` supplies the data key of the KEK version the
/// ciphertext names (after the caller checked that version may decrypt).
pub fn open(
    ciphertext: &[u8],
    context: &[u8],
    caller_aad: &[u8],
    dek: &[u8],
) -> Result<Zeroizing<Vec<u8>>, BackendError> {
    let p = parse(ciphertext)?;
    let aad = aad(p.header, context, caller_aad);
    let body_len = p.sealed.len() - TAG_LEN;
    let mut plain = Zeroizing::new(p.sealed[..body_len].to_vec());
    let tag =
        Tag::try_from(&p.sealed[body_len..]).map_err(|_| BackendError::IntegrityCheckFailed)?;
    let nonce = Nonce::<U12>::try_from(p.nonce).map_err(|_| BackendError::IntegrityCheckFailed)?;
    cipher(dek)?
        .decrypt_inout_detached(&nonce, &aad, plain.as_mut_slice().into(), &tag)
        .map_err(|_| BackendError::IntegrityCheckFailed)?;
    Ok(plain)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::hex;

    /// The GCM specification's test cases 13 and 14 (AES-256, zero key and IV): the
    /// primitive under the envelope is standard AES-256-GCM.
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

    fn kek() -> KekId {
        KekId { name: "orders".into(), version: 3 }
    }

    /// Our own vector: it pins the envelope format forever. If this test fails, the
    /// format changed and every stored ciphertext would stop decrypting.
    #[test]
    fn envelope_vector_never_changes() {
        let ct =
            seal_with_nonce(&kek(), &[0x42; 32], b"tenant-7", &[9; 12], b"hello envelope", b"aad")
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
            open(&ct, b"tenant-7", b"aad", &[0x42; 32]).expect("open").as_slice(),
            b"hello envelope"
        );
    }

    #[test]
    fn context_aad_header_and_every_byte_are_authenticated() {
        let ct = seal(&kek(), &[1; 32], b"ctx", b"secret", b"a").expect("seal");
        assert_eq!(kek_of(&ct).expect("kek"), kek());
        assert!(matches!(
            open(&ct, b"other", b"a", &[1; 32]),
            Err(BackendError::IntegrityCheckFailed)
        ));
        assert!(matches!(
            open(&ct, b"ctx", b"b", &[1; 32]),
            Err(BackendError::IntegrityCheckFailed)
        ));
        for i in 0..ct.len() {
            let mut bad = ct.clone();
            bad[i] ^= 1;
            assert!(open(&bad, b"ctx", b"a", &[1; 32]).is_err(), "flip at {i}");
        }
        assert!(matches!(
            open(&ct[..10], b"ctx", b"a", &[1; 32]),
            Err(BackendError::InvalidArgument(_))
        ));
    }
}
