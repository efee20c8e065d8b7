//! The self-describing ciphertext returned by `Encrypt` (see `docs/ciphertext.md`).
//!
//! ```text
//! byte 0      format version (1)
//! byte 1      algorithm (1 = AES-GCM, 96-bit IV, 128-bit tag)
//! bytes 2..14 IV
//! bytes 14..  ciphertext || 16-byte tag
//! ```
//!
//! The two header bytes are authenticated: the AAD given to AES-GCM is the header followed
//! by the caller's AAD, so a ciphertext cannot be relabelled as another format.

/// Current format version.
pub const FORMAT_V1: u8 = 1;
/// Algorithm byte for AES-GCM with a 96-bit IV and 128-bit tag.
pub const ALG_AES_GCM: u8 = 1;
/// Length of the authenticated header.
pub const HEADER_LEN: usize = 2;
/// IV length.
pub const IV_LEN: usize = 12;
/// Tag length.
pub const TAG_LEN: usize = 16;
/// Bytes a ciphertext adds to its plaintext.
pub const OVERHEAD: usize = HEADER_LEN + IV_LEN + TAG_LEN;

/// The header of a version-1 AES-GCM ciphertext.
pub const HEADER_V1_AES_GCM: [u8; HEADER_LEN] = [FORMAT_V1, ALG_AES_GCM];

/// A parsed ciphertext, borrowing the input.
#[derive(Debug, PartialEq, Eq)]
pub struct Parsed<'a> {
    /// The 96-bit IV.
    pub iv: &'a [u8; IV_LEN],
    /// Ciphertext followed by the tag.
    pub sealed: &'a [u8],
}

/// Why bytes are not a ciphertext of ours.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// Shorter than header, IV and tag.
    #[error("ciphertext is {0} bytes; at least {OVERHEAD} expected")]
    TooShort(usize),
    /// Unknown version or algorithm byte.
    #[error("unknown ciphertext format {version}/{algorithm}")]
    UnknownFormat {
        /// Byte 0.
        version: u8,
        /// Byte 1.
        algorithm: u8,
    },
}

/// Splits a ciphertext into its parts.
pub fn parse(ciphertext: &[u8]) -> Result<Parsed<'_>, FormatError> {
    if ciphertext.len() < OVERHEAD {
        return Err(FormatError::TooShort(ciphertext.len()));
    }
    let (header, rest) = ciphertext.split_at(HEADER_LEN);
    if header != HEADER_V1_AES_GCM {
        return Err(FormatError::UnknownFormat { version: header[0], algorithm: header[1] });
    }
    let (iv, sealed) = rest.split_at(IV_LEN);
    let iv = iv.try_into().map_err(|_| FormatError::TooShort(ciphertext.len()))?;
    Ok(Parsed { iv, sealed })
}

/// The AAD AES-GCM authenticates: the header, then the caller's AAD.
pub fn gcm_aad(caller_aad: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(HEADER_LEN + caller_aad.len());
    aad.extend_from_slice(&HEADER_V1_AES_GCM);
    aad.extend_from_slice(caller_aad);
    aad
}

/// Starts a ciphertext buffer: header and IV, with room for `plaintext_len` more bytes.
pub fn begin(iv: &[u8; IV_LEN], plaintext_len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(OVERHEAD + plaintext_len);
    out.extend_from_slice(&HEADER_V1_AES_GCM);
    out.extend_from_slice(iv);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_begin_writes() {
        let iv = [7u8; IV_LEN];
        let mut ct = begin(&iv, 3);
        ct.extend_from_slice(&[1, 2, 3]);
        ct.extend_from_slice(&[9; TAG_LEN]);
        let p = parse(&ct).expect("valid");
        assert_eq!(p.iv, &iv);
        assert_eq!(p.sealed.len(), 3 + TAG_LEN);
    }

    #[test]
    fn refuses_short_and_foreign_input() {
        assert_eq!(parse(&[1; OVERHEAD - 1]), Err(FormatError::TooShort(OVERHEAD - 1)));
        let mut ct = vec![2, 1];
        ct.resize(OVERHEAD, 0);
        assert_eq!(parse(&ct), Err(FormatError::UnknownFormat { version: 2, algorithm: 1 }));
    }

    #[test]
    fn aad_binds_the_header() {
        assert_eq!(gcm_aad(b"ctx"), [1, 1, b'c', b't', b'x']);
    }
}
