//! Key names and the formats of what keys produce.

pub mod backup;
pub mod ciphertext;
pub mod kdf;
pub mod name;
