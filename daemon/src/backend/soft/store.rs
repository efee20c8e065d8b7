//! The soft token's key store on disk: one file, encrypted under a key derived from the
//! PIN with Argon2id, replaced atomically on every change.
//!
//! ```text
//! "HARPSOFT"            8 bytes magic
//! format version        1 byte (1)
//! Argon2id m, t, p      3 × u32 little-endian (memory KiB, passes, lanes)
//! salt                  16 bytes, fixed for the life of the store
//! nonce                 12 bytes, fresh for every write
//! AES-256-GCM(bincode(contents)) || tag, with all the bytes above as AAD
//! ```
//!
//! A write goes to a temporary file that is fsynced, renamed over the store, and then the
//! directory is fsynced: a crash leaves either the old store or the new one, never half.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use aes_gcm::aead::consts::U12;
use aes_gcm::{AeadInOut, Aes256Gcm, KeyInit, Nonce, Tag};
use harpocrates_protocol::{KeyAlgorithm, KeyAttributes, SecretBytes};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

pub use crate::formats::kdf::KdfParams;

const MAGIC: &[u8; 8] = b"HARPSOFT";
/// Format 2 added key algorithms and data objects; format 1 stores are still read.
const FORMAT: u8 = 2;
const SALT_LEN: usize = 16;
const NONCE_LEN: usize = 12;
const HEADER_LEN: usize = 8 + 1 + 12 + SALT_LEN + NONCE_LEN;
const TAG_LEN: usize = 16;

/// The key store's file name inside the state directory.
pub const STORE_FILE: &str = "keystore.hks";
/// The lock file that keeps two daemons off one state directory.
pub const LOCK_FILE: &str = "keystore.lock";

/// One key as persisted.
#[derive(Clone, Serialize, Deserialize)]
pub struct StoredKey {
    /// Its name.
    pub label: String,
    /// Random identifier (the CKA_ID equivalent).
    pub id: Vec<u8>,
    /// AES or generic secret (HMAC).
    pub algorithm: KeyAlgorithm,
    /// Size and usage.
    pub attributes: KeyAttributes,
    /// The raw key.
    pub material: SecretBytes,
    /// Creation time, seconds since the Unix epoch.
    pub created_unix: u64,
}

/// Everything a store holds.
#[derive(Clone, Default, Serialize, Deserialize)]
pub struct Contents {
    /// Keys.
    pub keys: Vec<StoredKey>,
    /// Data objects (label, value): small state records such as KEK rotation state.
    pub objects: Vec<(String, Vec<u8>)>,
}

/// Format 1: AES keys only.
#[derive(Deserialize)]
struct ContentsV1 {
    keys: Vec<StoredKeyV1>,
}

#[derive(Deserialize)]
struct StoredKeyV1 {
    label: String,
    id: Vec<u8>,
    attributes: KeyAttributes,
    material: SecretBytes,
    created_unix: u64,
}

impl From<ContentsV1> for Contents {
    fn from(v1: ContentsV1) -> Self {
        let keys = v1
            .keys
            .into_iter()
            .map(|k| StoredKey {
                label: k.label,
                id: k.id,
                algorithm: KeyAlgorithm::Aes,
                attributes: k.attributes,
                material: k.material,
                created_unix: k.created_unix,
            })
            .collect();
        Self { keys, objects: Vec::new() }
    }
}

/// Why the store could not be opened or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// File system trouble.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Another process holds the state directory.
    #[error("{0} is in use by another harpocratesd")]
    Locked(PathBuf),
    /// The PIN does not open the store (or the file was altered).
    #[error("wrong PIN for the key store {0}, or the file was altered")]
    WrongPin(PathBuf),
    /// The new contents could not be sealed; nothing was written.
    #[error("cannot seal the key store {path}: {reason}")]
    Seal {
        /// The store file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// The file is not a key store this build can read.
    #[error("{path} is not a readable key store: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io { path: path.to_owned(), source }
}

/// An open key store: knows its file and holds the PIN-derived key.
pub struct KeyStoreFile {
    path: PathBuf,
    header_fixed: [u8; HEADER_LEN - NONCE_LEN],
    cipher: Aes256Gcm,
    _lock: File,
}

impl KeyStoreFile {
    /// Opens the store in `dir` with `pin`, creating an empty one (with `params`) if there
    /// is none. Returns the store and the keys it holds.
    pub fn open_or_create(
        dir: &Path,
        pin: &[u8],
        params: KdfParams,
    ) -> Result<(Self, Contents), StoreError> {
        // Private: the directory holds the (encrypted) keys and, in dev mode, the PIN.
        fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io_err(dir))?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        lock.try_lock().map_err(|_| StoreError::Locked(dir.to_owned()))?;

        let path = dir.join(STORE_FILE);
        match fs::read(&path) {
            Ok(bytes) => Self::open_existing(path, bytes, pin, lock),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut salt = [0u8; SALT_LEN];
                getrandom::fill(&mut salt).map_err(|e| StoreError::Io {
                    path: path.clone(),
                    source: std::io::Error::other(e.to_string()),
                })?;
                let store = Self::with_params(path, params, salt, pin, lock)?;
                store.save(&Contents::default())?;
                Ok((store, Contents::default()))
            }
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    fn open_existing(
        path: PathBuf,
        bytes: Vec<u8>,
        pin: &[u8],
        lock: File,
    ) -> Result<(Self, Contents), StoreError> {
        let corrupt =
            |reason: &str| StoreError::Corrupt { path: path.clone(), reason: reason.into() };
        if bytes.len() < HEADER_LEN + TAG_LEN {
            return Err(corrupt("file too short"));
        }
        if &bytes[..8] != MAGIC {
            return Err(corrupt("bad magic"));
        }
        if bytes[8] != FORMAT && bytes[8] != 1 {
            return Err(corrupt(&format!("format version {} is not supported", bytes[8])));
        }
        let u32_at = |at: usize| {
            u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
        };
        let params =
            KdfParams { memory_kib: u32_at(9), iterations: u32_at(13), parallelism: u32_at(17) };
        let mut salt = [0u8; SALT_LEN];
        salt.copy_from_slice(&bytes[21..21 + SALT_LEN]);
        let store = Self::with_params(path.clone(), params, salt, pin, lock)?;

        let (header, sealed) = bytes.split_at(HEADER_LEN);
        let nonce = Nonce::<U12>::try_from(&header[HEADER_LEN - NONCE_LEN..])
            .map_err(|_| corrupt("bad nonce"))?;
        let (body, tag) = sealed.split_at(sealed.len() - TAG_LEN);
        let tag = Tag::try_from(tag).map_err(|_| corrupt("bad tag"))?;
        let mut plain = Zeroizing::new(body.to_vec());
        store
            .cipher
            .decrypt_inout_detached(&nonce, header, plain.as_mut_slice().into(), &tag)
            .map_err(|_| StoreError::WrongPin(path.clone()))?;
        fn decode<T: serde::de::DeserializeOwned>(plain: &[u8]) -> Result<T, String> {
            let (value, used) =
                bincode::serde::decode_from_slice(plain, bincode::config::standard())
                    .map_err(|e| e.to_string())?;
            if used != plain.len() {
                return Err("trailing bytes".into());
            }
            Ok(value)
        }
        let contents = if header[8] == 1 {
            decode::<ContentsV1>(&plain).map(Contents::from)
        } else {
            decode::<Contents>(&plain)
        }
        .map_err(|e| corrupt(&e))?;
        Ok((store, contents))
    }

    fn with_params(
        path: PathBuf,
        params: KdfParams,
        salt: [u8; SALT_LEN],
        pin: &[u8],
        lock: File,
    ) -> Result<Self, StoreError> {
        let corrupt = |reason: String| StoreError::Corrupt { path: path.clone(), reason };
        let mut key = Zeroizing::new([0u8; 32]);
        params.derive(pin, &salt, key.as_mut_slice()).map_err(&corrupt)?;
        let cipher = Aes256Gcm::new_from_slice(key.as_slice())
            .map_err(|_| corrupt("derived key has the wrong length".into()))?;

        let mut header_fixed = [0u8; HEADER_LEN - NONCE_LEN];
        header_fixed[..8].copy_from_slice(MAGIC);
        header_fixed[8] = FORMAT;
        header_fixed[9..13].copy_from_slice(&params.memory_kib.to_le_bytes());
        header_fixed[13..17].copy_from_slice(&params.iterations.to_le_bytes());
        header_fixed[17..21].copy_from_slice(&params.parallelism.to_le_bytes());
        header_fixed[21..].copy_from_slice(&salt);
        Ok(Self { path, header_fixed, cipher, _lock: lock })
    }

    /// The store file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Replaces the store's contents, atomically and durably.
    pub fn save(&self, contents: &Contents) -> Result<(), StoreError> {
        let mut sealed = Zeroizing::new(
            bincode::serde::encode_to_vec(contents, bincode::config::standard())
                .map_err(|e| StoreError::Seal { path: self.path.clone(), reason: e.to_string() })?,
        );
        let mut nonce_bytes = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce_bytes).map_err(|e| StoreError::Io {
            path: self.path.clone(),
            source: std::io::Error::other(e.to_string()),
        })?;
        let mut header = Vec::with_capacity(HEADER_LEN);
        header.extend_from_slice(&self.header_fixed);
        header.extend_from_slice(&nonce_bytes);
        let tag = self
            .cipher
            .encrypt_inout_detached(
                &Nonce::<U12>::from(nonce_bytes),
                &header,
                sealed.as_mut_slice().into(),
            )
            .map_err(|_| StoreError::Seal {
                path: self.path.clone(),
                reason: "encryption failed".into(),
            })?;

        let tmp = self.path.with_extension("hks.tmp");
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io_err(&tmp))?;
        let written = file
            .write_all(&header)
            .and_then(|()| file.write_all(&sealed))
            .and_then(|()| file.write_all(&tag))
            .and_then(|()| file.sync_all());
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(io_err(&tmp)(e));
        }
        drop(file);
        if let Err(e) = fs::rename(&tmp, &self.path) {
            let _ = fs::remove_file(&tmp);
            return Err(io_err(&self.path)(e));
        }
        if let Some(dir) = self.path.parent() {
            File::open(dir).and_then(|d| d.sync_all()).map_err(io_err(dir))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fast() -> KdfParams {
        KdfParams { memory_kib: 64, iterations: 1, parallelism: 1 }
    }

    fn keys_only(keys: Vec<StoredKey>) -> Contents {
        Contents { keys, objects: vec![("#state".into(), vec![1, 2, 3])] }
    }

    fn key(label: &str) -> StoredKey {
        StoredKey {
            label: label.into(),
            id: vec![1, 2],
            algorithm: KeyAlgorithm::Aes,
            attributes: KeyAttributes::aes(256),
            material: vec![7; 32].into(),
            created_unix: 5,
        }
    }

    #[test]
    fn keys_survive_reopen_and_the_file_hides_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let (store, keys) =
                KeyStoreFile::open_or_create(dir.path(), b"1234", fast()).expect("create");
            assert!(keys.keys.is_empty());
            store.save(&keys_only(vec![key("alpha"), key("beta")])).expect("save");
        }
        let raw = fs::read(dir.path().join(STORE_FILE)).expect("read");
        assert!(!raw.windows(5).any(|w| w == b"alpha"), "labels must be encrypted at rest");
        assert!(!raw.windows(32).any(|w| w == [7; 32]), "key material must be encrypted at rest");
        let (_store, keys) =
            KeyStoreFile::open_or_create(dir.path(), b"1234", fast()).expect("reopen");
        assert_eq!(
            keys.objects,
            [("#state".to_owned(), vec![1, 2, 3])],
            "data objects persist too"
        );
        let keys = keys.keys;
        let labels: Vec<_> = keys.iter().map(|k| k.label.as_str()).collect();
        assert_eq!(labels, ["alpha", "beta"]);
        assert_eq!(keys[0].material.expose(), &[7; 32]);
    }

    #[test]
    fn wrong_pin_is_refused_by_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        drop(KeyStoreFile::open_or_create(dir.path(), b"right", fast()).expect("create"));
        let err =
            KeyStoreFile::open_or_create(dir.path(), b"wrong", fast()).err().expect("must fail");
        assert!(matches!(err, StoreError::WrongPin(_)), "{err}");
        assert!(!err.to_string().contains("wrong\""), "the PIN must not appear: {err}");
    }

    #[test]
    fn second_opener_is_locked_out() {
        let dir = tempfile::tempdir().expect("tempdir");
        let _first = KeyStoreFile::open_or_create(dir.path(), b"pin", fast()).expect("create");
        let err = KeyStoreFile::open_or_create(dir.path(), b"pin", fast()).err().expect("locked");
        assert!(matches!(err, StoreError::Locked(_)), "{err}");
    }

    #[test]
    fn a_tampered_or_truncated_file_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let (store, _) =
                KeyStoreFile::open_or_create(dir.path(), b"pin", fast()).expect("create");
            store.save(&keys_only(vec![key("a")])).expect("save");
        }
        let path = dir.path().join(STORE_FILE);
        let good = fs::read(&path).expect("read");
        let mut flipped = good.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        fs::write(&path, &flipped).expect("write");
        assert!(KeyStoreFile::open_or_create(dir.path(), b"pin", fast()).is_err());
        fs::write(&path, &good[..20]).expect("write");
        let err = KeyStoreFile::open_or_create(dir.path(), b"pin", fast()).err().expect("short");
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    }

    #[test]
    fn absurd_costs_in_a_forged_header_are_refused_before_any_work() {
        let dir = tempfile::tempdir().expect("tempdir");
        drop(KeyStoreFile::open_or_create(dir.path(), b"pin", fast()).expect("create"));
        let path = dir.path().join(STORE_FILE);
        let mut bytes = fs::read(&path).expect("read");
        bytes[9..13].copy_from_slice(&u32::MAX.to_le_bytes()); // m = 4 TiB
        fs::write(&path, &bytes).expect("write");
        let err = KeyStoreFile::open_or_create(dir.path(), b"pin", fast()).err().expect("refused");
        assert!(err.to_string().contains("Argon2id costs"), "{err}");
    }

    #[test]
    fn failed_save_leaves_the_old_store_intact() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, _) = KeyStoreFile::open_or_create(dir.path(), b"pin", fast()).expect("create");
        store.save(&keys_only(vec![key("kept")])).expect("save");
        // A directory where the temp file should go makes the write fail.
        fs::create_dir(dir.path().join("keystore.hks.tmp")).expect("mkdir");
        assert!(store.save(&keys_only(vec![key("kept"), key("lost")])).is_err());
        fs::remove_dir(dir.path().join("keystore.hks.tmp")).expect("rmdir");
        drop(store);
        let (_s, keys) = KeyStoreFile::open_or_create(dir.path(), b"pin", fast()).expect("reopen");
        assert_eq!(keys.keys.len(), 1);
        assert_eq!(keys.keys[0].label, "kept");
    }
}
