//! Byte formats that both the backends and the key manager read and write: the
//! self-describing ciphertext of `Encrypt`, key backups, and the KDF parameters they carry.
//!
//! They sit below `backend/` and `keys/` (and depend on neither), so the daemon's folders
//! form a line: protocol ← formats ← backend ← keys ← actors ← server.

pub mod backup;
pub mod ciphertext;
pub mod kdf;

/// Decodes hex test vectors.
#[cfg(test)]
pub(crate) fn hex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex")).collect()
}
