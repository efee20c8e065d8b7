//! Key names and the formats of what keys produce.

pub mod ciphertext;
pub mod name;
