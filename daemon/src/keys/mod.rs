//! Key names and the formats of what keys produce.

pub mod backup;
pub mod ciphertext;
pub mod crypto_pool;
pub mod dek;
pub mod envelope;
pub mod kdf;
pub mod kek;
pub mod manager;
pub mod name;

/// Decodes hex test vectors.
#[cfg(test)]
pub(crate) fn hex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex")).collect()
}
