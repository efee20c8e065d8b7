//! KEKs in the token: how their objects are named, and the rotation state machine.
//!
//! A KEK version is two token keys, never extractable: an AES-256 key (wraps data keys,
//! validation round trips) and a 32-byte generic secret for HMAC-SHA256 (the root data
//! keys are derived from). A KEK's state — active version, pending rotation, retired and
//! destroyed versions — is one data object in the token, replaced in a single write, so
//! the token is the only source of truth and every daemon on it agrees.
//!
//! Object labels start with `#`, which client labels may not contain, so clients can
//! neither see nor touch them through the plain key operations.

use std::collections::{BTreeMap, BTreeSet};

use harpocrates_protocol::{KekInfo, KekVersionInfo, KekVersionState, RotationStep};
use serde::{Deserialize, Serialize};

use crate::backend::BackendError;

/// Prefix of every label the key manager owns.
pub const INTERNAL_PREFIX: &str = "#";
/// Prefix of the KEK state objects.
pub const STATE_PREFIX: &str = "#kek/";

/// Label of version `v`'s AES key.
pub fn aes_label(name: &str, v: u32) -> String {
    format!("#kek/{name}/v{v}/aes")
}

/// Label of version `v`'s HMAC key.
pub fn mac_label(name: &str, v: u32) -> String {
    format!("#kek/{name}/v{v}/mac")
}

/// Label of the KEK's state object.
pub fn state_label(name: &str) -> String {
    format!("#kek/{name}/state")
}

/// The KEK name a state label belongs to.
pub fn name_of_state_label(label: &str) -> Option<&str> {
    label.strip_prefix(STATE_PREFIX)?.strip_suffix("/state")
}

/// Which keys a KEK version is: the ids (`CKA_ID`) of its two keys. A label alone does
/// not name a key for sure (two daemons may create keys under one label at once); the
/// id does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionKeys {
    /// Id of the AES key.
    pub aes: Vec<u8>,
    /// Id of the HMAC key.
    pub mac: Vec<u8>,
}

/// The encoding this code writes.
const FORMAT: u8 = 2;

/// A KEK's rotation state, as stored in the token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KekState {
    /// Encoding version of this record.
    pub format: u8,
    /// The version new data uses.
    pub active: u32,
    /// A prepared rotation: the new version, and whether it passed validation.
    pub pending: Option<(u32, bool)>,
    /// Versions that refuse everything but still exist.
    pub retired: BTreeSet<u32>,
    /// Versions whose keys are gone.
    pub destroyed: BTreeSet<u32>,
    /// The highest version ever created; numbers are never reused.
    pub highest: u32,
    /// Bumped by every write, so a cache never replaces a newer state with an older one.
    pub revision: u64,
    /// Destroyed versions whose keys may still be in the token (a crash or a failed
    /// destroy); removed before the next change, then dropped from this set.
    pub cleanup: BTreeSet<u32>,
    /// The keys of each version this code created (format 2). A version missing here
    /// was created by format-1 code and is found by label alone; every key under its
    /// label is a candidate.
    pub keys: BTreeMap<u32, VersionKeys>,
}

/// Format 1, written before versions recorded their key ids.
#[derive(Deserialize)]
struct KekStateV1 {
    format: u8,
    active: u32,
    pending: Option<(u32, bool)>,
    retired: BTreeSet<u32>,
    destroyed: BTreeSet<u32>,
    highest: u32,
    revision: u64,
    cleanup: BTreeSet<u32>,
}

/// What a transition asks the token to do, in order, before and after the state write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Create both keys of this version (before writing the state).
    CreateVersion(u32),
    /// Round-trip through this version inside the token (before writing the state).
    Validate(u32),
    /// Destroy both keys of this version (after writing the state).
    DestroyVersion(u32),
}

fn illegal(msg: String) -> BackendError {
    BackendError::InvalidState(msg)
}

impl KekState {
    /// The state of a new KEK: version 1 active.
    pub fn new() -> Self {
        Self {
            format: FORMAT,
            active: 1,
            pending: None,
            retired: BTreeSet::new(),
            destroyed: BTreeSet::new(),
            highest: 1,
            revision: 1,
            cleanup: BTreeSet::new(),
            keys: BTreeMap::new(),
        }
    }

    /// Encodes for the token.
    pub fn encode(&self) -> Vec<u8> {
        bincode::serde::encode_to_vec(self, bincode::config::standard()).unwrap_or_default()
    }

    /// Decodes what [`encode`](Self::encode) wrote, or a format-1 state (whose versions
    /// then have no recorded key ids).
    pub fn decode(bytes: &[u8]) -> Result<Self, BackendError> {
        fn exact<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, BackendError> {
            let (value, used): (T, usize) =
                bincode::serde::decode_from_slice(bytes, bincode::config::standard())
                    .map_err(|e| BackendError::Failed(format!("unreadable KEK state: {e}")))?;
            if used != bytes.len() {
                return Err(BackendError::Failed("unreadable KEK state".into()));
            }
            Ok(value)
        }
        // bincode writes the leading u8 `format` as one byte.
        match bytes.first() {
            Some(1) => {
                let v1: KekStateV1 = exact(bytes)?;
                Ok(Self {
                    format: v1.format,
                    active: v1.active,
                    pending: v1.pending,
                    retired: v1.retired,
                    destroyed: v1.destroyed,
                    highest: v1.highest,
                    revision: v1.revision,
                    cleanup: v1.cleanup,
                    keys: BTreeMap::new(),
                })
            }
            Some(&FORMAT) => exact(bytes),
            _ => Err(BackendError::Failed("unreadable KEK state".into())),
        }
    }

    /// The recorded ids of version `v`'s keys, if this code created it.
    pub fn version_keys(&self, v: u32) -> Option<&VersionKeys> {
        self.keys.get(&v)
    }

    /// The highest version ever created.
    pub fn latest(&self) -> u32 {
        self.highest
    }

    /// What `version` may do now.
    pub fn version_state(&self, version: u32) -> Option<KekVersionState> {
        if version == 0 || version > self.latest() {
            return None;
        }
        Some(if self.destroyed.contains(&version) {
            KekVersionState::Destroyed
        } else if self.retired.contains(&version) {
            KekVersionState::Retired
        } else if version == self.active {
            KekVersionState::Active
        } else if self.pending.is_some_and(|(p, _)| p == version) {
            KekVersionState::Pending
        } else {
            KekVersionState::DecryptOnly
        })
    }

    /// Checks that `version` may decrypt (active or an earlier, unretired version).
    pub fn check_decrypt(&self, name: &str, version: u32) -> Result<(), BackendError> {
        match self.version_state(version) {
            Some(KekVersionState::Active | KekVersionState::DecryptOnly) => Ok(()),
            Some(KekVersionState::Pending) => {
                Err(illegal(format!("KEK {name} version {version} is not committed yet")))
            }
            Some(KekVersionState::Retired) => {
                Err(illegal(format!("KEK {name} version {version} is retired")))
            }
            Some(KekVersionState::Destroyed) => {
                Err(illegal(format!("KEK {name} version {version} was destroyed")))
            }
            None => Err(BackendError::NotFound(format!("KEK '{name}' has no version {version}"))),
        }
    }

    /// The next state for a rotation step, and what the token must do for it.
    pub fn step(
        &self,
        name: &str,
        step: RotationStep,
    ) -> Result<(Self, Vec<Effect>), BackendError> {
        let mut next = self.clone();
        next.format = FORMAT;
        next.revision += 1;
        let effects = match (step, self.pending) {
            (RotationStep::Status, _) => Vec::new(),
            (RotationStep::Prepare, None) => {
                let v = self.latest() + 1;
                next.pending = Some((v, false));
                next.highest = v;
                vec![Effect::CreateVersion(v)]
            }
            (RotationStep::Prepare, Some((v, _))) => {
                return Err(illegal(format!(
                    "KEK {name} already has version {v} pending; commit or roll it back"
                )));
            }
            (RotationStep::Validate, Some((v, _))) => {
                next.pending = Some((v, true));
                vec![Effect::Validate(v)]
            }
            (RotationStep::Commit, Some((v, true))) => {
                next.active = v;
                next.pending = None;
                Vec::new()
            }
            (RotationStep::Commit, Some((v, false))) => {
                return Err(illegal(format!(
                    "KEK {name} version {v} must be validated before commit"
                )));
            }
            (RotationStep::Rollback, Some((v, _))) => {
                next.pending = None;
                next.destroyed.insert(v);
                next.cleanup.insert(v);
                vec![Effect::DestroyVersion(v)]
            }
            (RotationStep::Validate | RotationStep::Commit | RotationStep::Rollback, None) => {
                return Err(illegal(format!(
                    "KEK {name} has no rotation in progress; prepare one first"
                )));
            }
        };
        Ok((next, effects))
    }

    /// Retires `version` (or destroys it), which must be neither active nor pending.
    pub fn retire(
        &self,
        name: &str,
        version: u32,
        destroy: bool,
    ) -> Result<(Self, Vec<Effect>), BackendError> {
        match self.version_state(version) {
            None => {
                return Err(BackendError::NotFound(format!(
                    "KEK '{name}' has no version {version}"
                )));
            }
            Some(KekVersionState::Active) => {
                return Err(illegal(format!(
                    "KEK {name} version {version} is active; rotate first"
                )));
            }
            Some(KekVersionState::Pending) => {
                return Err(illegal(format!(
                    "KEK {name} version {version} is pending; roll it back instead"
                )));
            }
            Some(KekVersionState::Destroyed) => {
                return Err(illegal(format!("KEK {name} version {version} is already destroyed")));
            }
            Some(KekVersionState::DecryptOnly | KekVersionState::Retired) => {}
        }
        let mut next = self.clone();
        next.format = FORMAT;
        next.revision += 1;
        if destroy {
            next.retired.remove(&version);
            next.destroyed.insert(version);
            next.cleanup.insert(version);
            Ok((next, vec![Effect::DestroyVersion(version)]))
        } else {
            next.retired.insert(version);
            Ok((next, Vec::new()))
        }
    }

    /// The same state with the leftovers of destroyed versions removed (after their keys
    /// were destroyed).
    pub fn cleaned(&self) -> Self {
        let mut next = self.clone();
        next.format = FORMAT;
        next.revision += 1;
        next.cleanup.clear();
        next
    }

    /// The wire description.
    pub fn info(&self, name: &str) -> KekInfo {
        KekInfo {
            name: name.to_owned(),
            active_version: self.active,
            pending_version: self.pending.map(|(v, _)| v),
            pending_validated: self.pending.is_some_and(|(_, ok)| ok),
            versions: (1..=self.latest())
                .filter_map(|v| {
                    self.version_state(v).map(|state| KekVersionInfo { version: v, state })
                })
                .collect(),
        }
    }
}

impl Default for KekState {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use harpocrates_protocol::ErrorCode;

    fn code(r: Result<(KekState, Vec<Effect>), BackendError>) -> ErrorCode {
        r.expect_err("must be refused").code()
    }

    #[test]
    fn a_full_rotation_walks_the_states() {
        let s = KekState::new();
        assert_eq!(s.version_state(1), Some(KekVersionState::Active));
        let (s, fx) = s.step("k", RotationStep::Prepare).expect("prepare");
        assert_eq!(fx, [Effect::CreateVersion(2)]);
        assert_eq!(s.version_state(2), Some(KekVersionState::Pending));
        assert!(s.check_decrypt("k", 2).is_err(), "pending versions do not decrypt");
        let (s, fx) = s.step("k", RotationStep::Validate).expect("validate");
        assert_eq!(fx, [Effect::Validate(2)]);
        let (s, fx) = s.step("k", RotationStep::Commit).expect("commit");
        assert!(fx.is_empty());
        assert_eq!((s.active, s.pending), (2, None));
        assert_eq!(s.version_state(1), Some(KekVersionState::DecryptOnly));
        assert!(s.check_decrypt("k", 1).is_ok());
        assert_eq!(KekState::decode(&s.encode()).expect("round trip"), s);
    }

    #[test]
    fn every_illegal_transition_is_refused_with_invalid_state() {
        let active = KekState::new();
        for step in [RotationStep::Validate, RotationStep::Commit, RotationStep::Rollback] {
            assert_eq!(
                code(active.step("k", step)),
                ErrorCode::InvalidState,
                "{step:?} without prepare"
            );
        }
        let (pending, _) = active.step("k", RotationStep::Prepare).expect("prepare");
        assert_eq!(
            code(pending.step("k", RotationStep::Prepare)),
            ErrorCode::InvalidState,
            "prepare twice"
        );
        assert_eq!(
            code(pending.step("k", RotationStep::Commit)),
            ErrorCode::InvalidState,
            "commit before validate"
        );
        let (validated, _) = pending.step("k", RotationStep::Validate).expect("validate");
        assert_eq!(code(validated.step("k", RotationStep::Prepare)), ErrorCode::InvalidState);
        assert_eq!(
            code(active.retire("k", 1, false)),
            ErrorCode::InvalidState,
            "retire the active version"
        );
        assert_eq!(
            code(pending.retire("k", 2, false)),
            ErrorCode::InvalidState,
            "retire a pending version"
        );
        assert_eq!(code(active.retire("k", 7, false)), ErrorCode::KeyNotFound);
    }

    #[test]
    fn rollback_destroys_the_pending_version_and_keeps_the_active_one() {
        let (s, _) = KekState::new().step("k", RotationStep::Prepare).expect("prepare");
        let (s, fx) = s.step("k", RotationStep::Rollback).expect("rollback");
        assert_eq!(fx, [Effect::DestroyVersion(2)]);
        assert_eq!((s.active, s.pending), (1, None));
        assert_eq!(s.version_state(2), Some(KekVersionState::Destroyed));
        let (s, fx) = s.step("k", RotationStep::Prepare).expect("prepare again");
        assert_eq!(fx, [Effect::CreateVersion(3)], "a destroyed version number is never reused");
        assert_eq!(s.latest(), 3);
    }

    #[test]
    fn retiring_and_destroying_old_versions() {
        let mut s = KekState::new();
        for step in [RotationStep::Prepare, RotationStep::Validate, RotationStep::Commit] {
            s = s.step("k", step).expect("rotate").0;
        }
        let (retired, fx) = s.retire("k", 1, false).expect("retire");
        assert!(fx.is_empty());
        assert_eq!(
            retired.check_decrypt("k", 1).expect_err("retired").code(),
            ErrorCode::InvalidState
        );
        let (gone, fx) = retired.retire("k", 1, true).expect("destroy");
        assert_eq!(fx, [Effect::DestroyVersion(1)]);
        assert_eq!(gone.version_state(1), Some(KekVersionState::Destroyed));
        assert_eq!(gone.retire("k", 1, true).expect_err("twice").code(), ErrorCode::InvalidState);
    }

    #[test]
    fn format_1_states_still_decode_and_upgrade_on_the_next_write() {
        #[derive(Serialize)]
        struct V1 {
            format: u8,
            active: u32,
            pending: Option<(u32, bool)>,
            retired: BTreeSet<u32>,
            destroyed: BTreeSet<u32>,
            highest: u32,
            revision: u64,
            cleanup: BTreeSet<u32>,
        }
        let old = V1 {
            format: 1,
            active: 3,
            pending: Some((4, false)),
            retired: [1].into(),
            destroyed: BTreeSet::new(),
            highest: 4,
            revision: 9,
            cleanup: BTreeSet::new(),
        };
        let bytes = bincode::serde::encode_to_vec(&old, bincode::config::standard()).expect("v1");
        let s = KekState::decode(&bytes).expect("format 1 decodes");
        assert_eq!((s.active, s.pending, s.highest, s.revision), (3, Some((4, false)), 4, 9));
        assert!(s.keys.is_empty(), "format-1 versions have no recorded ids");
        let (next, _) = s.step("k", RotationStep::Rollback).expect("rollback");
        assert_eq!(next.format, FORMAT);
        assert_eq!(KekState::decode(&next.encode()).expect("round trip"), next);
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(KekState::decode(&trailing).is_err(), "trailing bytes are refused");
    }

    #[test]
    fn a_missing_version_reads_once() {
        let e = KekState::new().check_decrypt("k1", 99).expect_err("no v99");
        assert_eq!(e.code(), ErrorCode::KeyNotFound);
        assert_eq!(e.to_string(), "KEK 'k1' has no version 99");
    }

    #[test]
    fn labels_are_out_of_client_reach() {
        assert!(crate::keys::name::validate_label(&aes_label("k", 1)).is_err());
        assert_eq!(name_of_state_label(&state_label("orders")), Some("orders"));
    }
}
