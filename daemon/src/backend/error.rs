//! The backend error type and its one mapping to wire error codes.

use harpocrates_protocol::{ErrorCode, WireError};

/// Why a backend operation failed.
///
/// Messages never contain key material, plaintext or PINs. They carry the detail only:
/// the kind travels as the wire code, and clients print both.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// No key has that label.
    #[error("no key named '{0}'")]
    KeyNotFound(String),
    /// Something other than a plain key label is missing (a KEK, a KEK version, a key
    /// handle another process invalidated); the message is a whole sentence.
    #[error("{0}")]
    NotFound(String),
    /// A key with that label exists already.
    #[error("a key named '{0}' already exists")]
    KeyExists(String),
    /// Something other than a plain key label exists already (a KEK); the message is a
    /// whole sentence.
    #[error("{0}")]
    AlreadyExists(String),
    /// An argument is out of range or malformed.
    #[error("{0}")]
    InvalidArgument(String),
    /// The key's attributes forbid the operation.
    #[error("{0}")]
    NotPermitted(String),
    /// Authenticated decryption failed.
    #[error("wrong key, wrong AAD or tampered data")]
    IntegrityCheckFailed,
    /// The token cannot do this.
    #[error("{0}")]
    Unsupported(String),
    /// The token or its login is not ready (wrong PIN, uninitialised token).
    #[error("{0}")]
    NotInitialized(String),
    /// The session or device broke; a fresh session may succeed. The session actor
    /// retries these within its budget.
    #[error("session broken: {0}")]
    SessionBroken(String),
    /// The retry budget for broken sessions is spent.
    #[error("session invalid after {attempts} attempts: {last}")]
    RetriesExhausted {
        /// How many attempts were made.
        attempts: u32,
        /// The last failure.
        last: String,
    },
    /// Persisting key state failed; nothing was changed.
    #[error("key store: {0}")]
    Storage(String),
    /// The backend could not start (module, token, PIN); the message says exactly why.
    #[error("{0}")]
    Startup(String),
    /// The object's state does not allow this (rotation steps out of order, a retired
    /// KEK version).
    #[error("{0}")]
    InvalidState(String),
    /// Anything else the token reported.
    #[error("{0}")]
    Failed(String),
}

impl BackendError {
    /// Whether the thing asked for does not exist (a key, or a handle that went away).
    pub fn is_not_found(&self) -> bool {
        matches!(self, BackendError::KeyNotFound(_) | BackendError::NotFound(_))
    }

    /// Whether a fresh session could make the same call succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, BackendError::SessionBroken(_))
    }

    /// The wire code for this error. This is the only place backend errors meet wire
    /// codes.
    pub fn code(&self) -> ErrorCode {
        match self {
            BackendError::KeyNotFound(_) | BackendError::NotFound(_) => ErrorCode::KeyNotFound,
            BackendError::KeyExists(_) | BackendError::AlreadyExists(_) => ErrorCode::KeyExists,
            BackendError::InvalidArgument(_) => ErrorCode::InvalidRequest,
            BackendError::NotPermitted(_) => ErrorCode::PermissionDenied,
            BackendError::IntegrityCheckFailed => ErrorCode::IntegrityCheckFailed,
            BackendError::Unsupported(_) => ErrorCode::Unsupported,
            BackendError::NotInitialized(_) | BackendError::Startup(_) => ErrorCode::NotInitialized,
            BackendError::SessionBroken(_) | BackendError::RetriesExhausted { .. } => {
                ErrorCode::SessionInvalid
            }
            BackendError::InvalidState(_) => ErrorCode::InvalidState,
            BackendError::Storage(_) | BackendError::Failed(_) => ErrorCode::OperationFailed,
        }
    }
}

impl From<BackendError> for WireError {
    fn from(e: BackendError) -> Self {
        WireError::new(e.code(), e.to_string())
    }
}

impl From<crate::formats::backup::BackupError> for BackendError {
    fn from(e: crate::formats::backup::BackupError) -> Self {
        use crate::formats::backup::BackupError;
        match e {
            BackupError::Invalid(m) => BackendError::InvalidArgument(m),
            BackupError::IntegrityCheckFailed => BackendError::IntegrityCheckFailed,
            BackupError::Unsupported(m) => BackendError::Unsupported(m),
            BackupError::Failed(m) => BackendError::Failed(m),
        }
    }
}
