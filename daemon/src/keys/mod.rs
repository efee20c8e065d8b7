//! Key names, KEKs, data keys and envelope encryption (the formats that backends share
//! live in [`crate::formats`]).

pub mod crypto_pool;
pub mod dek;
pub mod envelope;
pub mod kek;
pub mod manager;
pub mod name;

#[cfg(test)]
pub(crate) use crate::formats::hex;
