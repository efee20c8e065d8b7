//! The daemon's actors. Each has a `mod.rs` with its pure logic, testable without actix,
//! and an `actor.rs` with the messages and handlers.

pub mod audit;
pub mod rotation;
pub mod session;
