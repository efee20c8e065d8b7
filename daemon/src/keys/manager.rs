//! The key manager's read side: KEK states (cached, refreshed from the token), data keys
//! (derived in the token, cached in memory) and envelope encryption in the daemon.
//!
//! Writes to KEK state belong to the [rotation coordinator](crate::actors::rotation);
//! this side only reads the state and reflects what the coordinator wrote. The cache of a
//! KEK's state is trusted for `kek_refresh` at most, so a rotation committed by another
//! daemon on the same token is picked up within that time.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use harpocrates_protocol::envelope::{EnvelopeError, EnvelopeKey};
use harpocrates_protocol::{
    DataKey, ErrorCode, KekId, KekInfo, KekVersionState, KeyAttributes, Response, SecretBytes,
    WireError,
};
use zeroize::Zeroizing;

use super::dek::{DekCache, DekId, Purpose};
use super::envelope;
use super::kek::{self, KekState};
use crate::actors::session::pool::SessionPool;
use crate::backend::{BackendError, key_ref};
use crate::formats::ciphertext;

/// How often a ciphertext naming an unknown version may force a state re-read.
const FORCED_REFRESH: Duration = Duration::from_millis(100);

/// Format byte of a wrapped data key.
pub const WRAPPED_V1: u8 = 0xD1;

/// Key-manager settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyManagerSettings {
    /// How long a cached KEK state is trusted.
    pub kek_refresh: Duration,
    /// Most data keys cached.
    pub dek_cache_size: usize,
    /// How long a data key stays cached.
    pub dek_cache_ttl: Duration,
}

impl Default for KeyManagerSettings {
    fn default() -> Self {
        Self {
            kek_refresh: Duration::from_secs(5),
            dek_cache_size: 10_000,
            dek_cache_ttl: Duration::from_secs(300),
        }
    }
}

/// Shared by the router and the rotation coordinator.
pub struct KeyManager {
    pool: SessionPool,
    crypto: super::crypto_pool::CryptoPool,
    threads: usize,
    settings: KeyManagerSettings,
    states: RwLock<HashMap<String, (Option<KekState>, Instant)>>,
    /// Ids of every key under a format-1 version's label (sorted): such versions were
    /// made before ids were recorded, and racing daemons may have made two keys each.
    legacy: RwLock<HashMap<String, Vec<Vec<u8>>>>,
    deks: DekCache,
}

/// Which key of a KEK version.
#[derive(Debug, Clone, Copy)]
enum Part {
    Aes,
    Mac,
}

fn wire(e: BackendError) -> WireError {
    WireError::from(e)
}

impl KeyManager {
    /// A key manager working through `pool`.
    pub fn new(pool: SessionPool, settings: KeyManagerSettings) -> Self {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self {
            pool,
            // One crypto thread fewer than cores: the I/O thread takes a chunk itself.
            crypto: super::crypto_pool::CryptoPool::new(threads.saturating_sub(1).max(1)),
            threads,
            settings,
            states: RwLock::new(HashMap::new()),
            legacy: RwLock::new(HashMap::new()),
            deks: DekCache::new(settings.dek_cache_size, settings.dek_cache_ttl),
        }
    }

    /// The session pool, for the coordinator's token writes.
    pub fn pool(&self) -> &SessionPool {
        &self.pool
    }

    /// Records a KEK's state (or its absence) as read from or written to the token. A
    /// state never replaces a newer one (a read that started before a write may finish
    /// after it), and data keys of versions the new state retired or destroyed are wiped.
    pub fn remember(&self, name: &str, state: Option<KekState>) {
        let mut states = self.states.write().unwrap_or_else(|p| p.into_inner());
        let previous = states.get(name).and_then(|(s, _)| s.clone());
        if let (Some(old), Some(new)) = (&previous, &state) {
            if old.revision > new.revision {
                return;
            }
            for v in new.retired.iter().chain(&new.destroyed) {
                if !old.retired.contains(v) && !old.destroyed.contains(v) {
                    self.deks.forget_version(name, *v);
                }
            }
        }
        states.insert(name.to_owned(), (state, Instant::now()));
    }

    /// Drops cached data keys of a version that may no longer be used.
    pub fn forget_version(&self, name: &str, version: u32) {
        self.deks.forget_version(name, version);
        self.legacy.write().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// Forgets every cached KEK state, so the next use reads the token (after the
    /// rotation coordinator restarted: what it remembered may be wrong).
    pub fn forget_states(&self) {
        self.states.write().unwrap_or_else(|p| p.into_inner()).clear();
        self.legacy.write().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// Reads a KEK's state from the token, bypassing the cache's age limit: the answer is
    /// the newer (by revision) of what the token holds now and what this daemon last wrote
    /// or read, since a process may briefly not see the newest state object (see
    /// docs/pkcs11.md, "SoftHSM2 across processes").
    pub async fn read_state(&self, name: &str) -> Result<Option<KekState>, WireError> {
        let read = self.read_state_raw(name).await?.map(|(s, _)| s);
        Ok(self.cached(name).map(|(s, _)| s).unwrap_or(read))
    }

    /// Reads a KEK's state from the token, bypassing the cache, with the exact bytes
    /// stored (what a compare-and-swap of the state must expect).
    pub async fn read_state_raw(
        &self,
        name: &str,
    ) -> Result<Option<(KekState, Vec<u8>)>, WireError> {
        let label = kek::state_label(name);
        let bytes = self.pool.run("kek_state_read", move |s| s.read_object(&label)).await?;
        let read = bytes
            .map(|b| KekState::decode(&b).map(|state| (state, b)))
            .transpose()
            .map_err(wire)?;
        self.remember(name, read.as_ref().map(|(s, _)| s.clone()));
        Ok(read)
    }

    fn cached(&self, name: &str) -> Option<(Option<KekState>, Instant)> {
        self.states.read().unwrap_or_else(|p| p.into_inner()).get(name).cloned()
    }

    /// A KEK's state, from the cache while it is fresh enough. An unknown name is cached
    /// too, so requests for it cost no token lookup until the cache expires.
    pub async fn state(&self, name: &str) -> Result<KekState, WireError> {
        let state = match self.cached(name) {
            Some((s, at)) if at.elapsed() < self.settings.kek_refresh => s,
            _ => self.read_state(name).await?,
        };
        state
            .ok_or_else(|| WireError::new(ErrorCode::KeyNotFound, format!("no KEK named '{name}'")))
    }

    /// Every KEK on the token.
    pub async fn list(&self) -> Result<Vec<KekInfo>, WireError> {
        let labels = self.pool.run("kek_list", |s| s.list_objects(kek::STATE_PREFIX)).await?;
        let mut out = Vec::new();
        for label in labels {
            let Some(name) = kek::name_of_state_label(&label) else { continue };
            if let Some(state) = self.read_state(name).await? {
                out.push(state.info(name));
            }
        }
        Ok(out)
    }

    /// References to a version's key, the one new data uses first: the recorded key of
    /// a version this code made; for a format-1 version every key under its label, by id.
    async fn refs(&self, kek: &KekId, part: Part) -> Result<Vec<String>, WireError> {
        let label = match part {
            Part::Aes => kek::aes_label(&kek.name, kek.version),
            Part::Mac => kek::mac_label(&kek.name, kek.version),
        };
        let state = self.state(&kek.name).await?;
        if let Some(k) = state.version_keys(kek.version) {
            let id = match part {
                Part::Aes => &k.aes,
                Part::Mac => &k.mac,
            };
            return Ok(vec![key_ref(&label, id)]);
        }
        let known = self.legacy.read().unwrap_or_else(|p| p.into_inner()).get(&label).cloned();
        let ids = match known {
            Some(ids) => ids,
            None => {
                let l = label.clone();
                let ids: Vec<Vec<u8>> = self
                    .pool
                    .run("kek_key_ids", move |s| s.list_key_ids(&l))
                    .await?
                    .into_iter()
                    .filter(|(found, _)| *found == label)
                    .map(|(_, id)| id)
                    .collect();
                if ids.len() > 1 {
                    tracing::warn!(
                        label = %label,
                        count = ids.len(),
                        "several keys share a KEK label made before ids were recorded; \
                         new data uses the lowest id, decryption tries each"
                    );
                }
                self.legacy
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(label.clone(), ids.clone());
                ids
            }
        };
        if ids.is_empty() {
            // Let the token report what is missing.
            return Ok(vec![label]);
        }
        Ok(ids.iter().map(|id| key_ref(&label, id)).collect())
    }

    /// The key new data of this version uses.
    async fn first_ref(&self, kek: &KekId, part: Part) -> Result<String, WireError> {
        let mut refs = self.refs(kek, part).await?;
        Ok(refs.swap_remove(0))
    }

    /// The envelope key new data of KEK `name` under `context` is sealed with: the active
    /// version's.
    async fn seal_key(&self, name: &str, context: &[u8]) -> Result<EnvelopeKey, WireError> {
        let kek = self.active(name).await?;
        let mac = self.first_ref(&kek, Part::Mac).await?;
        let dek = self.dek(&kek, mac, context, envelope::DEK_LEN, Purpose::Envelope, true).await?;
        EnvelopeKey::new(kek, &dek).map_err(envelope_wire)
    }

    /// The envelope keys a ciphertext of version `kek` may be under, once that version is
    /// checked to decrypt: one, except for a format-1 version with several keys under its
    /// HMAC label.
    async fn open_keys(&self, kek: &KekId, context: &[u8]) -> Result<Vec<EnvelopeKey>, WireError> {
        self.check_decrypt(kek).await?;
        let refs = self.refs(kek, Part::Mac).await?;
        let mut keys = Vec::with_capacity(refs.len());
        for (i, r) in refs.into_iter().enumerate() {
            let dek =
                self.dek(kek, r, context, envelope::DEK_LEN, Purpose::Envelope, i == 0).await?;
            keys.push(EnvelopeKey::new(kek.clone(), &dek).map_err(envelope_wire)?);
        }
        Ok(keys)
    }

    /// The key for (KEK version, context, len, purpose) under the HMAC key `mac`: cached,
    /// or derived in the token. Only the key new data uses is cached.
    async fn dek(
        &self,
        kek: &KekId,
        mac: String,
        context: &[u8],
        len: usize,
        purpose: Purpose,
        cache: bool,
    ) -> Result<Zeroizing<Vec<u8>>, WireError> {
        if !(super::dek::MIN_LEN..=super::dek::MAX_LEN).contains(&len) {
            return Err(wire(BackendError::InvalidArgument(format!(
                "data keys are 16 to 64 bytes, not {len}"
            ))));
        }
        let id = DekId {
            kek: kek.name.clone(),
            version: kek.version,
            context: context.to_vec(),
            len: len as u8,
            purpose,
        };
        if cache && let Some(dek) = self.deks.get(&id) {
            return Ok(dek);
        }
        let ctx = context.to_vec();
        let prk = self.pool.run("kek_derive", move |s| s.hmac_sha256(&mac, &ctx)).await?;
        let dek = super::dek::expand(&prk, len, purpose).map_err(wire)?;
        // The version may have been retired while the token computed: never cache (or
        // use) a key of a version the latest known state forbids.
        if let Some((Some(state), _)) = self.cached(&kek.name)
            && state
                .version_state(kek.version)
                .is_some_and(|v| matches!(v, KekVersionState::Retired | KekVersionState::Destroyed))
        {
            return Err(wire(BackendError::InvalidState(format!(
                "KEK {} version {} was retired meanwhile",
                kek.name, kek.version
            ))));
        }
        if cache {
            self.deks.insert(id, &dek);
        }
        Ok(dek)
    }

    /// The active version of `name`.
    async fn active(&self, name: &str) -> Result<KekId, WireError> {
        let state = self.state(name).await?;
        Ok(KekId { name: name.to_owned(), version: state.active })
    }

    /// Checks that `kek` may decrypt, refreshing the cached state once when the
    /// ciphertext names a version this daemon has not seen (another daemon rotated).
    async fn check_decrypt(&self, kek: &KekId) -> Result<(), WireError> {
        let mut state = self.state(&kek.name).await?;
        let age = self.cached(&kek.name).map_or(Duration::MAX, |(_, at)| at.elapsed());
        // A version this daemon has not seen: another daemon may have rotated. Re-read,
        // but at most every FORCED_REFRESH, so forged versions cannot flood the token.
        if kek.version > state.latest() && age > FORCED_REFRESH {
            state = self.read_state(&kek.name).await?.ok_or_else(|| {
                WireError::new(ErrorCode::KeyNotFound, format!("no KEK named '{}'", kek.name))
            })?;
        }
        state.check_decrypt(&kek.name, kek.version).map_err(wire)
    }

    /// `DeriveDataKey`.
    pub async fn derive_data_key(
        &self,
        name: &str,
        context: &[u8],
        len: u32,
    ) -> Result<DataKey, WireError> {
        let kek = self.active(name).await?;
        let mac = self.first_ref(&kek, Part::Mac).await?;
        let dek = self.dek(&kek, mac, context, len as usize, Purpose::DataKey, true).await?;
        Ok(DataKey { dek: dek.into(), kek, wrapped: None })
    }

    /// `EnvelopeDataKey`: the key envelopes of the active version (or of `version`, if it
    /// may still decrypt) under `context` are sealed with, for a client's local path.
    pub async fn envelope_data_key(
        &self,
        name: &str,
        context: &[u8],
        version: Option<u32>,
    ) -> Result<DataKey, WireError> {
        let kek = match version {
            None => self.active(name).await?,
            Some(version) => {
                let kek = KekId { name: name.to_owned(), version };
                self.check_decrypt(&kek).await?;
                kek
            }
        };
        let mac = self.first_ref(&kek, Part::Mac).await?;
        let dek = self.dek(&kek, mac, context, envelope::DEK_LEN, Purpose::Envelope, true).await?;
        Ok(DataKey { dek: dek.into(), kek, wrapped: None })
    }

    /// `EnvelopeEncrypt`.
    pub async fn envelope_encrypt(
        &self,
        name: &str,
        context: &[u8],
        plaintext: &[u8],
        aad: &[u8],
    ) -> Result<Vec<u8>, WireError> {
        self.seal_key(name, context).await?.seal(context, plaintext, aad).map_err(envelope_wire)
    }

    /// `EnvelopeDecrypt`.
    pub async fn envelope_decrypt(
        &self,
        context: &[u8],
        ciphertext: &[u8],
        aad: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, WireError> {
        let kek = envelope::kek_of(ciphertext).map_err(wire)?;
        let keys = self.open_keys(&kek, context).await?;
        open_with_any(&keys, ciphertext, context, aad).map_err(envelope_wire)
    }

    /// The envelope operations of one batch: keys are resolved here (cache hits cost
    /// nothing; misses go to the token), then the AES work is split into one chunk per
    /// core, all but one on the crypto threads and the last on this thread, so a large
    /// batch uses every core with one hand-off per chunk rather than per operation.
    pub async fn envelope_batch(
        &self,
        ops: Vec<(usize, EnvelopeOp)>,
    ) -> Vec<(usize, Result<Response, WireError>)> {
        let mut done = Vec::with_capacity(ops.len());
        let mut ready: Vec<(usize, Prepared)> = Vec::with_capacity(ops.len());
        let mut bytes = 0;
        let mut memo = Memo::default();
        for (i, op) in ops {
            match self.prepare(op, &mut memo).await {
                Ok(p) => {
                    bytes += p.len();
                    ready.push((i, p));
                }
                Err(e) => done.push((i, Err(e))),
            }
        }
        if ready.len() == 1 && bytes >= SOLO_OFFLOAD_BYTES {
            // One large payload: its AES would stall every other connection on the I/O
            // thread for milliseconds, so it goes to a crypto thread even alone.
            if let Some((i, p)) = ready.pop() {
                let r = self.crypto.run(move || p.run()).await.unwrap_or_else(|| {
                    Err(WireError::new(ErrorCode::OperationFailed, "a crypto thread failed"))
                });
                done.push((i, r));
            }
            return done;
        }
        let threads = self.threads.min(ready.len());
        if bytes < OFFLOAD_MIN_BYTES || threads < 2 {
            done.extend(ready.into_iter().map(|(i, p)| (i, p.run())));
            return done;
        }
        let per = ready.len().div_ceil(threads);
        let mut chunks: Vec<Vec<(usize, Prepared)>> = Vec::with_capacity(threads);
        while !ready.is_empty() {
            let rest = ready.split_off(per.min(ready.len()));
            chunks.push(std::mem::replace(&mut ready, rest));
        }
        let mine = chunks.pop().unwrap_or_default();
        let offloaded: Vec<_> = chunks
            .into_iter()
            .map(|chunk| {
                let indices: Vec<usize> = chunk.iter().map(|(i, _)| *i).collect();
                let work = move || chunk.into_iter().map(|(i, p)| (i, p.run())).collect::<Vec<_>>();
                (indices, self.crypto.run(work))
            })
            .collect();
        done.extend(mine.into_iter().map(|(i, p)| (i, p.run())));
        for (indices, fut) in offloaded {
            match fut.await {
                Some(r) => done.extend(r),
                None => done.extend(indices.into_iter().map(|i| {
                    (i, Err(WireError::new(ErrorCode::OperationFailed, "a crypto thread failed")))
                })),
            }
        }
        done
    }

    /// Resolves an envelope operation's key. Batch elements under the same KEK and
    /// context (the common case) share the key resolved for the first of them.
    async fn prepare(&self, op: EnvelopeOp, memo: &mut Memo) -> Result<Prepared, WireError> {
        match op {
            EnvelopeOp::Encrypt { kek, context, plaintext, aad } => {
                let key = match &memo.seal {
                    Some((name, ctx, key)) if *name == kek && *ctx == context => key.clone(),
                    _ => {
                        let key = Arc::new(self.seal_key(&kek, &context).await?);
                        memo.seal = Some((kek, context.clone(), key.clone()));
                        key
                    }
                };
                Ok(Prepared::Seal { key, context, plaintext, aad })
            }
            EnvelopeOp::Decrypt { context, ciphertext, aad } => {
                let (name, version) = envelope::kek_named(&ciphertext).map_err(wire)?;
                let keys = match &memo.open {
                    Some((id, ctx, keys))
                        if id.name == name && id.version == version && *ctx == context =>
                    {
                        keys.clone()
                    }
                    _ => {
                        let id = KekId { name: name.to_owned(), version };
                        let keys = Arc::new(self.open_keys(&id, &context).await?);
                        memo.open = Some((id, context.clone(), keys.clone()));
                        keys
                    }
                };
                Ok(Prepared::Open { keys, context, ciphertext, aad })
            }
        }
    }

    /// `GenerateDataKey`: a random key, and the same key wrapped by the KEK in the token.
    pub async fn generate_data_key(&self, name: &str) -> Result<DataKey, WireError> {
        let kek = self.active(name).await?;
        let mut dek = Zeroizing::new(vec![0u8; envelope::DEK_LEN]);
        getrandom::fill(&mut dek)
            .map_err(|e| wire(BackendError::Failed(format!("no randomness: {e}"))))?;
        let wrapped = self.wrap(&kek, &dek).await?;
        Ok(DataKey { dek: dek.into(), kek, wrapped: Some(wrapped) })
    }

    async fn wrap(&self, kek: &KekId, dek: &Zeroizing<Vec<u8>>) -> Result<Vec<u8>, WireError> {
        let header = wrapped_header(kek).map_err(wire)?;
        let label = self.first_ref(kek, Part::Aes).await?;
        let (aad, key) = (header.clone(), Zeroizing::new(dek.to_vec()));
        let sealed = self.pool.run("kek_wrap", move |s| s.encrypt(&label, &key, &aad)).await?;
        let mut out = header;
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// `UnwrapDataKey`.
    pub async fn unwrap_data_key(&self, wrapped: &[u8]) -> Result<DataKey, WireError> {
        let (kek, header_len) = parse_wrapped(wrapped).map_err(wire)?;
        self.check_decrypt(&kek).await?;
        let refs = self.refs(&kek, Part::Aes).await?;
        let (aad, sealed) = (wrapped[..header_len].to_vec(), wrapped[header_len..].to_vec());
        // Only a format-1 version with duplicated keys has more than one candidate: the
        // one whose GCM tag verifies is the key the data key was wrapped under.
        let dek = self
            .pool
            .run("kek_unwrap", move |s| {
                let mut last = BackendError::IntegrityCheckFailed;
                for r in &refs {
                    match s.decrypt(r, &sealed, &aad) {
                        Err(BackendError::IntegrityCheckFailed) => {}
                        Err(e) if e.is_not_found() && refs.len() > 1 => last = e,
                        other => return other,
                    }
                }
                Err(last)
            })
            .await?;
        Ok(DataKey { dek, kek, wrapped: None })
    }

    /// `Rewrap`: an envelope ciphertext or a wrapped data key, moved to the active version
    /// without the plaintext leaving the daemon.
    pub async fn rewrap(
        &self,
        context: &[u8],
        ciphertext: &[u8],
        aad: &[u8],
    ) -> Result<Vec<u8>, WireError> {
        match ciphertext.first() {
            Some(&WRAPPED_V1) => {
                let old = self.unwrap_data_key(ciphertext).await?;
                let kek = self.active(&old.kek.name).await?;
                self.wrap(&kek, &old.dek.into_zeroizing()).await
            }
            _ => {
                let old = envelope::kek_of(ciphertext).map_err(wire)?;
                let plain = self.envelope_decrypt(context, ciphertext, aad).await?;
                self.envelope_encrypt(&old.name, context, &plain, aad).await
            }
        }
    }
}

/// Below this much payload a batch's envelope work stays on the I/O thread: handing it
/// to other threads would cost more than it saves.
const OFFLOAD_MIN_BYTES: usize = 64 * 1024;

/// A lone envelope payload this large is sealed or opened off the I/O thread.
const SOLO_OFFLOAD_BYTES: usize = 256 * 1024;

/// An envelope operation of a batch.
pub enum EnvelopeOp {
    /// `EnvelopeEncrypt`.
    Encrypt {
        /// KEK name.
        kek: String,
        /// Derivation context.
        context: Vec<u8>,
        /// Plaintext.
        plaintext: SecretBytes,
        /// Caller AAD.
        aad: Vec<u8>,
    },
    /// `EnvelopeDecrypt`.
    Decrypt {
        /// Derivation context.
        context: Vec<u8>,
        /// Envelope ciphertext.
        ciphertext: Vec<u8>,
        /// Caller AAD.
        aad: Vec<u8>,
    },
}

/// An envelope operation with its key resolved: pure CPU work, movable to any thread.
enum Prepared {
    Seal { key: Arc<EnvelopeKey>, context: Vec<u8>, plaintext: SecretBytes, aad: Vec<u8> },
    Open { keys: Arc<Vec<EnvelopeKey>>, context: Vec<u8>, ciphertext: Vec<u8>, aad: Vec<u8> },
}

/// The keys the last envelope operations of a batch resolved, for the next ones.
#[derive(Default)]
struct Memo {
    seal: Option<(String, Vec<u8>, Arc<EnvelopeKey>)>,
    open: Option<(KekId, Vec<u8>, Arc<Vec<EnvelopeKey>>)>,
}

fn envelope_wire(e: EnvelopeError) -> WireError {
    wire(BackendError::from(e))
}

impl Prepared {
    fn len(&self) -> usize {
        match self {
            Prepared::Seal { plaintext, .. } => plaintext.len(),
            Prepared::Open { ciphertext, .. } => ciphertext.len(),
        }
    }

    fn run(self) -> Result<Response, WireError> {
        match self {
            Prepared::Seal { key, context, plaintext, aad } => key
                .seal(&context, plaintext.expose(), &aad)
                .map(Response::Ciphertext)
                .map_err(envelope_wire),
            Prepared::Open { keys, context, ciphertext, aad } => {
                open_with_any(&keys, &ciphertext, &context, &aad)
                    .map(|plain| Response::Plaintext(plain.into()))
                    .map_err(envelope_wire)
            }
        }
    }
}

/// Opens an envelope with the first key whose GCM tag verifies (several keys only for a
/// format-1 version whose label two daemons both used).
fn open_with_any(
    keys: &[EnvelopeKey],
    ciphertext: &[u8],
    context: &[u8],
    aad: &[u8],
) -> Result<Zeroizing<Vec<u8>>, EnvelopeError> {
    let mut last = EnvelopeError::Integrity;
    for key in keys {
        match key.open(ciphertext, context, aad) {
            Err(EnvelopeError::Integrity) => {}
            Err(e) => last = e,
            ok => return ok,
        }
    }
    Err(last)
}

fn wrapped_header(kek: &KekId) -> Result<Vec<u8>, BackendError> {
    let name = kek.name.as_bytes();
    let n = u8::try_from(name.len())
        .map_err(|_| BackendError::InvalidArgument("KEK name too long".into()))?;
    let mut h = vec![WRAPPED_V1, n];
    h.extend_from_slice(name);
    h.extend_from_slice(&kek.version.to_be_bytes());
    Ok(h)
}

/// Reads the header of a wrapped data key (`0xD1 | name length | KEK name | u32 BE
/// version`, then the AES-GCM ciphertext): the KEK version it names and the header's
/// length. Checks only the layout — a known format byte, a valid KEK name, room for at
/// least the ciphertext overhead — never the cryptography, so any input gives an error
/// rather than a panic (a fuzz target relies on it).
pub fn parse_wrapped(w: &[u8]) -> Result<(KekId, usize), BackendError> {
    let bad = || BackendError::InvalidArgument("not a wrapped data key".into());
    if w.first() != Some(&WRAPPED_V1) {
        return Err(bad());
    }
    let n = usize::from(*w.get(1).ok_or_else(bad)?);
    let header_len = 2 + n + 4;
    if n == 0 || w.len() < header_len + ciphertext::OVERHEAD {
        return Err(bad());
    }
    let name = std::str::from_utf8(&w[2..2 + n]).map_err(|_| bad())?.to_owned();
    crate::keys::name::validate_label(&name).map_err(|_| bad())?;
    let version = u32::from_be_bytes([w[2 + n], w[3 + n], w[4 + n], w[5 + n]]);
    Ok((KekId { name, version }, header_len))
}

/// The attributes of a KEK version's AES key: sensitive, never extractable, encrypt and
/// decrypt only. Only C_Encrypt/C_Decrypt are used with it; allowing wrap/unwrap would
/// invite the PKCS#11 wrap-then-decrypt attack from any other session on the token.
pub const KEK_AES_ATTRIBUTES: KeyAttributes = KeyAttributes::aes(256);
