//! `harpocratesd`, the Harpocrates daemon, as a library.
//!
//! The daemon puts a token — a PKCS#11 HSM or the embedded [soft token](backend::soft) —
//! behind one Unix socket. A request travels:
//!
//! ```text
//! client ─► [server::connection] frame decode, handshake, pipelining
//!        ─► [server::dispatch]   validate; answer locally, or
//!        ─► [actors::session::pool] bounded queue, drained into batches
//!        ─► [actors::session]    one actor per backend session, retries broken sessions
//!        ─► [backend]            the token
//! ```
//!
//! The binary is a thin shell over [`server::run`]; tests and benchmarks start a daemon
//! in-process with [`server::spawn`].

pub mod actors;
pub mod backend;
pub mod config;
pub mod formats;
pub mod keys;
pub mod logging;
pub mod metrics;
pub mod peer;
pub mod policy;
pub mod server;
pub mod startup;
pub mod systemd;
