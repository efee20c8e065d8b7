//! Backends: where keys live and operations run.
//!
//! A [`Backend`] is a token (the embedded [`soft`] token, a PKCS#11 module, ...). It hands
//! out [`BackendSession`]s; each session is owned by exactly one session actor, so a
//! session never needs to be `Sync` (PKCS#11 sessions are not). Keys are named by label;
//! backends keep any per-session object handles to themselves.
//!
//! A program embedding the daemon library can plug its own token in by implementing these
//! two traits.

pub mod error;
pub mod pkcs11;
pub mod soft;

use harpocrates_protocol::{KeyAttributes, KeyInfo, SecretBytes, TokenInfo};

pub use error::BackendError;

/// Result of a backend call.
pub type BackendResult<T> = Result<T, BackendError>;

/// A token that can open sessions.
pub trait Backend: Send + Sync + 'static {
    /// Short name reported to clients (`soft`, `pkcs11`).
    fn name(&self) -> &'static str;

    /// Opens a new session. Called by a session actor when it starts, and again after a
    /// session broke.
    fn open_session(&self) -> BackendResult<Box<dyn BackendSession>>;

    /// What the token says about itself.
    fn token_info(&self) -> TokenInfo;

    /// Whether keys can be exported as password-protected backups.
    fn supports_key_backup(&self) -> bool;
}

/// One session on a token. Not shared between threads.
pub trait BackendSession: Send {
    /// `len` bytes from the token's random generator.
    fn generate_random(&mut self, len: usize) -> BackendResult<SecretBytes>;

    /// Creates a persistent AES key named `label`.
    fn generate_key(&mut self, label: &str, attributes: &KeyAttributes) -> BackendResult<KeyInfo>;

    /// Every key on the token.
    fn list_keys(&mut self) -> BackendResult<Vec<KeyInfo>>;

    /// AES-GCM encryption; returns a [self-describing ciphertext](crate::keys::ciphertext).
    fn encrypt(&mut self, key: &str, plaintext: &[u8], aad: &[u8]) -> BackendResult<Vec<u8>>;

    /// Reverses [`encrypt`](Self::encrypt).
    fn decrypt(&mut self, key: &str, ciphertext: &[u8], aad: &[u8]) -> BackendResult<SecretBytes>;

    /// Destroys the key named `label`.
    fn destroy_key(&mut self, label: &str) -> BackendResult<()>;

    /// A cheap call that proves the token answers.
    fn probe(&mut self) -> BackendResult<()>;

    /// Exports an extractable key as a password-protected [backup](crate::keys::backup).
    fn backup_key(&mut self, label: &str, password: &[u8]) -> BackendResult<Vec<u8>> {
        let _ = (label, password);
        Err(BackendError::Unsupported("this backend cannot back up keys".into()))
    }

    /// Imports a [backup](crate::keys::backup) as a new key named `label`.
    fn restore_key(
        &mut self,
        label: &str,
        backup: &[u8],
        password: &[u8],
    ) -> BackendResult<KeyInfo> {
        let _ = (label, backup, password);
        Err(BackendError::Unsupported("this backend cannot restore keys".into()))
    }
}
