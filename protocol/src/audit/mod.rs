//! Audit records: what the daemon's audit actor writes, streams and journals.
//!
//! An [`AuditEvent`] describes one finished operation (or one element of a batch, or a
//! refusal): who asked, what, on which key, and how it ended. It never carries
//! plaintext, ciphertext, key bytes, PINs or passwords. The same struct goes over the
//! wire to [`Request::SubscribeAudit`](crate::Request::SubscribeAudit) subscribers and
//! into the hash-chained file described in [`chain`].

pub mod chain;

use serde::{Deserialize, Serialize};

/// Where in an operation's life a record was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditPhase {
    /// Written (durably) before a key-changing operation runs: the operation happens
    /// only once this record is on disk.
    Intent,
    /// The operation finished (or was refused); `result` says how.
    Done,
}

/// One audited operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// RFC 3339 UTC time with microseconds, e.g. `2026-11-29T04:05:06.123456Z`: when the
    /// request arrived.
    pub time: String,
    /// The caller's user id (SO_PEERCRED).
    pub uid: u32,
    /// The caller's group id.
    pub gid: u32,
    /// The caller's process id, when the kernel knows it.
    pub pid: Option<i32>,
    /// The caller's executable (`/proc/<pid>/exe`), when readable.
    pub exe: Option<String>,
    /// The connection, numbered from 1 since the daemon started.
    pub conn: u64,
    /// The request's frame id on that connection.
    pub request: u64,
    /// For a batch element, its index in the batch.
    pub element: Option<u32>,
    /// The operation's stable name (see [`Op::name`](crate::Op::name)).
    pub op: String,
    /// The operation's class (see [`OpClass::name`](crate::OpClass::name)).
    pub class: String,
    /// The token key asked for.
    pub key: Option<String>,
    /// The KEK asked for (or named by the ciphertext).
    pub kek: Option<String>,
    /// The KEK version involved, when known.
    pub version: Option<u32>,
    /// Intent (before a key-changing operation) or done.
    pub phase: AuditPhase,
    /// `ok`, or the wire error code's name (`permission_denied`, `key_not_found`, ...).
    pub result: String,
    /// Time from arrival to answer, microseconds (0 for an intent).
    pub latency_us: u64,
}
