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
use self::store::{KdfParams, KeyStoreFile, StoreError, StoredKey};
use super::{Backend, BackendError, BackendResult, BackendSession};
use crate::keys::backup;

/// Where and how the soft token keeps its keys.
#[derive(Debug, Clone)]
pub struct SoftConfig {
    /// Directory holding the encrypted key store.
    pub state_dir: PathBuf,
    /// Argon2id cost for a newly created store.
    pub kdf: KdfParams,
}

struct SoftKey {
    stored: StoredKey,
    gcm: GcmKey,
}

impl SoftKey {
    fn new(stored: StoredKey) -> BackendResult<Self> {
        let gcm = GcmKey::new(stored.material.expose())?;
        Ok(Self { stored, gcm })
    }

    fn info(&self) -> KeyInfo {
        KeyInfo {
            handle: self.stored.label.clone().into(),
            algorithm: KeyAlgorithm::Aes,
            attributes: self.stored.attributes,
            id: self.stored.id.clone(),
        }
    }
}

/// The soft token. Cheap to share: sessions hold an `Arc` to it.
pub struct SoftToken {
    file: KeyStoreFile,
    keys: RwLock<BTreeMap<String, Arc<SoftKey>>>,
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
        let (file, stored) =
            KeyStoreFile::open_or_create(&config.state_dir, pin.as_bytes(), config.kdf)?;
        let mut keys = BTreeMap::new();
        for k in stored {
            keys.insert(k.label.clone(), Arc::new(SoftKey::new(k)?));
        }
        Ok(Arc::new(Self { file, keys: RwLock::new(keys) }))
    }

    fn key(&self, label: &str) -> BackendResult<Arc<SoftKey>> {
        self.read().get(label).cloned().ok_or_else(|| BackendError::KeyNotFound(label.into()))
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<SoftKey>>> {
        // A panic while holding the lock cannot leave the map half-updated (every write
        // is a single insert/remove after the file is saved), so poisoning is harmless.
        self.keys.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies `change` to a copy of the key list, saves it, and only then publishes it:
    /// a failed save changes nothing.
    fn mutate<T>(
        &self,
        change: impl FnOnce(&mut BTreeMap<String, Arc<SoftKey>>) -> BackendResult<T>,
    ) -> BackendResult<T> {
        let mut keys = self.keys.write().unwrap_or_else(|p| p.into_inner());
        let mut next = keys.clone();
        let out = change(&mut next)?;
        let stored: Vec<StoredKey> = next.values().map(|k| k.stored.clone()).collect();
        self.file.save(&stored)?;
        *keys = next;
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
        attributes: &KeyAttributes,
        material: Zeroizing<Vec<u8>>,
    ) -> BackendResult<KeyInfo> {
        let id = random_bytes(16)?.to_vec();
        let created_unix =
            SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let key = Arc::new(SoftKey::new(StoredKey {
            label: label.into(),
            id,
            attributes: *attributes,
            material: material.into(),
            created_unix,
        })?);
        let info = key.info();
        self.token.mutate(|keys| {
            if keys.contains_key(label) {
                return Err(BackendError::KeyExists(label.into()));
            }
            keys.insert(label.into(), key);
            Ok(())
        })?;
        Ok(info)
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
        self.insert(label, attributes, material)
    }

    fn backup_key(&mut self, label: &str, password: &[u8]) -> BackendResult<Vec<u8>> {
        let k = self.token.key(label)?;
        if !k.stored.attributes.extractable {
            return Err(BackendError::NotPermitted(format!("key '{label}' is not extractable")));
        }
        let sealer = backup::Sealer::new(password, KdfParams::default())?;
        let wrapped = backup::kwp_wrap(sealer.keys().wrapping_key(), k.stored.material.expose())?;
        sealer.finish(&k.stored.attributes, &wrapped)
    }

    fn restore_key(&mut self, label: &str, blob: &[u8], password: &[u8]) -> BackendResult<KeyInfo> {
        let opened = backup::open(blob, password)?;
        let material = backup::kwp_unwrap(opened.keys.wrapping_key(), &opened.wrapped)?;
        if material.len() * 8 != opened.attributes.size_bits as usize {
            return Err(BackendError::InvalidArgument(
                "backup key length disagrees with its header".into(),
            ));
        }
        self.insert(label, &opened.attributes, material)
    }

    fn list_keys(&mut self) -> BackendResult<Vec<KeyInfo>> {
        Ok(self.token.read().values().map(|k| k.info()).collect())
    }

    fn encrypt(&mut self, key: &str, plaintext: &[u8], aad: &[u8]) -> BackendResult<Vec<u8>> {
        let k = self.token.key(key)?;
        if !k.stored.attributes.encrypt {
            return Err(BackendError::NotPermitted(format!("key '{key}' may not encrypt")));
        }
        k.gcm.seal(plaintext, aad)
    }

    fn decrypt(&mut self, key: &str, ciphertext: &[u8], aad: &[u8]) -> BackendResult<SecretBytes> {
        let k = self.token.key(key)?;
        if !k.stored.attributes.decrypt {
            return Err(BackendError::NotPermitted(format!("key '{key}' may not decrypt")));
        }
        Ok(k.gcm.open(ciphertext, aad)?.into())
    }

    fn destroy_key(&mut self, label: &str) -> BackendResult<()> {
        self.token.mutate(|keys| {
            keys.remove(label).map(|_| ()).ok_or_else(|| BackendError::KeyNotFound(label.into()))
        })
    }

    fn probe(&mut self) -> BackendResult<()> {
        Ok(())
    }
}
