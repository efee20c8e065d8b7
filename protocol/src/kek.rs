//! Key-encryption keys (KEKs), data keys and rotation: the records the key-manager
//! requests carry.

use serde::{Deserialize, Serialize};

use crate::secret::SecretBytes;

/// One version of a named KEK.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct KekId {
    /// The KEK's name.
    pub name: String,
    /// Its version, from 1.
    pub version: u32,
}

impl std::fmt::Display for KekId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@v{}", self.name, self.version)
    }
}

/// A step of the rotation state machine, or a look at it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RotationStep {
    /// `Active(v)` → `Pending(v, v+1)`: creates version v+1 in the token.
    Prepare,
    /// Round-trips through v+1 inside the token (encrypt/decrypt, wrap/unwrap, derive).
    Validate,
    /// `Pending(v, v+1)` (validated) → `Active(v+1)`.
    Commit,
    /// `Pending(v, v+1)` → `Active(v)`, destroying v+1.
    Rollback,
    /// Changes nothing; answers the current state.
    Status,
}

/// What a KEK version may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum KekVersionState {
    /// Encrypts, decrypts and derives: the one new data is protected with.
    Active,
    /// Created by `Prepare`; not used for new data until committed.
    Pending,
    /// An earlier version: decrypts what it protected, never encrypts.
    DecryptOnly,
    /// Retired: refuses everything; its keys still exist in the token.
    Retired,
    /// Destroyed: its keys are gone, and what it protected is unrecoverable.
    Destroyed,
}

/// One version's place in a KEK's life.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KekVersionInfo {
    /// The version.
    pub version: u32,
    /// What it may do.
    pub state: KekVersionState,
}

/// A KEK and its versions, as the token records them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KekInfo {
    /// The name.
    pub name: String,
    /// The version new data uses.
    pub active_version: u32,
    /// The version a rotation in progress created, if any.
    pub pending_version: Option<u32>,
    /// Whether the pending version passed validation (commit requires it).
    pub pending_validated: bool,
    /// Every version, oldest first.
    pub versions: Vec<KekVersionInfo>,
}

/// A data-encryption key handed to the caller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataKey {
    /// The key itself; wipe it when done.
    pub dek: SecretBytes,
    /// The KEK version it belongs to.
    pub kek: KekId,
    /// For `GenerateDataKey`: the DEK wrapped by the KEK, to store beside the data.
    #[serde(with = "serde_bytes")]
    pub wrapped: Option<Vec<u8>>,
}
