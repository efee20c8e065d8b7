//! Client for the Harpocrates daemon (`harpocratesd`).
//!
//! [`Client`] is async (tokio); [`BlockingClient`] wraps it for synchronous code. Both
//! speak the [wire protocol](harpocrates_protocol) over the daemon's Unix socket:
//!
//! * **pipelined** — one connection carries many requests at once, answered in any order;
//! * **auto-batching** — calls made concurrently on one client are coalesced into `Batch`
//!   frames whenever the connection's writer is busy, with no added delay for a lone call;
//! * **explicit batches** — [`Client::batch`] sends many operations in one frame;
//! * **reconnecting** — after the daemon restarts, the next call opens a new connection.
//!   A call in flight when the connection drops fails with [`Error::ConnectionLost`]
//!   (it may or may not have run), never silently retried.
//!
//! * **checking who answers** — before sending anything, the client reads the daemon's
//!   credentials and refuses a uid it does not trust with [`Error::PermissionDenied`]
//!   (see [`trust`]);
//! * **sealing in your own process** — [`Client::envelope`] fetches a KEK's data key once
//!   (`export` access) and gives a [`LocalEnvelope`] that seals and opens envelopes in the
//!   caller's process, in the daemon's format, refetching the key on a TTL;
//! * **bounded waits** — connecting plus the handshake within
//!   [`ClientOptions::connect_timeout`] (5 s by default), each call within
//!   [`ClientOptions::request_timeout`] (60 s by default), else [`Error::Timeout`].
//!
//! Errors are typed: match on [`Error::KeyNotFound`], [`Error::Busy`], ... — one variant
//! per wire code.
//!
//! ```no_run
//! # async fn demo() -> harpocrates_client::Result<()> {
//! use harpocrates_client::Client;
//! let client = Client::connect_default().await?;
//! client.generate_key("orders", 256).await?;
//! let ct = client.encrypt("orders", b"card 4242", Some(b"order:17")).await?;
//! let pt = client.decrypt("orders", &ct, Some(b"order:17")).await?;
//! assert_eq!(pt.expose(), b"card 4242");
//! # Ok(()) }
//! ```

pub mod audit;
pub mod batch;
pub mod blocking;
pub mod client;
pub mod connection;
pub mod envelope;
pub mod error;
pub mod trust;

pub use audit::AuditStream;
pub use batch::BatchBuilder;
pub use blocking::{BlockingClient, BlockingLocalEnvelope};
pub use client::Client;
pub use connection::{ClientOptions, DEFAULT_CONNECT_TIMEOUT, DEFAULT_REQUEST_TIMEOUT, ServerInfo};
pub use envelope::{LocalEnvelope, LocalEnvelopeOptions};
pub use error::{Error, Result};
pub use harpocrates_protocol::{
    DataKey, KekId, KekInfo, KekVersionState, KeyAttributes, KeyInfo, RotationStep, SecretBytes,
};
