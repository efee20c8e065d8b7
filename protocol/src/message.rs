//! Requests, responses and the records they carry.
//!
//! # Compatibility rules
//!
//! bincode encodes an enum variant by its position, so variants are only ever *appended*,
//! never reordered or removed. [`Request::Hello`] is variant 0 with a fixed shape forever:
//! it is how a peer of any version learns which version it is talking to.

use serde::{Deserialize, Serialize};

use crate::error::WireError;
use crate::kek::{DataKey, KekInfo, RotationStep};
use crate::secret::SecretBytes;

/// The result of one operation on the wire.
pub type WireResult = Result<Response, WireError>;

/// A request with the id its response will echo.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestFrame {
    /// Chosen by the client, unique among its requests in flight on this connection.
    pub id: u64,
    /// What to do.
    pub request: Request,
}

/// A response to the request with the same `id`.
///
/// `id` 0 is reserved for connection-level errors that answer no particular request (a
/// frame that could not be decoded far enough to read its id).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResponseFrame {
    /// The id of the request this answers.
    pub id: u64,
    /// Its outcome.
    pub result: WireResult,
}

/// A key as clients name it: a stable label, never a per-session HSM object number.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct KeyHandle(pub String);

impl KeyHandle {
    /// The key's label.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for KeyHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for KeyHandle {
    fn from(s: &str) -> Self {
        Self(s.to_owned())
    }
}

impl From<String> for KeyHandle {
    fn from(s: String) -> Self {
        Self(s)
    }
}

/// Key algorithms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum KeyAlgorithm {
    /// AES secret key, used with AES-GCM.
    Aes,
    /// Generic secret (HMAC) key.
    GenericSecret,
}

impl std::fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KeyAlgorithm::Aes => "AES",
            KeyAlgorithm::GenericSecret => "GENERIC_SECRET",
        })
    }
}

/// What a key is and what it may be used for (the PKCS#11 attributes that matter).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct KeyAttributes {
    /// Key length in bits (AES: 128, 192 or 256).
    pub size_bits: u32,
    /// The key may leave the token wrapped (backup). Default: false.
    pub extractable: bool,
    /// The key's value is never revealed in the clear. Default: true.
    pub sensitive: bool,
    /// The key may encrypt.
    pub encrypt: bool,
    /// The key may decrypt.
    pub decrypt: bool,
    /// The key may wrap other keys.
    pub wrap: bool,
    /// The key may unwrap other keys.
    pub unwrap: bool,
}

impl KeyAttributes {
    /// Safe defaults for an AES key of `size_bits`: sensitive, non-extractable, may
    /// encrypt and decrypt, may not wrap.
    pub const fn aes(size_bits: u32) -> Self {
        Self {
            size_bits,
            extractable: false,
            sensitive: true,
            encrypt: true,
            decrypt: true,
            wrap: false,
            unwrap: false,
        }
    }
}

impl Default for KeyAttributes {
    fn default() -> Self {
        Self::aes(256)
    }
}

/// A key as listed by the daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyInfo {
    /// The name clients use.
    pub handle: KeyHandle,
    /// The algorithm.
    pub algorithm: KeyAlgorithm,
    /// Size and usage attributes.
    pub attributes: KeyAttributes,
    /// The token's CKA_ID (or the soft token's equivalent), hex-friendly bytes.
    #[serde(with = "serde_bytes")]
    pub id: Vec<u8>,
}

/// One operation a client asks for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Request {
    /// Opens a conversation: must be the first request on a connection. Keep as variant 0
    /// with this shape forever.
    Hello {
        /// The client's [`PROTOCOL_VERSION`](crate::PROTOCOL_VERSION).
        version: u32,
        /// Free text naming the client program, for logs.
        client_name: String,
    },
    /// Answers [`Response::Pong`] without touching the HSM.
    Ping,
    /// `len` random bytes from the token's generator (at most
    /// [`MAX_RANDOM_LEN`](crate::MAX_RANDOM_LEN)).
    GenerateRandom {
        /// How many bytes.
        len: u32,
    },
    /// A new AES key with safe default attributes.
    GenerateKey {
        /// Its name; must be unused.
        label: String,
        /// 128, 192 or 256.
        size_bits: u32,
    },
    /// A new AES key with the attributes given.
    GenerateKeyWithAttributes {
        /// Its name; must be unused.
        label: String,
        /// Size and usage.
        attributes: KeyAttributes,
    },
    /// Every key the token holds.
    ListKeys,
    /// AES-GCM encryption under `key`; the answer is a self-describing ciphertext.
    Encrypt {
        /// The key's name.
        key: KeyHandle,
        /// What to encrypt.
        plaintext: SecretBytes,
        /// Additional authenticated data, bound to the ciphertext.
        #[serde(with = "serde_bytes")]
        aad: Option<Vec<u8>>,
    },
    /// Reverses [`Request::Encrypt`].
    Decrypt {
        /// The key's name.
        key: KeyHandle,
        /// A ciphertext produced by `Encrypt`.
        #[serde(with = "serde_bytes")]
        ciphertext: Vec<u8>,
        /// The same AAD given to `Encrypt`.
        #[serde(with = "serde_bytes")]
        aad: Option<Vec<u8>>,
    },
    /// Destroys a key for good.
    DestroyKey {
        /// The key's name.
        key: KeyHandle,
    },
    /// Whether the backend can export keys as password-protected backups.
    SupportsKeyBackup,
    /// Daemon and token health.
    HealthCheck,
    /// Operation counters and latencies.
    GetMetrics,
    /// Many operations in one frame, answered by one [`Response::Batch`] whose elements
    /// succeed or fail on their own. May not contain `Hello` or another `Batch`.
    Batch(Vec<Request>),
    /// Exports an extractable key wrapped under a key derived from `password` (see
    /// `docs/backup.md`). Non-extractable keys are refused with `PermissionDenied`.
    BackupKey {
        /// The key's name.
        key: KeyHandle,
        /// At least 8 bytes; never logged.
        password: SecretBytes,
    },
    /// Imports a backup made by `BackupKey` (on any backend) as a new key named `label`.
    RestoreKey {
        /// The new key's name; must be unused.
        label: String,
        /// The backup blob.
        #[serde(with = "serde_bytes")]
        backup: Vec<u8>,
        /// The password the backup was made with.
        password: SecretBytes,
    },
    /// Creates version 1 of a named KEK in the token (see `docs/envelope.md`).
    GenerateKek {
        /// Its name (same rules as key labels).
        name: String,
    },
    /// Every KEK with its versions and rotation state.
    ListKeks,
    /// A data key derived from the KEK's active version and `context`: deterministic for
    /// (KEK version, context, length); the KEK never leaves the token.
    DeriveDataKey {
        /// The KEK's name.
        kek: String,
        /// What the key is for (a tenant, a table, a file...); binds the key.
        #[serde(with = "serde_bytes")]
        context: Vec<u8>,
        /// Key length in bytes (16 to 64).
        len: u32,
    },
    /// A fresh random data key and the same key wrapped by the KEK's active version.
    GenerateDataKey {
        /// The KEK's name.
        kek: String,
    },
    /// Unwraps what `GenerateDataKey` returned as `wrapped`.
    UnwrapDataKey {
        /// The wrapped data key.
        #[serde(with = "serde_bytes")]
        wrapped: Vec<u8>,
    },
    /// AES-256-GCM in the daemon under the data key derived for `context`; the
    /// ciphertext names its KEK version, so it decrypts after any rotation.
    EnvelopeEncrypt {
        /// The KEK's name.
        kek: String,
        /// The derivation context (also authenticated).
        #[serde(with = "serde_bytes")]
        context: Vec<u8>,
        /// What to encrypt.
        plaintext: SecretBytes,
        /// Additional authenticated data.
        #[serde(with = "serde_bytes")]
        aad: Option<Vec<u8>>,
    },
    /// Reverses `EnvelopeEncrypt`; the KEK and version come from the ciphertext.
    EnvelopeDecrypt {
        /// The derivation context used to encrypt.
        #[serde(with = "serde_bytes")]
        context: Vec<u8>,
        /// The envelope ciphertext.
        #[serde(with = "serde_bytes")]
        ciphertext: Vec<u8>,
        /// The same AAD.
        #[serde(with = "serde_bytes")]
        aad: Option<Vec<u8>>,
    },
    /// Re-encrypts an envelope ciphertext (or a wrapped data key, with an empty context
    /// and no AAD) under the KEK's active version, without returning the plaintext.
    Rewrap {
        /// The derivation context used to encrypt.
        #[serde(with = "serde_bytes")]
        context: Vec<u8>,
        /// The ciphertext or wrapped data key.
        #[serde(with = "serde_bytes")]
        ciphertext: Vec<u8>,
        /// The same AAD.
        #[serde(with = "serde_bytes")]
        aad: Option<Vec<u8>>,
    },
    /// One step of a KEK rotation.
    Rotation {
        /// The KEK's name.
        kek: String,
        /// The step.
        step: RotationStep,
    },
    /// Retires a version that is not active: it stops decrypting, and with `destroy` its
    /// keys are destroyed for good.
    RetireKekVersion {
        /// The KEK's name.
        kek: String,
        /// The version.
        version: u32,
        /// Destroy the keys (irreversible) instead of only disabling them.
        destroy: bool,
    },
    /// Streams audit events (admin only): the daemon answers with one
    /// [`Response::AuditEvent`] frame per event, all carrying this request's id, until
    /// the connection closes. A subscriber that falls behind is told how many events it
    /// missed (an event with op `audit_lagged`) rather than slowing the daemon down.
    SubscribeAudit,
    /// The data key envelopes of `kek` under `context` are sealed with, for a client that
    /// seals and opens envelopes in its own process (`export` access): the active
    /// version's, or `version`'s when given (a version that may still decrypt). Answered
    /// with [`Response::DataKey`]; the key opens every envelope of that version and
    /// context, so it is as sensitive as the data.
    EnvelopeDataKey {
        /// The KEK's name.
        kek: String,
        /// The context the envelopes are bound to.
        #[serde(with = "serde_bytes")]
        context: Vec<u8>,
        /// A version to decrypt with; `None` for the active one.
        version: Option<u32>,
    },
    /// Re-reads the daemon's configuration file and applies it (admin only), as SIGHUP
    /// does: a changed backend is swapped in without dropping a request, other settings
    /// apply in place, and a configuration that does not validate is refused (the running
    /// one stays). Answered with [`Response::Reloaded`].
    Reload,
}

/// A successful answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Response {
    /// Accepts [`Request::Hello`].
    Hello {
        /// The protocol version the daemon will speak on this connection.
        version: u32,
        /// The daemon's software version.
        daemon_version: String,
        /// The backend in use (`soft`, `pkcs11`, ...).
        backend: String,
        /// The largest frame body the daemon accepts; clients keep their frames below it.
        max_frame: u32,
    },
    /// Answers [`Request::Ping`].
    Pong,
    /// Random bytes.
    Random(SecretBytes),
    /// The key just generated.
    KeyGenerated(KeyInfo),
    /// All keys.
    Keys(Vec<KeyInfo>),
    /// A ciphertext.
    Ciphertext(#[serde(with = "serde_bytes")] Vec<u8>),
    /// A plaintext.
    Plaintext(SecretBytes),
    /// The key is gone.
    KeyDestroyed,
    /// Answers [`Request::SupportsKeyBackup`].
    BackupSupported(bool),
    /// Answers [`Request::HealthCheck`].
    Health(HealthStatus),
    /// Answers [`Request::GetMetrics`].
    /// (Boxed: the snapshot is large, and every answer is sized by its largest kind.)
    Metrics(Box<crate::metrics::MetricsSnapshot>),
    /// Answers [`Request::Batch`], element by element in request order.
    Batch(Vec<WireResult>),
    /// Answers [`Request::BackupKey`]: the backup blob.
    KeyBackup(#[serde(with = "serde_bytes")] Vec<u8>),
    /// A KEK after the request (`GenerateKek`, `Rotation`, `RetireKekVersion`).
    Kek(KekInfo),
    /// Answers [`Request::ListKeks`].
    Keks(Vec<KekInfo>),
    /// Answers `DeriveDataKey`, `GenerateDataKey` and `UnwrapDataKey`.
    DataKey(DataKey),
    /// One event of a [`Request::SubscribeAudit`] stream.
    AuditEvent(Box<crate::audit::AuditEvent>),
    /// Answers [`Request::Reload`].
    Reloaded(ReloadReport),
}

/// Overall health.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HealthState {
    /// Everything works.
    Healthy,
    /// Serving, but something needs attention (e.g. some sessions broken).
    Degraded,
    /// Not serving HSM operations.
    Unhealthy,
}

/// What the token says about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenInfo {
    /// Token label.
    pub label: String,
    /// Manufacturer.
    pub manufacturer: String,
    /// Model.
    pub model: String,
    /// Serial number.
    pub serial: String,
}

/// Answer to [`Request::HealthCheck`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthStatus {
    /// Overall state.
    pub state: HealthState,
    /// Backend name.
    pub backend: String,
    /// The token behind it.
    pub token: TokenInfo,
    /// Whether the token answered the health probe.
    pub token_reachable: bool,
    /// Sessions currently open.
    pub active_sessions: u32,
    /// Configured session pool size.
    pub max_sessions: u32,
    /// Keys on the token.
    pub key_count: u64,
    /// Seconds since the daemon started.
    pub uptime_secs: u64,
    /// The backend generation serving requests: 1 at start, one more per hot swap.
    pub generation: u64,
    /// When that generation took over, in seconds since the Unix epoch.
    pub generation_since: u64,
}

/// Answer to [`Request::Reload`]: what the new configuration changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadReport {
    /// The backend generation now serving (one more than before when `swapped`).
    pub generation: u64,
    /// Whether a new backend session pool took over.
    pub swapped: bool,
    /// Settings applied in place, by name.
    pub applied: Vec<String>,
    /// Settings that changed but take effect only at the next restart, by name.
    pub need_restart: Vec<String>,
}
