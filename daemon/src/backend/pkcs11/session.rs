//! One logged-in PKCS#11 session and the operations on it.

mod swap;

use std::mem::ManuallyDrop;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use harpocrates_protocol::{KeyAlgorithm, KeyAttributes, KeyInfo, SecretBytes};
use zeroize::Zeroizing;

use super::errors::{self, Recovery};
use super::{CachedKey, Shared, login, read, write};
use crate::backend::{
    BackendError, BackendResult, BackendSession, KekKeyKind, SwapOutcome, split_key_ref,
};
use crate::formats::backup;
use crate::formats::ciphertext::{self, IV_LEN};
use crate::formats::kdf::KdfParams;

/// `CKA_APPLICATION` of the data objects the daemon keeps in the token.
const DATA_APPLICATION: &[u8] = b"harpocrates";

const KEY_ATTRIBUTES: [AttributeType; 10] = [
    AttributeType::Label,
    AttributeType::Id,
    AttributeType::KeyType,
    AttributeType::ValueLen,
    AttributeType::Sensitive,
    AttributeType::Extractable,
    AttributeType::Encrypt,
    AttributeType::Decrypt,
    AttributeType::Wrap,
    AttributeType::Unwrap,
];

/// The template of a persistent AES key with the caller's usage attributes.
fn aes_key_template(label: &str, id: &[u8], a: &KeyAttributes) -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Id(id.to_vec()),
        Attribute::Sensitive(a.sensitive),
        Attribute::Extractable(a.extractable),
        Attribute::Encrypt(a.encrypt),
        Attribute::Decrypt(a.decrypt),
        Attribute::Wrap(a.wrap),
        Attribute::Unwrap(a.unwrap),
    ]
}

/// IVs drawn from the token per `C_GenerateRandom`: one call serves a whole batch.
const IVS_PER_DRAW: usize = 64;

/// Random IVs drawn from the token in bulk, handed out one per encryption.
struct IvReserve {
    bytes: [u8; IV_LEN * IVS_PER_DRAW],
    /// IVs already handed out; `IVS_PER_DRAW` means empty.
    used: usize,
}

/// A session actor's PKCS#11 session.
pub struct Pkcs11Session {
    shared: Arc<Shared>,
    /// Opened "no drop": [`Drop`] below decides whether closing it is safe.
    session: ManuallyDrop<Session>,
    generation: u64,
    ivs: IvReserve,
}

impl Drop for Pkcs11Session {
    fn drop(&mut self) {
        // SAFETY: `session` is taken exactly once, here, and never used afterwards.
        let session = unsafe { ManuallyDrop::take(&mut self.session) };
        // A handle from before a re-initialisation died with the old module state; its
        // number may now belong to another actor's new session, so it must not be closed.
        if self.shared.generation.load(Ordering::Acquire) == self.generation
            && let Err(e) = session.close()
        {
            tracing::debug!(error = %super::brief(&e), "C_CloseSession");
        }
    }
}

impl Pkcs11Session {
    /// Opens a read-write session on the token and makes sure the user is logged in.
    pub(crate) fn open(shared: Arc<Shared>) -> BackendResult<Self> {
        let generation = shared.generation.load(Ordering::Acquire);
        let slot = *read(&shared.slot);
        let opened = shared.ctx.open_rw_session_no_drop(slot).and_then(|session| {
            if let Err(e) = login(&shared, &session) {
                let _ = session.close();
                return Err(e);
            }
            Ok(session)
        });
        match opened {
            Ok(session) => Ok(Self {
                shared,
                session: ManuallyDrop::new(session),
                generation,
                ivs: IvReserve { bytes: [0; IV_LEN * IVS_PER_DRAW], used: IVS_PER_DRAW },
            }),
            Err(e) => {
                if let CkError::Pkcs11(rv, _) = e
                    && errors::recovery(rv) == Recovery::Reinitialize
                {
                    shared.reinitialize(generation);
                }
                Err(errors::map(e, "open session"))
            }
        }
    }

    /// Maps an error, repairing the module first when the error says it lost its state.
    fn fail(&self, e: CkError, what: &str) -> BackendError {
        if let CkError::Pkcs11(rv, _) = e
            && errors::recovery(rv) == Recovery::Reinitialize
        {
            self.shared.reinitialize(self.generation);
        }
        errors::map(e, what)
    }

    /// Finds a secret key by label, or by label and id for a
    /// [key reference](crate::backend::key_ref), on the token (slow: C_FindObjects).
    fn find(&self, name: &str) -> BackendResult<Option<CachedKey>> {
        let (label, id) = split_key_ref(name);
        let mut template = vec![
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::Label(label.as_bytes().to_vec()),
        ];
        template.extend(id.map(Attribute::Id));
        let handles = self.session.find_objects(&template).map_err(|e| self.fail(e, "find key"))?;
        let Some(handle) = handles.first().copied() else { return Ok(None) };
        if handles.len() > 1 {
            tracing::warn!(
                label,
                count = handles.len(),
                "several keys share this label; using the first"
            );
        }
        Ok(self.describe(handle)?.map(|info| CachedKey { handle, info: Arc::new(info) }))
    }

    /// Every stored version of our data object `label`: (sequence, handle, value).
    /// Objects destroyed meanwhile by another writer are skipped.
    fn object_versions(&self, label: &str) -> BackendResult<Vec<(u64, ObjectHandle, Vec<u8>)>> {
        Ok(self
            .data_objects(DATA_APPLICATION, label)?
            .into_iter()
            .filter(|(_, v)| v.len() >= 8)
            .map(|(h, v)| {
                (u64::from_be_bytes(v[..8].try_into().unwrap_or([0; 8])), h, v[8..].to_vec())
            })
            .collect())
    }

    /// Every data object of `application` labelled `label`, with its value. Objects
    /// destroyed meanwhile by another process are skipped.
    fn data_objects(
        &self,
        application: &[u8],
        label: &str,
    ) -> BackendResult<Vec<(ObjectHandle, Vec<u8>)>> {
        let template = [
            Attribute::Class(ObjectClass::DATA),
            Attribute::Application(application.to_vec()),
            Attribute::Label(label.as_bytes().to_vec()),
        ];
        let handles =
            self.session.find_objects(&template).map_err(|e| self.fail(e, "find data object"))?;
        let mut out = Vec::with_capacity(handles.len());
        for h in handles {
            let attrs = match self.session.get_attributes(h, &[AttributeType::Value]) {
                Ok(a) => a,
                Err(CkError::Pkcs11(RvError::ObjectHandleInvalid, _)) => continue,
                Err(e) => return Err(self.fail(e, "read data object")),
            };
            for a in attrs {
                if let Attribute::Value(v) = a {
                    out.push((h, v));
                }
            }
        }
        Ok(out)
    }

    /// Creates a token data object of `application` labelled `label`, with
    /// `CKA_OBJECT_ID` set when `object_id` is given.
    fn create_data(
        &self,
        application: &[u8],
        label: &str,
        value: Vec<u8>,
        object_id: Option<&[u8]>,
    ) -> BackendResult<ObjectHandle> {
        let mut template = vec![
            Attribute::Class(ObjectClass::DATA),
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Application(application.to_vec()),
            Attribute::Label(label.as_bytes().to_vec()),
            Attribute::Value(value),
        ];
        template.extend(object_id.map(|id| Attribute::ObjectId(id.to_vec())));
        self.sync_view();
        self.session.create_object(&template).map_err(|e| self.fail(e, "create data object"))
    }

    /// Brings this process's view of the token up to date before it creates or destroys a
    /// token object. SoftHSM2's file store re-reads the token directory only when the
    /// token's generation counter differs from the one this process last saw, and a
    /// create or destroy sets that to the new value: objects other processes created since
    /// the last search would stay invisible here until yet another process writes (see
    /// docs/pkcs11.md, "SoftHSM2 across processes"). A search right before the write
    /// narrows that gap to the write itself. Only liveness depends on it: nothing that
    /// must be safe relies on seeing other processes' new objects.
    fn sync_view(&self) {
        let probe = [
            Attribute::Class(ObjectClass::DATA),
            Attribute::Application(b"harpocrates-sync".to_vec()),
        ];
        if let Err(e) = self.session.find_objects(&probe) {
            tracing::debug!(error = %super::brief(&e), "view sync search");
        }
    }

    /// Destroys an object this process found; one already gone counts as destroyed.
    fn destroy_quietly(&self, handle: ObjectHandle, what: &str) {
        self.sync_view();
        match self.session.destroy_object(handle) {
            // SoftHSM2 answers FUNCTION_FAILED when another process removed the object
            // first.
            Ok(())
            | Err(CkError::Pkcs11(RvError::ObjectHandleInvalid | RvError::FunctionFailed, _)) => {}
            Err(e) => tracing::warn!(error = %super::brief(&e), what, "object not destroyed"),
        }
    }

    /// Reads a key's attributes; `None` for key types we do not serve.
    fn describe(&self, handle: ObjectHandle) -> BackendResult<Option<KeyInfo>> {
        let attrs = self
            .session
            .get_attributes(handle, &KEY_ATTRIBUTES)
            .map_err(|e| self.fail(e, "read key attributes"))?;
        let mut label = None;
        let mut info = KeyInfo {
            handle: String::new().into(),
            algorithm: KeyAlgorithm::Aes,
            attributes: KeyAttributes {
                size_bits: 0,
                extractable: false,
                sensitive: false,
                encrypt: false,
                decrypt: false,
                wrap: false,
                unwrap: false,
            },
            id: Vec::new(),
        };
        let mut known_type = false;
        for a in attrs {
            let at = &mut info.attributes;
            match a {
                Attribute::Label(l) => label = Some(String::from_utf8_lossy(&l).into_owned()),
                Attribute::Id(id) => info.id = id,
                Attribute::KeyType(t) if t == KeyType::AES => known_type = true,
                Attribute::KeyType(t) if t == KeyType::GENERIC_SECRET => {
                    info.algorithm = KeyAlgorithm::GenericSecret;
                    known_type = true;
                }
                Attribute::ValueLen(n) => at.size_bits = u32::try_from(*n * 8).unwrap_or(0),
                Attribute::Sensitive(b) => at.sensitive = b,
                Attribute::Extractable(b) => at.extractable = b,
                Attribute::Encrypt(b) => at.encrypt = b,
                Attribute::Decrypt(b) => at.decrypt = b,
                Attribute::Wrap(b) => at.wrap = b,
                Attribute::Unwrap(b) => at.unwrap = b,
                _ => {}
            }
        }
        let Some(label) = label.filter(|_| known_type) else { return Ok(None) };
        if info.attributes.size_bits == 0 {
            // Keys this process restored from a backup on a module that leaves
            // CKA_VALUE_LEN unset (SoftHSM2): the size is known from the backup.
            if let Some(k) = read(&self.shared.keys).get(&label).filter(|k| k.handle == handle) {
                info.attributes.size_bits = k.info.attributes.size_bits;
            }
        }
        info.handle = label.into();
        Ok(Some(info))
    }

    /// The cached handle for `label`, looked up once.
    fn key(&self, label: &str) -> BackendResult<CachedKey> {
        if let Some(k) = read(&self.shared.keys).get(label) {
            return Ok(k.clone());
        }
        let found = self.find(label)?.ok_or_else(|| BackendError::KeyNotFound(label.into()))?;
        write(&self.shared.keys).insert(label.to_owned(), found.clone());
        Ok(found)
    }

    /// Runs `op` with the key's handle; a handle another process invalidated (the key was
    /// destroyed, or re-created) is looked up once more.
    fn with_key<T>(
        &self,
        label: &str,
        what: &str,
        mut op: impl FnMut(&Session, &CachedKey) -> Result<T, CkError>,
    ) -> BackendResult<T> {
        let key = self.key(label)?;
        match op(&self.session, &key) {
            Err(CkError::Pkcs11(RvError::ObjectHandleInvalid | RvError::KeyHandleInvalid, _)) => {
                write(&self.shared.keys).remove(label);
                let key = self.key(label)?;
                op(&self.session, &key).map_err(|e| self.fail(e, what))
            }
            other => other.map_err(|e| self.fail(e, what)),
        }
    }

    /// Imports a password-derived wrapping key as a short-lived session object.
    fn import_wrapping_key(&self, value: &[u8; 32]) -> BackendResult<ObjectHandle> {
        let mut template = [
            Attribute::Value(value.to_vec()),
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::Token(false),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Wrap(true),
            Attribute::Unwrap(true),
        ];
        let created = self.session.create_object(&template);
        if let Attribute::Value(v) = &mut template[0] {
            zeroize::Zeroize::zeroize(v);
        }
        created.map_err(|e| self.fail(e, "import wrapping key"))
    }

    /// Runs `op` with a temporary wrapping key, destroying it whatever happens.
    fn with_wrapping_key<T>(
        &self,
        value: &[u8; 32],
        op: impl FnOnce(ObjectHandle) -> BackendResult<T>,
    ) -> BackendResult<T> {
        let kek = self.import_wrapping_key(value)?;
        let out = op(kek);
        if let Err(e) = self.session.destroy_object(kek) {
            tracing::warn!(error = %super::brief(&e), "could not destroy a temporary wrapping key");
        }
        out
    }

    /// A random 16-byte `CKA_ID` for a new key.
    fn new_key_id(&self) -> BackendResult<Vec<u8>> {
        let mut id = vec![0u8; 16];
        self.session.generate_random_slice(&mut id).map_err(|e| self.fail(e, "generate key id"))?;
        Ok(id)
    }

    /// A fresh random IV from the token's generator, drawn [`IVS_PER_DRAW`] at a time so
    /// encryptions do not each cost a `C_GenerateRandom` (an IV is not secret; only its
    /// uniqueness matters, and every IV is handed out once).
    fn random_iv(&mut self) -> BackendResult<[u8; IV_LEN]> {
        if self.ivs.used == IVS_PER_DRAW {
            let mut fresh = [0u8; IV_LEN * IVS_PER_DRAW];
            self.session
                .generate_random_slice(&mut fresh)
                .map_err(|e| self.fail(e, "generate IVs"))?;
            self.ivs = IvReserve { bytes: fresh, used: 0 };
        }
        let at = self.ivs.used * IV_LEN;
        self.ivs.used += 1;
        let mut iv = [0u8; IV_LEN];
        iv.copy_from_slice(&self.ivs.bytes[at..at + IV_LEN]);
        Ok(iv)
    }
}

impl BackendSession for Pkcs11Session {
    fn generate_random(&mut self, len: usize) -> BackendResult<SecretBytes> {
        let mut buf = Zeroizing::new(vec![0u8; len]);
        if len > 0 {
            self.session
                .generate_random_slice(&mut buf)
                .map_err(|e| self.fail(e, "generate random"))?;
        }
        Ok(buf.into())
    }

    fn generate_key(&mut self, label: &str, a: &KeyAttributes) -> BackendResult<KeyInfo> {
        // Find-then-create is not atomic in PKCS#11: serialise creation in this daemon.
        let _creating = self.shared.creating.lock().unwrap_or_else(|p| p.into_inner());
        if self.find(label)?.is_some() {
            return Err(BackendError::KeyExists(label.into()));
        }
        let id = self.new_key_id()?;
        let mut template = aes_key_template(label, &id, a);
        template.push(Attribute::ValueLen((u64::from(a.size_bits) / 8).into()));
        let handle = self
            .session
            .generate_key(&Mechanism::AesKeyGen, &template)
            .map_err(|e| self.fail(e, "generate key"))?;
        let info =
            KeyInfo { handle: label.into(), algorithm: KeyAlgorithm::Aes, attributes: *a, id };
        write(&self.shared.keys)
            .insert(label.to_owned(), CachedKey { handle, info: Arc::new(info.clone()) });
        Ok(info)
    }

    fn list_keys(&mut self) -> BackendResult<Vec<KeyInfo>> {
        let handles = self
            .session
            .find_objects(&[Attribute::Class(ObjectClass::SECRET_KEY)])
            .map_err(|e| self.fail(e, "list keys"))?;
        let mut keys = Vec::with_capacity(handles.len());
        for handle in handles {
            match self.describe(handle) {
                Ok(Some(info)) => keys.push(info),
                // Destroyed by another process between the find and the read.
                Ok(None) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e),
            }
        }
        keys.sort_by(|a, b| a.handle.cmp(&b.handle));
        Ok(keys)
    }

    fn encrypt(&mut self, key: &str, plaintext: &[u8], aad: &[u8]) -> BackendResult<Vec<u8>> {
        let iv = self.random_iv()?;
        let gcm_aad = ciphertext::gcm_aad(aad);
        let raw = &self.shared.raw;
        let mut out = ciphertext::begin(&iv, plaintext.len());
        self.with_key(key, "encrypt", |s, k| {
            raw.gcm_encrypt(s, k.handle, &iv, &gcm_aad, plaintext, &mut out)
        })?;
        Ok(out)
    }

    fn decrypt(&mut self, key: &str, ct: &[u8], aad: &[u8]) -> BackendResult<SecretBytes> {
        let parsed =
            ciphertext::parse(ct).map_err(|e| BackendError::InvalidArgument(e.to_string()))?;
        let gcm_aad = ciphertext::gcm_aad(aad);
        let raw = &self.shared.raw;
        // Sized exactly, so the plaintext is never moved to a larger buffer (and left
        // behind unwiped).
        let mut plain = Zeroizing::new(Vec::with_capacity(parsed.sealed.len()));
        self.with_key(key, "decrypt", |s, k| {
            plain.clear();
            raw.gcm_decrypt(s, k.handle, parsed.iv, &gcm_aad, parsed.sealed, &mut plain)
        })?;
        Ok(plain.into())
    }

    fn has_key(&mut self, key: &str) -> BackendResult<bool> {
        match self.key(key) {
            Ok(_) => Ok(true),
            Err(BackendError::KeyNotFound(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn destroy_key(&mut self, label: &str) -> BackendResult<()> {
        self.sync_view();
        let destroyed = self.with_key(label, "destroy key", |s, k| s.destroy_object(k.handle));
        write(&self.shared.keys).remove(label);
        match destroyed {
            // SoftHSM2 answers FUNCTION_FAILED when another process removed the key's file
            // first: if the key cannot be found any more, it is gone, which callers that
            // clean up treat as done.
            Err(e) if matches!(self.find(label), Ok(None)) => {
                tracing::debug!(label, error = %e, "key destroyed by another process first");
                Err(BackendError::KeyNotFound(label.into()))
            }
            other => other,
        }
    }

    fn backup_key(&mut self, label: &str, password: &[u8]) -> BackendResult<Vec<u8>> {
        let key = self.key(label)?;
        if !key.info.attributes.extractable {
            return Err(BackendError::NotPermitted(format!("key '{label}' is not extractable")));
        }
        let sealer = backup::Sealer::new(password, KdfParams::default())?;
        let wrapped = self.with_wrapping_key(sealer.keys().wrapping_key(), |kek| {
            self.with_key(label, "wrap key", |s, k| {
                s.wrap_key(&Mechanism::AesKeyWrapPad, kek, k.handle)
            })
        })?;
        Ok(sealer.finish(&key.info.attributes, &wrapped)?)
    }

    fn restore_key(&mut self, label: &str, blob: &[u8], password: &[u8]) -> BackendResult<KeyInfo> {
        let opened = backup::open(blob, password)?;
        let _creating = self.shared.creating.lock().unwrap_or_else(|p| p.into_inner());
        if self.find(label)?.is_some() {
            return Err(BackendError::KeyExists(label.into()));
        }
        let a = opened.attributes;
        let id = self.new_key_id()?;
        // No CKA_VALUE_LEN: the unwrap determines it (SoftHSM2 refuses it here).
        let template = aes_key_template(label, &id, &a);
        let handle = self.with_wrapping_key(opened.keys.wrapping_key(), |kek| {
            self.session
                .unwrap_key(&Mechanism::AesKeyWrapPad, kek, &opened.wrapped, &template)
                .map_err(|e| self.fail(e, "unwrap key"))
        })?;
        // SoftHSM2 leaves CKA_VALUE_LEN at 0 on unwrapped keys and refuses it in the unwrap
        // template; record it afterwards where the module allows.
        if let Err(e) = self
            .session
            .update_attributes(handle, &[Attribute::ValueLen((u64::from(a.size_bits) / 8).into())])
        {
            tracing::debug!(error = %super::brief(&e), "CKA_VALUE_LEN not settable on the restored key");
        }
        let info =
            KeyInfo { handle: label.into(), algorithm: KeyAlgorithm::Aes, attributes: a, id };
        write(&self.shared.keys)
            .insert(label.to_owned(), CachedKey { handle, info: Arc::new(info.clone()) });
        Ok(info)
    }

    fn generate_hmac_key(&mut self, label: &str, len: usize) -> BackendResult<()> {
        let _creating = self.shared.creating.lock().unwrap_or_else(|p| p.into_inner());
        if self.find(label)?.is_some() {
            return Err(BackendError::KeyExists(label.into()));
        }
        let id = self.new_key_id()?;
        let template = hmac_key_template(label, &id, len);
        self.session
            .generate_key(&Mechanism::GenericSecretKeyGen, &template)
            .map_err(|e| self.fail(e, "generate HMAC key"))?;
        Ok(())
    }

    fn hmac_sha256(&mut self, label: &str, data: &[u8]) -> BackendResult<Zeroizing<[u8; 32]>> {
        let mac = Zeroizing::new(
            self.with_key(label, "hmac", |s, k| s.sign(&Mechanism::Sha256Hmac, k.handle, data))?,
        );
        let mut out = Zeroizing::new([0u8; 32]);
        if mac.len() != out.len() {
            return Err(BackendError::Failed(format!("HMAC-SHA256 returned {} bytes", mac.len())));
        }
        out.copy_from_slice(&mac);
        Ok(out)
    }

    fn read_object(&mut self, label: &str) -> BackendResult<Option<Vec<u8>>> {
        // Highest sequence wins; equal sequences (two daemons writing at once) are broken
        // by the value, so every reader picks the same one.
        Ok(self
            .object_versions(label)?
            .into_iter()
            .max_by(|a, b| (a.0, &a.2).cmp(&(b.0, &b.2)))
            .map(|(_, _, v)| v))
    }

    /// Many tokens (SoftHSM2 among them) keep a data object's `CKA_VALUE` read-only, so a
    /// write creates a new object with a higher sequence number and then destroys the
    /// older ones. Creating one object is atomic; a crash in between leaves both, and the
    /// newer one wins on every read.
    fn write_object(&mut self, label: &str, value: &[u8]) -> BackendResult<()> {
        let old = self.object_versions(label)?;
        let seq = old.iter().map(|(s, _, _)| *s).max().unwrap_or(0) + 1;
        let mut stored = seq.to_be_bytes().to_vec();
        stored.extend_from_slice(value);
        let template = [
            Attribute::Class(ObjectClass::DATA),
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Application(DATA_APPLICATION.to_vec()),
            Attribute::Label(label.as_bytes().to_vec()),
            Attribute::Value(stored),
        ];
        self.sync_view();
        self.session.create_object(&template).map_err(|e| self.fail(e, "create data object"))?;
        for (_, handle, _) in old {
            match self.session.destroy_object(handle) {
                Ok(()) | Err(CkError::Pkcs11(RvError::ObjectHandleInvalid, _)) => {}
                Err(e) => {
                    tracing::warn!(error = %super::brief(&e), label, "old data object not destroyed")
                }
            }
        }
        Ok(())
    }

    fn list_objects(&mut self, prefix: &str) -> BackendResult<Vec<String>> {
        let handles = self
            .session
            .find_objects(&[
                Attribute::Class(ObjectClass::DATA),
                Attribute::Application(DATA_APPLICATION.to_vec()),
            ])
            .map_err(|e| self.fail(e, "list data objects"))?;
        let mut labels = Vec::new();
        for h in handles {
            let attrs = match self.session.get_attributes(h, &[AttributeType::Label]) {
                Ok(a) => a,
                Err(CkError::Pkcs11(RvError::ObjectHandleInvalid, _)) => continue,
                Err(e) => return Err(self.fail(e, "read data object label")),
            };
            for a in attrs {
                if let Attribute::Label(l) = a {
                    let l = String::from_utf8_lossy(&l).into_owned();
                    if l.starts_with(prefix) {
                        labels.push(l);
                    }
                }
            }
        }
        labels.sort();
        labels.dedup();
        Ok(labels)
    }

    fn probe(&mut self) -> BackendResult<()> {
        self.session.get_session_info().map(|_| ()).map_err(|e| self.fail(e, "probe"))
    }

    /// No label check: PKCS#11 has no create-if-absent, so two daemons may create keys
    /// under one label at once; the random `CKA_ID` tells them apart.
    fn create_kek_key(&mut self, label: &str, kind: KekKeyKind) -> BackendResult<Vec<u8>> {
        let id = self.new_key_id()?;
        self.sync_view();
        let handle = match kind {
            KekKeyKind::Aes(a) => {
                let mut template = aes_key_template(label, &id, &a);
                template.push(Attribute::ValueLen((u64::from(a.size_bits) / 8).into()));
                self.session.generate_key(&Mechanism::AesKeyGen, &template)
            }
            KekKeyKind::Hmac(len) => {
                let template = hmac_key_template(label, &id, len);
                self.session.generate_key(&Mechanism::GenericSecretKeyGen, &template)
            }
        }
        .map_err(|e| self.fail(e, "generate KEK key"))?;
        if let Ok(Some(info)) = self.describe(handle) {
            write(&self.shared.keys).insert(
                crate::backend::key_ref(label, &id),
                CachedKey { handle, info: Arc::new(info) },
            );
        }
        Ok(id)
    }

    /// One C_FindObjects for every secret key, then the label and id of each.
    fn list_key_ids(&mut self, prefix: &str) -> BackendResult<Vec<(String, Vec<u8>)>> {
        let handles = self
            .session
            .find_objects(&[Attribute::Class(ObjectClass::SECRET_KEY)])
            .map_err(|e| self.fail(e, "list keys"))?;
        let mut out = Vec::new();
        for h in handles {
            let attrs =
                match self.session.get_attributes(h, &[AttributeType::Label, AttributeType::Id]) {
                    Ok(a) => a,
                    Err(CkError::Pkcs11(RvError::ObjectHandleInvalid, _)) => continue,
                    Err(e) => return Err(self.fail(e, "read key label")),
                };
            let (mut label, mut id) = (None, Vec::new());
            for a in attrs {
                match a {
                    Attribute::Label(l) => label = Some(String::from_utf8_lossy(&l).into_owned()),
                    Attribute::Id(i) => id = i,
                    _ => {}
                }
            }
            if let Some(l) = label.filter(|l| l.starts_with(prefix)) {
                out.push((l, id));
            }
        }
        out.sort();
        Ok(out)
    }

    fn compare_and_swap_object(
        &mut self,
        label: &str,
        expected: Option<&[u8]>,
        value: &[u8],
    ) -> BackendResult<SwapOutcome> {
        self.swap(label, expected, value)
    }
}

/// The template of a persistent HMAC key: sensitive, never extractable, sign and verify.
fn hmac_key_template(label: &str, id: &[u8], len: usize) -> [Attribute; 11] {
    [
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::GENERIC_SECRET),
        Attribute::ValueLen((len as u64).into()),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Id(id.to_vec()),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Sign(true),
        Attribute::Verify(true),
    ]
}
