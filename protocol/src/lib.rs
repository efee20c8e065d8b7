//! The Harpocrates wire protocol.
//!
//! Everything the daemon and its clients must agree on lives here, and nothing else:
//! the [messages](message) a client may send and the daemon may answer, the stable
//! [error codes](error), the [operation table](ops) (each request's name, class and
//! target), [secret buffers](secret) that wipe themselves, [key names](label), the
//! [envelope ciphertext format](envelope), and the
//! [framing](codec) that carries them over a byte stream.
//!
//! # On the wire
//!
//! Every frame is a `u32` big-endian length followed by that many bytes of
//! [bincode 2](https://docs.rs/bincode/2.0.1) (serde, [`bincode_config`]). A client sends
//! [`RequestFrame`]s and the daemon answers with [`ResponseFrame`]s that echo the request's
//! `id`, so one connection can pipeline many requests and receive the answers in any
//! order. The first request on a connection must be [`Request::Hello`] carrying
//! [`PROTOCOL_VERSION`]; the daemon refuses other versions with
//! [`ErrorCode::UnsupportedVersion`].
//!
//! This crate performs no I/O; it only describes bytes. Its cryptography is what both
//! sides must compute identically: the SHA-256 of the [audit chain](audit::chain) and the
//! [envelope format](envelope), which the daemon and the client's local data-key path
//! both seal and open.

pub mod audit;
pub mod codec;
pub mod envelope;
pub mod error;
pub mod kek;
pub mod label;
pub mod message;
pub mod metrics;
pub mod ops;
pub mod paths;
pub mod secret;

pub use audit::{AuditEvent, AuditPhase};
pub use codec::{BodyError, FrameError, MessageCodec, WRITE_BUFFER, bincode_config};
pub use error::{ErrorCode, WireError};
pub use kek::{DataKey, KekId, KekInfo, KekVersionInfo, KekVersionState, RotationStep};
pub use message::{
    HealthState, HealthStatus, KeyAlgorithm, KeyAttributes, KeyHandle, KeyInfo, ReloadReport,
    Request, RequestFrame, Response, ResponseFrame, TokenInfo, WireResult,
};
pub use metrics::{ErrorCount, LatencySummary, MetricsSnapshot, OpMetrics, PoolGauges};
pub use ops::{Op, OpClass, Target};
pub use secret::SecretBytes;

/// The protocol version this crate speaks, sent in [`Request::Hello`].
pub const PROTOCOL_VERSION: u32 = 2;

/// Default largest frame body accepted, in bytes (16 MiB).
pub const DEFAULT_MAX_FRAME: u32 = 16 * 1024 * 1024;

/// Hard ceiling for any configured frame limit (64 MiB): bincode's own allocation limit.
pub const MAX_FRAME_CEILING: u32 = 64 * 1024 * 1024;

/// Most operations one [`Request::Batch`] may carry.
pub const MAX_BATCH_LEN: usize = 4096;

/// Most random bytes one [`Request::GenerateRandom`] may ask for.
pub const MAX_RANDOM_LEN: u32 = 1024 * 1024;
