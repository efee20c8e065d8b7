//! Stable error codes: the one error vocabulary shared by every backend, the daemon and
//! every client.
//!
//! Codes travel as `u16` numbers that never change meaning. New codes are added with new
//! numbers; a peer that receives a number it does not know reads it as
//! [`ErrorCode::Unknown`] instead of failing to decode the whole response.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why an operation failed, as a stable code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// The backend or token is not initialised, or the daemon is not ready yet.
    NotInitialized,
    /// No key with that name exists.
    KeyNotFound,
    /// The backend could not carry out the operation.
    OperationFailed,
    /// The HSM session broke and the retry budget ran out.
    SessionInvalid,
    /// The caller, or the key's attributes, do not permit this operation.
    PermissionDenied,
    /// The request is malformed or its arguments are out of range.
    InvalidRequest,
    /// The frame is larger than the configured limit.
    FrameTooLarge,
    /// The client speaks a protocol version the daemon does not.
    UnsupportedVersion,
    /// The daemon's queue is full; retry later.
    Busy,
    /// Authenticated decryption failed: wrong key, wrong AAD, or tampered ciphertext.
    IntegrityCheckFailed,
    /// The backend does not support this operation.
    Unsupported,
    /// A key with that name already exists.
    KeyExists,
    /// The daemon is shutting down or the backend is unreachable.
    Unavailable,
    /// The request is not allowed in the object's current state (e.g. committing a
    /// rotation that was not validated).
    InvalidState,
    /// The audit record of this operation could not be written, so the operation was
    /// not carried out (key-changing operations) or its answer was withheld
    /// (`audit.fail_closed`).
    AuditUnavailable,
    /// A code this build does not know (sent by a newer peer).
    Unknown(u16),
}

impl ErrorCode {
    /// The number that goes on the wire. These numbers never change.
    pub const fn as_u16(self) -> u16 {
        match self {
            ErrorCode::NotInitialized => 1,
            ErrorCode::KeyNotFound => 2,
            ErrorCode::OperationFailed => 3,
            ErrorCode::SessionInvalid => 4,
            ErrorCode::PermissionDenied => 5,
            ErrorCode::InvalidRequest => 6,
            ErrorCode::FrameTooLarge => 7,
            ErrorCode::UnsupportedVersion => 8,
            ErrorCode::Busy => 9,
            ErrorCode::IntegrityCheckFailed => 10,
            ErrorCode::Unsupported => 11,
            ErrorCode::KeyExists => 12,
            ErrorCode::Unavailable => 13,
            ErrorCode::InvalidState => 14,
            ErrorCode::AuditUnavailable => 15,
            ErrorCode::Unknown(n) => n,
        }
    }

    /// The code for a wire number; numbers this build does not know become `Unknown`.
    pub const fn from_u16(n: u16) -> Self {
        match n {
            1 => ErrorCode::NotInitialized,
            2 => ErrorCode::KeyNotFound,
            3 => ErrorCode::OperationFailed,
            4 => ErrorCode::SessionInvalid,
            5 => ErrorCode::PermissionDenied,
            6 => ErrorCode::InvalidRequest,
            7 => ErrorCode::FrameTooLarge,
            8 => ErrorCode::UnsupportedVersion,
            9 => ErrorCode::Busy,
            10 => ErrorCode::IntegrityCheckFailed,
            11 => ErrorCode::Unsupported,
            12 => ErrorCode::KeyExists,
            13 => ErrorCode::Unavailable,
            14 => ErrorCode::InvalidState,
            15 => ErrorCode::AuditUnavailable,
            n => ErrorCode::Unknown(n),
        }
    }

    /// A short stable name, for logs, metrics and `--json` output.
    pub const fn name(self) -> &'static str {
        match self {
            ErrorCode::NotInitialized => "not_initialized",
            ErrorCode::KeyNotFound => "key_not_found",
            ErrorCode::OperationFailed => "operation_failed",
            ErrorCode::SessionInvalid => "session_invalid",
            ErrorCode::PermissionDenied => "permission_denied",
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::FrameTooLarge => "frame_too_large",
            ErrorCode::UnsupportedVersion => "unsupported_version",
            ErrorCode::Busy => "busy",
            ErrorCode::IntegrityCheckFailed => "integrity_check_failed",
            ErrorCode::Unsupported => "unsupported",
            ErrorCode::KeyExists => "key_exists",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::InvalidState => "invalid_state",
            ErrorCode::AuditUnavailable => "audit_unavailable",
            ErrorCode::Unknown(_) => "unknown",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u16(self.as_u16())
    }
}

impl<'de> Deserialize<'de> for ErrorCode {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        u16::deserialize(deserializer).map(ErrorCode::from_u16)
    }
}

/// An error as it travels on the wire: a stable code and a human-readable message.
///
/// The message is for people and logs; programs match on the [`code`](Self::code). It
/// never carries secret material.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct WireError {
    /// What went wrong, as a stable code.
    pub code: ErrorCode,
    /// Details for people.
    pub message: String,
}

impl WireError {
    /// An error with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The numbers are a public contract: this test fails if one is ever renumbered.
    #[test]
    fn codes_are_stable_and_round_trip() {
        let expected = [
            (ErrorCode::NotInitialized, 1),
            (ErrorCode::KeyNotFound, 2),
            (ErrorCode::OperationFailed, 3),
            (ErrorCode::SessionInvalid, 4),
            (ErrorCode::PermissionDenied, 5),
            (ErrorCode::InvalidRequest, 6),
            (ErrorCode::FrameTooLarge, 7),
            (ErrorCode::UnsupportedVersion, 8),
            (ErrorCode::Busy, 9),
            (ErrorCode::IntegrityCheckFailed, 10),
            (ErrorCode::Unsupported, 11),
            (ErrorCode::KeyExists, 12),
            (ErrorCode::Unavailable, 13),
            (ErrorCode::InvalidState, 14),
        ];
        for (code, n) in expected {
            assert_eq!(code.as_u16(), n, "{code:?}");
            assert_eq!(ErrorCode::from_u16(n), code);
        }
        assert_eq!(ErrorCode::from_u16(999), ErrorCode::Unknown(999));
        assert_eq!(ErrorCode::Unknown(999).as_u16(), 999);
    }
}
