//! [`LocalEnvelope`]: envelope encryption in the caller's process, with a data key the
//! daemon derives in the HSM and hands out once (`EnvelopeDataKey`, `export` access).
//!
//! The idea is the AWS Encryption SDK's data-key cache: fetch a data key, use it for many
//! messages, fetch again when it is too old ([`LocalEnvelopeOptions::ttl`]) or has sealed
//! too many messages ([`LocalEnvelopeOptions::max_messages`]). The ciphertexts are exactly
//! the daemon's (both sides seal with [`harpocrates_protocol::envelope`]), so
//! [`Client::decrypt_with_context`] opens what a `LocalEnvelope` sealed and the other way
//! round.
//!
//! The data key of a (KEK version, context) is derived, not random: a refetch of the
//! same version returns the same key. What a refetch buys is a fresh look at the daemon —
//! the active version after a rotation, and whether this caller may still have the key.
//!
//! See `docs/envelope.md`, "Sealing in your own process".

mod fetch;
mod locked;
mod options;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use harpocrates_protocol::SecretBytes;
use harpocrates_protocol::envelope::kek_named;

use crate::client::Client;
use crate::error::{Error, Result};
use fetch::{Entry, error, fetch};
pub use options::{DEFAULT_LOCAL_TTL, DEFAULT_MAX_MESSAGES, LocalEnvelopeOptions, OTHER_VERSIONS};

struct Shared {
    client: Client,
    kek: String,
    context: Vec<u8>,
    options: LocalEnvelopeOptions,
    /// The key new messages are sealed with.
    current: RwLock<Arc<Entry>>,
    /// Keys of other versions, most recently used first; at most [`OTHER_VERSIONS`].
    others: Mutex<VecDeque<Arc<Entry>>>,
    /// One fetch from the daemon at a time; callers that waited look again first.
    fetching: tokio::sync::Mutex<()>,
    /// False once any key could not be locked in memory.
    all_locked: AtomicBool,
}

/// Seals and opens envelopes of one KEK and context in this process, with data keys
/// fetched from the daemon (see the [module docs](self)). Made by [`Client::envelope`].
///
/// Cheap to clone: clones share the keys. Sealing takes a read lock and an atomic
/// increment, and calls the daemon only when the key is due for a refetch.
#[derive(Clone)]
pub struct LocalEnvelope {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for LocalEnvelope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = &self.shared;
        f.debug_struct("LocalEnvelope")
            .field("kek", &s.kek)
            .field("context_len", &s.context.len())
            .field("version", &self.current().version())
            .field("locked", &self.is_locked())
            .field("options", &s.options)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A [`LocalEnvelope`] for `kek` and `context` with the default options: fetches the
    /// active version's data key now (`export` access on the KEK is needed).
    pub async fn envelope(&self, kek: &str, context: &[u8]) -> Result<LocalEnvelope> {
        self.envelope_with(kek, context, LocalEnvelopeOptions::default()).await
    }

    /// [`envelope`](Self::envelope) with explicit options.
    pub async fn envelope_with(
        &self,
        kek: &str,
        context: &[u8],
        options: LocalEnvelopeOptions,
    ) -> Result<LocalEnvelope> {
        options.validate()?;
        let first = fetch(self, kek, context, None).await?;
        let all_locked = AtomicBool::new(first.key.is_locked());
        Ok(LocalEnvelope {
            shared: Arc::new(Shared {
                client: self.clone(),
                kek: kek.to_owned(),
                context: context.to_vec(),
                options,
                current: RwLock::new(Arc::new(first)),
                others: Mutex::new(VecDeque::with_capacity(OTHER_VERSIONS)),
                fetching: tokio::sync::Mutex::new(()),
                all_locked,
            }),
        })
    }
}

impl LocalEnvelope {
    /// The KEK this envelope seals under.
    pub fn kek(&self) -> &str {
        &self.shared.kek
    }

    /// The context this envelope's messages are bound to.
    pub fn context(&self) -> &[u8] {
        &self.shared.context
    }

    /// The options in force.
    pub fn options(&self) -> LocalEnvelopeOptions {
        self.shared.options
    }

    /// Whether every data key this envelope has held sat in `mlock`ed memory. False when
    /// `mlock` failed (RLIMIT_MEMLOCK): the keys are then in ordinary memory, which may be
    /// swapped out (a warning was logged once).
    pub fn is_locked(&self) -> bool {
        self.shared.all_locked.load(Ordering::Relaxed)
    }

    fn current(&self) -> Arc<Entry> {
        self.shared.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Seals `plaintext` in this process, in the daemon's envelope format, under the
    /// active KEK version's data key for this context; `aad` is authenticated, not
    /// encrypted (none is the same as empty). Calls the daemon only when the key is due
    /// for a refetch; if that fetch fails, so does this call.
    pub async fn encrypt(&self, plaintext: &[u8], aad: Option<&[u8]>) -> Result<Vec<u8>> {
        loop {
            let stale = match self.try_seal(plaintext, aad) {
                Ok(sealed) => return sealed,
                Err(stale) => stale,
            };
            if let Some(fresh) = self.refresh(&stale).await? {
                // Just fetched: its first message, whatever the TTL.
                fresh.sealed.fetch_add(1, Ordering::Relaxed);
                return self.seal_with(&fresh, plaintext, aad);
            }
            // Another caller refreshed it: look again.
        }
    }

    /// [`encrypt`](Self::encrypt) if the key held now may seal, else `None`.
    pub(crate) fn seal_now(&self, plaintext: &[u8], aad: Option<&[u8]>) -> Option<Result<Vec<u8>>> {
        self.try_seal(plaintext, aad).ok()
    }

    /// Seals with the current key if it is still good; otherwise hands that key back.
    fn try_seal(
        &self,
        plaintext: &[u8],
        aad: Option<&[u8]>,
    ) -> std::result::Result<Result<Vec<u8>>, Arc<Entry>> {
        let entry = self.current();
        let options = &self.shared.options;
        if entry.expired(options.ttl)
            || entry.sealed.fetch_add(1, Ordering::Relaxed) >= options.max_messages
        {
            return Err(entry);
        }
        Ok(self.seal_with(&entry, plaintext, aad))
    }

    fn seal_with(&self, entry: &Entry, plaintext: &[u8], aad: Option<&[u8]>) -> Result<Vec<u8>> {
        entry.key.seal(&self.shared.context, plaintext, aad.unwrap_or_default()).map_err(error)
    }

    /// Replaces the current key `stale` with a fresh fetch and returns it, or `None` if
    /// another caller replaced it already. The key it replaces stays for decryption if its
    /// version differs.
    async fn refresh(&self, stale: &Arc<Entry>) -> Result<Option<Arc<Entry>>> {
        let s = &self.shared;
        let _one = s.fetching.lock().await;
        if !Arc::ptr_eq(&self.current(), stale) {
            return Ok(None);
        }
        let fresh = Arc::new(fetch(&s.client, &s.kek, &s.context, None).await?);
        self.note_locked(&fresh);
        *s.current.write().unwrap_or_else(|p| p.into_inner()) = fresh.clone();
        if fresh.version() != stale.version() && !stale.expired(s.options.ttl) {
            self.remember(stale.clone());
        }
        Ok(Some(fresh))
    }

    fn note_locked(&self, entry: &Entry) {
        if !entry.key.is_locked() {
            self.shared.all_locked.store(false, Ordering::Relaxed);
        }
    }

    /// Keeps `entry` among the other versions' keys, first, dropping the least recently
    /// used beyond [`OTHER_VERSIONS`].
    fn remember(&self, entry: Arc<Entry>) {
        let mut others = self.shared.others.lock().unwrap_or_else(|p| p.into_inner());
        others.retain(|e| e.version() != entry.version());
        others.push_front(entry);
        others.truncate(OTHER_VERSIONS);
    }

    /// The live key of `version` held now, if any (the current key or another version's).
    fn held(&self, version: u32) -> Option<Arc<Entry>> {
        let ttl = self.shared.options.ttl;
        let current = self.current();
        if current.version() == version && !current.expired(ttl) {
            return Some(current);
        }
        let mut others = self.shared.others.lock().unwrap_or_else(|p| p.into_inner());
        others.retain(|e| !e.expired(ttl));
        let at = others.iter().position(|e| e.version() == version)?;
        let entry = others.remove(at)?;
        others.push_front(entry.clone());
        Some(entry)
    }

    /// Which version `ciphertext` is under, if it names this envelope's KEK.
    fn version_of(&self, ciphertext: &[u8]) -> Result<u32> {
        let (name, version) = kek_named(ciphertext).map_err(error)?;
        if name != self.shared.kek {
            return Err(Error::WrongKek { expected: self.shared.kek.clone(), found: name.into() });
        }
        Ok(version)
    }

    /// [`decrypt`](Self::decrypt) if no key must be fetched for it, else `None`.
    pub(crate) fn open_now(
        &self,
        ciphertext: &[u8],
        aad: Option<&[u8]>,
    ) -> Option<Result<SecretBytes>> {
        let version = match self.version_of(ciphertext) {
            Ok(v) => v,
            Err(e) => return Some(Err(e)),
        };
        let entry = self.held(version)?;
        Some(self.open_with(&entry, ciphertext, aad))
    }

    fn open_with(
        &self,
        entry: &Entry,
        ciphertext: &[u8],
        aad: Option<&[u8]>,
    ) -> Result<SecretBytes> {
        let opened = entry.key.open(ciphertext, &self.shared.context, aad.unwrap_or_default());
        opened.map(SecretBytes::from).map_err(error)
    }

    /// Opens an envelope of this KEK and context, whichever version it is under: with
    /// the key held for that version, or after fetching it (`EnvelopeDataKey` with that
    /// version; the key is then kept, with the same TTL, among at most
    /// [`OTHER_VERSIONS`] other versions). A ciphertext of another KEK gives
    /// [`Error::WrongKek`] without a call to the daemon; a wrong context or AAD, or
    /// altered bytes, give [`Error::IntegrityCheckFailed`], as the daemon would.
    pub async fn decrypt(&self, ciphertext: &[u8], aad: Option<&[u8]>) -> Result<SecretBytes> {
        loop {
            if let Some(opened) = self.open_now(ciphertext, aad) {
                return opened;
            }
            let version = self.version_of(ciphertext)?;
            let s = &self.shared;
            let _one = s.fetching.lock().await;
            if self.held(version).is_some() {
                continue; // another caller fetched it meanwhile
            }
            let entry = Arc::new(fetch(&s.client, &s.kek, &s.context, Some(version)).await?);
            self.note_locked(&entry);
            self.remember(entry.clone());
            return self.open_with(&entry, ciphertext, aad);
        }
    }
}
