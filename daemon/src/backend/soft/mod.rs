//! The embedded soft token: AES keys held in process memory and persisted, encrypted
//! under the PIN, in a state directory. It lets the daemon run with no HSM at all, for
//! development and tests; it is not a substitute for hardware protection of keys.

pub mod cipher;
pub mod store;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use harpocrates_protocol::{KeyAlgorithm, KeyAttributes, KeyInfo, SecretBytes, TokenInfo};
use zeroize::Zeroizing;

use self::cipher::GcmKey;
use self::store::{Contents, KdfParams, KeyStoreFile, StoreError, StoredKey};
use super::{
    Backend, BackendError, BackendResult, BackendSession, KekKeyKind, SwapOutcome, split_key_ref,
};
use crate::formats::backup;

/// Where and how the soft token keeps its keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SoftConfig {
    /// Directory holding the encrypted key store.
    pub state_dir: PathBuf,
    /// Argon2id cost for a newly created store.
    pub kdf: KdfParams,
}

struct SoftKey {
    stored: StoredKey,
    /// The AES-GCM key schedule; `None` for generic secrets (HMAC keys).
    gcm: Option<GcmKey>,
}

impl SoftKey {
    fn new(stored: StoredKey) -> BackendResult<Self> {
        let gcm = match stored.algorithm {
            KeyAlgorithm::GenericSecret => None,
            _ => Some(GcmKey::new(stored.material.expose())?),
        };
        Ok(Self { stored, gcm })
    }

    fn info(&self) -> KeyInfo {
        KeyInfo {
            handle: self.stored.label.clone().into(),
            algorithm: self.stored.algorithm,
            attributes: self.stored.attributes,
            id: self.stored.id.clone(),
        }
    }

    fn gcm(&self) -> BackendResult<&GcmKey> {
        self.gcm.as_ref().ok_or_else(|| {
            BackendError::NotPermitted(format!("key '{}' is not an AES key", self.stored.label))
        })
    }
}

/// What the token holds: keys and data objects, saved and published together.
#[derive(Clone, Default)]
struct SoftState {
    keys: BTreeMap<String, Arc<SoftKey>>,
    objects: BTreeMap<String, Vec<u8>>,
}

/// The soft token. Cheap to share: sessions hold an `Arc` to it.
pub struct SoftToken {
    file: KeyStoreFile,
    state: RwLock<SoftState>,
}

impl From<StoreError> for BackendError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::WrongPin(_) | StoreError::Locked(_) | StoreError::Corrupt { .. } => {
                BackendError::NotInitialized(e.to_string())
            }
            StoreError::Io { .. } | StoreError::Seal { .. } => BackendError::Storage(e.to_string()),
        }
    }
}

impl SoftToken {
    /// Opens (or creates) the token in `config.state_dir`, unlocking it with `pin`.
    pub fn open(config: &SoftConfig, pin: &Zeroizing<String>) -> BackendResult<Arc<Self>> {
        let (file, contents) =
            KeyStoreFile::open_or_create(&config.state_dir, pin.as_bytes(), config.kdf)?;
        let mut state = SoftState::default();
        for k in contents.keys {
            state.keys.insert(k.label.clone(), Arc::new(SoftKey::new(k)?));
        }
        state.objects = contents.objects.into_iter().collect();
        Ok(Arc::new(Self { file, state: RwLock::new(state) }))
    }

    /// The key a name or [key reference](super::key_ref) names; a reference whose id
    /// differs from the key's is not found.
    fn key(&self, name: &str) -> BackendResult<Arc<SoftKey>> {
        let (label, id) = split_key_ref(name);
        self.read()
            .keys
            .get(label)
            .filter(|k| id.as_ref().is_none_or(|id| *id == k.stored.id))
            .cloned()
            .ok_or_else(|| BackendError::KeyNotFound(label.into()))
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, SoftState> {
        // A panic while holding the lock cannot leave the state half-updated (it is
        // replaced whole, after the file is saved), so poisoning is harmless.
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies `change` to a copy of the state, saves it, and only then publishes it: a
    /// failed save changes nothing.
    fn mutate<T>(
        &self,
        change: impl FnOnce(&mut SoftState) -> BackendResult<T>,
    ) -> BackendResult<T> {
        let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
        let mut next = state.clone();
        let out = change(&mut next)?;
        let contents = Contents {
            keys: next.keys.values().map(|k| k.stored.clone()).collect(),
            objects: next.objects.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        };
        self.file.save(&contents)?;
        *state = next;
        Ok(out)
    }
}

impl Backend for Arc<SoftToken> {
    fn name(&self) -> &'static str {
        "soft"
    }

    fn open_session(&self) -> BackendResult<Box<dyn BackendSession>> {
        Ok(Box::new(SoftSession { token: Arc::clone(self) }))
    }

    fn token_info(&self) -> TokenInfo {
        TokenInfo {
            label: "harpocrates-soft".into(),
            manufacturer: "Harpocrates".into(),
            model: "embedded soft token".into(),
            serial: self.file.path().display().to_string(),
        }
    }

    fn supports_key_backup(&self) -> bool {
        true
    }
}

/// A session on the soft token.
pub struct SoftSession {
    token: Arc<SoftToken>,
}

impl SoftSession {
    /// Adds a key with the given value, persisting it before it becomes visible.
    fn insert(
        &mut self,
        label: &str,
        algorithm: KeyAlgorithm,
        attributes: &KeyAttributes,
        material: Zeroizing<Vec<u8>>,
    ) -> BackendResult<KeyInfo> {
        let id = random_bytes(16)?.to_vec();
        let created_unix =
            SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let key = Arc::new(SoftKey::new(StoredKey {
            label: label.into(),
            id,
            algorithm,
            attributes: *attributes,
            material: material.into(),
            created_unix,
        })?);
        let info = key.info();
        self.token.mutate(|state| {
            if state.keys.contains_key(label) {
                return Err(BackendError::KeyExists(label.into()));
            }
            state.keys.insert(label.into(), key);
            Ok(())
        })?;
        Ok(info)
    }

    /// A fresh random HMAC (generic secret) key of `len` bytes: sensitive, never
    /// extractable, no cipher use.
    fn insert_hmac_key(&mut self, label: &str, len: usize) -> BackendResult<KeyInfo> {
        let attributes = KeyAttributes {
            size_bits: u32::try_from(len * 8).unwrap_or(0),
            extractable: false,
            sensitive: true,
            encrypt: false,
            decrypt: false,
            wrap: false,
            unwrap: false,
        };
        self.insert(label, KeyAlgorithm::GenericSecret, &attributes, random_bytes(len)?)
    }
}

fn random_bytes(len: usize) -> BackendResult<Zeroizing<Vec<u8>>> {
    let mut buf = Zeroizing::new(vec![0u8; len]);
    getrandom::fill(&mut buf).map_err(|e| BackendError::Failed(format!("no randomness: {e}")))?;
    Ok(buf)
}

impl BackendSession for SoftSession {
    fn generate_random(&mut self, len: usize) -> BackendResult<SecretBytes> {
        Ok(random_bytes(len)?.into())
    }

    fn generate_key(&mut self, label: &str, attributes: &KeyAttributes) -> BackendResult<KeyInfo> {
        if !matches!(attributes.size_bits, 128 | 192 | 256) {
            return Err(BackendError::InvalidArgument(format!(
                "AES keys are 128, 192 or 256 bits, not {}",
                attributes.size_bits
            )));
        }
        let material = random_bytes(attributes.size_bits as usize / 8)?;
        self.insert(label, KeyAlgorithm::Aes, attributes, material)
    }

    fn backup_key(&mut self, label: &str, password: &[u8]) -> BackendResult<Vec<u8>> {
        let k = self.token.key(label)?;
        if !k.stored.attributes.extractable {
            return Err(BackendError::NotPermitted(format!("key '{label}' is not extractable")));
        }
        let sealer = backup::Sealer::new(password, KdfParams::default())?;
        let wrapped = backup::kwp_wrap(sealer.keys().wrapping_key(), k.stored.material.expose())?;
        Ok(sealer.finish(&k.stored.attributes, &wrapped)?)
    }

    fn restore_key(&mut self, label: &str, blob: &[u8], password: &[u8]) -> BackendResult<KeyInfo> {
        let opened = backup::open(blob, password)?;
        let material = backup::kwp_unwrap(opened.keys.wrapping_key(), &opened.wrapped)?;
        if material.len() * 8 != opened.attributes.size_bits as usize {
            return Err(BackendError::InvalidArgument(
                "backup key length disagrees with its header".into(),
            ));
        }
        self.insert(label, KeyAlgorithm::Aes, &opened.attributes, material)
    }

    fn list_keys(&mut self) -> BackendResult<Vec<KeyInfo>> {
        Ok(self.token.read().keys.values().map(|k| k.info()).collect())
    }

    fn has_key(&mut self, key: &str) -> BackendResult<bool> {
        Ok(self.token.key(key).is_ok())
    }

    fn encrypt(&mut self, key: &str, plaintext: &[u8], aad: &[u8]) -> BackendResult<Vec<u8>> {
        let k = self.token.key(key)?;
        if !k.stored.attributes.encrypt {
            return Err(BackendError::NotPermitted(format!("key '{key}' may not encrypt")));
        }
        k.gcm()?.seal(plaintext, aad)
    }

    fn decrypt(&mut self, key: &str, ciphertext: &[u8], aad: &[u8]) -> BackendResult<SecretBytes> {
        let k = self.token.key(key)?;
        if !k.stored.attributes.decrypt {
            return Err(BackendError::NotPermitted(format!("key '{key}' may not decrypt")));
        }
        Ok(k.gcm()?.open(ciphertext, aad)?.into())
    }

    fn destroy_key(&mut self, name: &str) -> BackendResult<()> {
        let (label, id) = split_key_ref(name);
        self.token.mutate(|state| {
            let matches = state
                .keys
                .get(label)
                .is_some_and(|k| id.as_ref().is_none_or(|id| *id == k.stored.id));
            if !matches {
                return Err(BackendError::KeyNotFound(label.into()));
            }
            state.keys.remove(label);
            Ok(())
        })
    }

    fn probe(&mut self) -> BackendResult<()> {
        Ok(())
    }

    fn generate_hmac_key(&mut self, label: &str, len: usize) -> BackendResult<()> {
        self.insert_hmac_key(label, len).map(drop)
    }

    fn hmac_sha256(&mut self, label: &str, data: &[u8]) -> BackendResult<Zeroizing<[u8; 32]>> {
        use hmac::{KeyInit, Mac};
        let k = self.token.key(label)?;
        if k.stored.algorithm != KeyAlgorithm::GenericSecret {
            return Err(BackendError::NotPermitted(format!("key '{label}' is not an HMAC key")));
        }
        let mut mac =
            <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(k.stored.material.expose())
                .map_err(|_| BackendError::Failed("bad HMAC key".into()))?;
        mac.update(data);
        let mut out = Zeroizing::new([0u8; 32]);
        out.copy_from_slice(&mac.finalize().into_bytes());
        Ok(out)
    }

    fn read_object(&mut self, label: &str) -> BackendResult<Option<Vec<u8>>> {
        Ok(self.token.read().objects.get(label).cloned())
    }

    fn write_object(&mut self, label: &str, value: &[u8]) -> BackendResult<()> {
        self.token.mutate(|state| {
            state.objects.insert(label.to_owned(), value.to_vec());
            Ok(())
        })
    }

    fn list_objects(&mut self, prefix: &str) -> BackendResult<Vec<String>> {
        Ok(self.token.read().objects.keys().filter(|k| k.starts_with(prefix)).cloned().collect())
    }

    /// Labels are unique in this token and one daemon owns it (the store lock), so a key
    /// already under `label` can only be a leftover of a creation that crashed before
    /// any state named it: it is replaced.
    fn create_kek_key(&mut self, label: &str, kind: KekKeyKind) -> BackendResult<Vec<u8>> {
        match self.destroy_key(label) {
            Ok(()) => tracing::warn!(label, "replaced a key left by an interrupted rotation"),
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e),
        }
        let info = match kind {
            KekKeyKind::Aes(attributes) => self.generate_key(label, &attributes)?,
            KekKeyKind::Hmac(len) => self.insert_hmac_key(label, len)?,
        };
        Ok(info.id)
    }

    /// Atomic: the comparison and the write happen under the store's write lock.
    fn compare_and_swap_object(
        &mut self,
        label: &str,
        expected: Option<&[u8]>,
        value: &[u8],
    ) -> BackendResult<SwapOutcome> {
        self.token.mutate(|state| {
            if state.objects.get(label).map(Vec::as_slice) != expected {
                return Ok(SwapOutcome::Lost);
            }
            state.objects.insert(label.to_owned(), value.to_vec());
            Ok(SwapOutcome::Swapped)
        })
    }
}
