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
use zeroize::Zeroizing;

pub use error::BackendError;

/// Result of a backend call.
pub type BackendResult<T> = Result<T, BackendError>;

/// Separates a label from the id in a [key reference](key_ref).
const ID_SEPARATOR: &str = "?id=";

/// Names exactly one key among keys that may share a label: `<label>?id=<hex CKA_ID>`.
/// Every key operation that takes a key name accepts this form. Client labels cannot
/// contain `?`, so it never collides with a label.
pub fn key_ref(label: &str, id: &[u8]) -> String {
    let mut out = String::with_capacity(label.len() + ID_SEPARATOR.len() + id.len() * 2);
    out.push_str(label);
    out.push_str(ID_SEPARATOR);
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for b in id {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 15)]));
    }
    out
}

/// Splits a key name into its label and, for a [key reference](key_ref), the id.
pub fn split_key_ref(name: &str) -> (&str, Option<Vec<u8>>) {
    let Some((label, hex)) = name.split_once(ID_SEPARATOR) else { return (name, None) };
    let id = (hex.len() % 2 == 0)
        .then(|| {
            (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
                .collect::<Option<Vec<u8>>>()
        })
        .flatten();
    match id {
        Some(id) => (label, Some(id)),
        // Not a well-formed reference: treat the whole name as a label (it will not match).
        None => (name, None),
    }
}

/// The two kinds of key a KEK version has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KekKeyKind {
    /// An AES key with these attributes.
    Aes(KeyAttributes),
    /// A generic secret of this many bytes for HMAC-SHA256, sensitive, non-extractable.
    Hmac(usize),
}

/// What a [`compare_and_swap_object`](BackendSession::compare_and_swap_object) did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SwapOutcome {
    /// The new value is now the object's value.
    Swapped,
    /// Another value took the place this one competed for; this value never was and
    /// never will be the object's value.
    Lost,
    /// The object moved on past the place this value competed for before the outcome
    /// could be read back: the value may or may not have been current for a while.
    Superseded,
    /// Too much contention: the value was not settled and may still become current
    /// later (another writer may finish it). Nothing this write created may be removed.
    Undecided,
}

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

    /// Releases the token for good (`C_Finalize` for a PKCS#11 module). Called once, at
    /// shutdown, after every session has been closed; nothing may use the backend after.
    fn finalize(&self) {}
}

/// One session on a token. Not shared between threads.
pub trait BackendSession: Send {
    /// `len` bytes from the token's random generator.
    fn generate_random(&mut self, len: usize) -> BackendResult<SecretBytes>;

    /// Creates a persistent AES key named `label`.
    fn generate_key(&mut self, label: &str, attributes: &KeyAttributes) -> BackendResult<KeyInfo>;

    /// Every key on the token.
    fn list_keys(&mut self) -> BackendResult<Vec<KeyInfo>>;

    /// AES-GCM encryption; returns a [self-describing ciphertext](crate::formats::ciphertext).
    fn encrypt(&mut self, key: &str, plaintext: &[u8], aad: &[u8]) -> BackendResult<Vec<u8>>;

    /// Reverses [`encrypt`](Self::encrypt).
    fn decrypt(&mut self, key: &str, ciphertext: &[u8], aad: &[u8]) -> BackendResult<SecretBytes>;

    /// Destroys the key named `label`.
    fn destroy_key(&mut self, label: &str) -> BackendResult<()>;

    /// A cheap call that proves the token answers.
    fn probe(&mut self) -> BackendResult<()>;

    /// Whether the key `key` (a label or [key reference](key_ref)) exists, from cached
    /// handles where the backend keeps them. The encryption budget is only charged, and
    /// its record in the token only made, for keys that exist. The default answers `true`
    /// (a backend without it is charged for every name asked for).
    fn has_key(&mut self, key: &str) -> BackendResult<bool> {
        let _ = key;
        Ok(true)
    }

    /// Exports an extractable key as a password-protected [backup](crate::formats::backup).
    fn backup_key(&mut self, label: &str, password: &[u8]) -> BackendResult<Vec<u8>> {
        let _ = (label, password);
        Err(BackendError::Unsupported("this backend cannot back up keys".into()))
    }

    /// Creates a persistent generic-secret key of `len` bytes for HMAC-SHA256, sensitive
    /// and non-extractable (a KEK's derivation key).
    fn generate_hmac_key(&mut self, label: &str, len: usize) -> BackendResult<()> {
        let _ = (label, len);
        Err(BackendError::Unsupported("this backend cannot make HMAC keys".into()))
    }

    /// HMAC-SHA256 of `data` under the key `label`, computed by the token.
    fn hmac_sha256(&mut self, label: &str, data: &[u8]) -> BackendResult<Zeroizing<[u8; 32]>> {
        let _ = (label, data);
        Err(BackendError::Unsupported("this backend cannot compute HMACs".into()))
    }

    /// Reads the persistent data object `label` (small state records, e.g. a KEK's
    /// rotation state), if it exists.
    fn read_object(&mut self, label: &str) -> BackendResult<Option<Vec<u8>>> {
        let _ = label;
        Err(BackendError::Unsupported("this backend cannot store data objects".into()))
    }

    /// Creates or replaces the data object `label`, atomically.
    fn write_object(&mut self, label: &str, value: &[u8]) -> BackendResult<()> {
        let _ = (label, value);
        Err(BackendError::Unsupported("this backend cannot store data objects".into()))
    }

    /// Labels of the data objects whose label starts with `prefix`.
    fn list_objects(&mut self, prefix: &str) -> BackendResult<Vec<String>> {
        let _ = prefix;
        Err(BackendError::Unsupported("this backend cannot store data objects".into()))
    }

    /// Creates a persistent KEK key under `label` with a fresh random id, and returns the
    /// id. Unlike [`generate_key`](Self::generate_key) it does not refuse a label in use:
    /// KEK versions are told apart by id, because two daemons may race for one label.
    fn create_kek_key(&mut self, label: &str, kind: KekKeyKind) -> BackendResult<Vec<u8>> {
        let _ = (label, kind);
        Err(BackendError::Unsupported("this backend cannot make KEK keys".into()))
    }

    /// `(label, id)` of every key whose label starts with `prefix`, sorted.
    fn list_key_ids(&mut self, prefix: &str) -> BackendResult<Vec<(String, Vec<u8>)>> {
        Ok(self
            .list_keys()?
            .into_iter()
            .map(|k| (k.handle.to_string(), k.id))
            .filter(|(l, _)| l.starts_with(prefix))
            .collect())
    }

    /// Replaces the data object `label` with `value` if its current value is `expected`
    /// (`None`: the object must not exist), as one atomic step even against other
    /// processes on the same token.
    ///
    /// The default is a read followed by a write, which is atomic only when a single
    /// writer owns the token.
    fn compare_and_swap_object(
        &mut self,
        label: &str,
        expected: Option<&[u8]>,
        value: &[u8],
    ) -> BackendResult<SwapOutcome> {
        if self.read_object(label)?.as_deref() != expected {
            return Ok(SwapOutcome::Lost);
        }
        self.write_object(label, value)?;
        Ok(SwapOutcome::Swapped)
    }

    /// Imports a [backup](crate::formats::backup) as a new key named `label`.
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
