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
