//! The client's error type: one variant per wire error code, plus the ways a connection
//! can fail. Callers match on variants (`Error::KeyNotFound(_)`) rather than on text.

use std::path::PathBuf;

use harpocrates_protocol::{ErrorCode, Response, WireError};

/// Result of a client call.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a call failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The token or daemon is not initialised.
    #[error("not initialized: {0}")]
    NotInitialized(String),
    /// No such key.
    #[error("key not found: {0}")]
    KeyNotFound(String),
    /// The backend failed the operation.
    #[error("operation failed: {0}")]
    OperationFailed(String),
    /// The HSM session broke and the daemon's retry budget ran out.
    #[error("session invalid: {0}")]
    SessionInvalid(String),
    /// Not allowed for this caller or key.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// The request was malformed or out of range.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// A frame exceeded the size limit.
    #[error("frame too large: {0}")]
    FrameTooLarge(String),
    /// The daemon speaks another protocol version.
    #[error("unsupported protocol version: {0}")]
    UnsupportedVersion(String),
    /// The daemon is overloaded; retry later.
    #[error("busy: {0}")]
    Busy(String),
    /// Decryption failed authentication.
    #[error("integrity check failed: {0}")]
    IntegrityCheckFailed(String),
    /// The backend cannot do this.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// A key with that name exists.
    #[error("key exists: {0}")]
    KeyExists(String),
    /// The daemon is shutting down or its token is unreachable.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// Not allowed in the current state (e.g. committing an unvalidated rotation).
    #[error("invalid state: {0}")]
    InvalidState(String),
    /// The daemon could not write the operation's audit record, so it did not carry out
    /// the operation (key-changing operations) or withheld its answer. Retry once the
    /// daemon's audit storage is fixed.
    #[error("audit unavailable: {0}")]
    AuditUnavailable(String),
    /// An error code this client version does not know.
    #[error("error {code}: {message}")]
    Unknown {
        /// The raw code.
        code: u16,
        /// The daemon's message.
        message: String,
    },
    /// The daemon's socket could not be reached.
    ///
    /// `kind` tells the causes apart: [`std::io::ErrorKind::PermissionDenied`] (EACCES: this
    /// user may not use the socket or its directory) needs different help than
    /// [`std::io::ErrorKind::NotFound`] or [`std::io::ErrorKind::ConnectionRefused`] (no
    /// daemon listening).
    #[error("cannot connect to {}: {reason}{}", path.display(), connect_hint(*kind))]
    Connect {
        /// The socket path tried.
        path: PathBuf,
        /// The OS error, as text.
        reason: String,
        /// The OS error's kind.
        kind: std::io::ErrorKind,
    },
    /// No answer came in time: connecting and the handshake took longer than
    /// [`ClientOptions::connect_timeout`](crate::ClientOptions::connect_timeout), or a call
    /// longer than [`ClientOptions::request_timeout`](crate::ClientOptions::request_timeout).
    /// A call that timed out may or may not have been carried out by the daemon; its late
    /// answer, if one comes, is discarded. The connection stays usable for other calls.
    #[error("timed out: {0}")]
    Timeout(String),
    /// The connection closed before the answer arrived; the request may or may not have
    /// been carried out.
    #[error("connection to the daemon lost: {0}")]
    ConnectionLost(String),
    /// The daemon answered with something this call did not expect.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A [`LocalEnvelope`](crate::LocalEnvelope) was given a ciphertext of another KEK
    /// (found in its header; nothing was decrypted and the daemon was not asked).
    #[error("the ciphertext is under KEK '{found}', not '{expected}'")]
    WrongKek {
        /// The KEK the envelope seals and opens under.
        expected: String,
        /// The KEK the ciphertext names.
        found: String,
    },
}

impl Error {
    /// The wire code, for errors the daemon reported.
    pub fn code(&self) -> Option<ErrorCode> {
        Some(match self {
            Error::NotInitialized(_) => ErrorCode::NotInitialized,
            Error::KeyNotFound(_) => ErrorCode::KeyNotFound,
            Error::OperationFailed(_) => ErrorCode::OperationFailed,
            Error::SessionInvalid(_) => ErrorCode::SessionInvalid,
            Error::PermissionDenied(_) => ErrorCode::PermissionDenied,
            Error::InvalidRequest(_) => ErrorCode::InvalidRequest,
            Error::FrameTooLarge(_) => ErrorCode::FrameTooLarge,
            Error::UnsupportedVersion(_) => ErrorCode::UnsupportedVersion,
            Error::Busy(_) => ErrorCode::Busy,
            Error::IntegrityCheckFailed(_) => ErrorCode::IntegrityCheckFailed,
            Error::Unsupported(_) => ErrorCode::Unsupported,
            Error::KeyExists(_) => ErrorCode::KeyExists,
            Error::Unavailable(_) => ErrorCode::Unavailable,
            Error::InvalidState(_) => ErrorCode::InvalidState,
            Error::AuditUnavailable(_) => ErrorCode::AuditUnavailable,
            Error::Unknown { code, .. } => ErrorCode::from_u16(*code),
            Error::Connect { .. }
            | Error::ConnectionLost(_)
            | Error::Protocol(_)
            | Error::Timeout(_)
            | Error::WrongKek { .. } => return None,
        })
    }

    /// Whether the same call may succeed if simply retried later.
    ///
    /// A [`Timeout`](Error::Timeout) is not: like [`ConnectionLost`](Error::ConnectionLost),
    /// the call may have run. Nor is a [`Connect`](Error::Connect) refused for lack of
    /// permission.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Busy(_) | Error::Unavailable(_) | Error::SessionInvalid(_) => true,
            Error::Connect { kind, .. } => *kind != std::io::ErrorKind::PermissionDenied,
            _ => false,
        }
    }

    /// A [`Connect`](Error::Connect) error for `path` from the OS error `e`.
    pub(crate) fn connect(path: &std::path::Path, e: &std::io::Error) -> Self {
        Error::Connect { path: path.to_owned(), reason: e.to_string(), kind: e.kind() }
    }
}

/// The advice after a connect error's reason.
fn connect_hint(kind: std::io::ErrorKind) -> &'static str {
    match kind {
        std::io::ErrorKind::PermissionDenied => {
            " (this user may not open the socket or its directory: the daemon's socket is \
             usually open to one group, so ask to be added to it)"
        }
        _ => " (is harpocratesd running?)",
    }
}

impl From<WireError> for Error {
    fn from(e: WireError) -> Self {
        let m = e.message;
        match e.code {
            ErrorCode::NotInitialized => Error::NotInitialized(m),
            ErrorCode::KeyNotFound => Error::KeyNotFound(m),
            ErrorCode::OperationFailed => Error::OperationFailed(m),
            ErrorCode::SessionInvalid => Error::SessionInvalid(m),
            ErrorCode::PermissionDenied => Error::PermissionDenied(m),
            ErrorCode::InvalidRequest => Error::InvalidRequest(m),
            ErrorCode::FrameTooLarge => Error::FrameTooLarge(m),
            ErrorCode::UnsupportedVersion => Error::UnsupportedVersion(m),
            ErrorCode::Busy => Error::Busy(m),
            ErrorCode::IntegrityCheckFailed => Error::IntegrityCheckFailed(m),
            ErrorCode::Unsupported => Error::Unsupported(m),
            ErrorCode::KeyExists => Error::KeyExists(m),
            ErrorCode::Unavailable => Error::Unavailable(m),
            ErrorCode::InvalidState => Error::InvalidState(m),
            ErrorCode::AuditUnavailable => Error::AuditUnavailable(m),
            other => Error::Unknown { code: other.as_u16(), message: m },
        }
    }
}

/// Names a response without printing its contents (which may be secret).
pub(crate) fn describe(response: &Response) -> &'static str {
    match response {
        Response::Hello { .. } => "Hello",
        Response::Pong => "Pong",
        Response::Random(_) => "Random",
        Response::KeyGenerated(_) => "KeyGenerated",
        Response::Keys(_) => "Keys",
        Response::Ciphertext(_) => "Ciphertext",
        Response::Plaintext(_) => "Plaintext",
        Response::KeyDestroyed => "KeyDestroyed",
        Response::BackupSupported(_) => "BackupSupported",
        Response::Health(_) => "Health",
        Response::Metrics(_) => "Metrics",
        Response::Batch(_) => "Batch",
        Response::KeyBackup(_) => "KeyBackup",
        Response::Kek(_) => "Kek",
        Response::Keks(_) => "Keks",
        Response::DataKey(_) => "DataKey",
        Response::AuditEvent(_) => "AuditEvent",
        _ => "a newer response kind",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_known_code_maps_to_its_variant_and_back() {
        for n in 1..=15u16 {
            let code = ErrorCode::from_u16(n);
            let e = Error::from(WireError::new(code, "m"));
            assert_eq!(e.code(), Some(code), "{e:?}");
            assert!(!matches!(e, Error::Unknown { .. }), "{code:?} has a variant of its own");
        }
        let e = Error::from(WireError::new(ErrorCode::from_u16(999), "new"));
        assert!(matches!(e, Error::Unknown { code: 999, .. }));
    }
}
