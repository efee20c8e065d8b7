//! Data keys derived from a KEK, and the cache that makes a hot context free.
//!
//! `DEK = HKDF-Expand(PRK, info, L)` with `PRK = HMAC-SHA256(KEK version's HMAC key,
//! context)` computed in the token, and `info = "harpocrates data key v1" || L as u32 BE`.
//! Putting `L` in `info` keeps keys of different lengths unrelated (plain HKDF output of
//! a shorter length is a prefix of the longer one).
//!
//! Derived keys are cached in one `mlock`ed slab (so they are never swapped out) under a
//! bounded LRU with a time to live, and wiped when evicted.

use std::num::NonZeroUsize;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use hkdf::Hkdf;
use lru::LruCache;
use sha2::Sha256;
use zeroize::{Zeroize, Zeroizing};

use crate::backend::BackendError;

/// The fixed HKDF info label of `DeriveDataKey` keys (followed by the length as u32
/// big-endian).
pub const INFO: &[u8] = b"harpocrates data key v1";
/// The info label of envelope keys: a different label, so a client cannot obtain an
/// envelope key through `DeriveDataKey` and open envelopes without the daemon.
pub const ENVELOPE_INFO: &[u8] = b"harpocrates envelope key v1";

/// What a derived key is for; each purpose has its own HKDF info label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Purpose {
    /// Handed to the caller by `DeriveDataKey`.
    DataKey,
    /// Used inside the daemon for envelope encryption; never handed out.
    Envelope,
}

impl Purpose {
    fn info(self) -> &'static [u8] {
        match self {
            Purpose::DataKey => INFO,
            Purpose::Envelope => ENVELOPE_INFO,
        }
    }
}
/// Shortest data key, bytes.
pub const MIN_LEN: usize = 16;
/// Longest data key, bytes.
pub const MAX_LEN: usize = 64;

/// HKDF-Expand of a token-computed PRK into a data key of `len` bytes.
pub fn expand(
    prk: &[u8; 32],
    len: usize,
    purpose: Purpose,
) -> Result<Zeroizing<Vec<u8>>, BackendError> {
    if !(MIN_LEN..=MAX_LEN).contains(&len) {
        return Err(BackendError::InvalidArgument(format!(
            "data keys are {MIN_LEN} to {MAX_LEN} bytes, not {len}"
        )));
    }
    let hk = Hkdf::<Sha256>::from_prk(prk).map_err(|_| BackendError::Failed("bad PRK".into()))?;
    let mut info = purpose.info().to_vec();
    info.extend_from_slice(&(len as u32).to_be_bytes());
    let mut okm = Zeroizing::new(vec![0u8; len]);
    hk.expand(&info, &mut okm).map_err(|_| BackendError::Failed("HKDF-Expand failed".into()))?;
    Ok(okm)
}

/// What a cached key was derived for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DekId {
    /// KEK name.
    pub kek: String,
    /// KEK version.
    pub version: u32,
    /// Derivation context.
    pub context: Vec<u8>,
    /// Key length.
    pub len: u8,
    /// What the key is for.
    pub purpose: Purpose,
}

/// Fixed-size slots in memory locked against swapping, where the OS allows.
struct LockedSlab {
    buf: Box<[u8]>,
    free: Vec<usize>,
    locked: bool,
}

impl LockedSlab {
    fn new(slots: usize) -> Self {
        let mut buf = vec![0u8; slots * MAX_LEN].into_boxed_slice();
        // SAFETY: mlock only pins the pages of this live allocation; it reads no memory.
        let locked = unsafe { libc::mlock(buf.as_mut_ptr().cast(), buf.len()) } == 0;
        if !locked {
            tracing::warn!(
                "cannot mlock the data-key cache (RLIMIT_MEMLOCK?); keys may be swapped"
            );
        }
        Self { buf, free: (0..slots).rev().collect(), locked }
    }

    fn slot(&mut self, i: usize) -> &mut [u8] {
        &mut self.buf[i * MAX_LEN..(i + 1) * MAX_LEN]
    }
}

impl Drop for LockedSlab {
    fn drop(&mut self) {
        self.buf.zeroize();
        if self.locked {
            // SAFETY: unpins the pages pinned in `new`; the allocation is still alive.
            unsafe { libc::munlock(self.buf.as_mut_ptr().cast(), self.buf.len()) };
        }
    }
}

struct Entry {
    slot: usize,
    len: usize,
    expires: Instant,
}

struct Inner {
    lru: LruCache<DekId, Entry>,
    slab: LockedSlab,
}

/// Lookups in data-key caches: how often a derivation was spared a token call.
pub struct CacheCounts {
    hits: AtomicU64,
    misses: AtomicU64,
}

impl CacheCounts {
    /// Zero hits, zero misses.
    pub const fn new() -> Self {
        Self { hits: AtomicU64::new(0), misses: AtomicU64::new(0) }
    }

    /// Lookups answered from a cache.
    pub fn hits(&self) -> u64 {
        self.hits.load(Relaxed)
    }

    /// Lookups that found nothing usable (absent or expired).
    pub fn misses(&self) -> u64 {
        self.misses.load(Relaxed)
    }
}

impl Default for CacheCounts {
    fn default() -> Self {
        Self::new()
    }
}

/// Every [`DekCache`]'s lookups in this process. Process-wide rather than per cache: a
/// hot swap builds a new key manager (and cache), and the counts must go on rising across
/// it, as Prometheus expects of a counter. A process runs one daemon.
pub static CACHE_COUNTS: CacheCounts = CacheCounts::new();

/// Bounded, expiring, wiping cache of derived data keys.
pub struct DekCache {
    inner: Mutex<Inner>,
    ttl: Duration,
}

impl DekCache {
    /// A cache of at most `capacity` keys, each kept for `ttl`.
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        let capacity = capacity.max(1);
        let lru = LruCache::new(NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN));
        Self { inner: Mutex::new(Inner { lru, slab: LockedSlab::new(capacity) }), ttl }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A copy of the cached key, unless absent or expired (an expired one is wiped);
    /// counted in [`CACHE_COUNTS`].
    pub fn get(&self, id: &DekId) -> Option<Zeroizing<Vec<u8>>> {
        let found = self.lookup(id);
        let counter = if found.is_some() { &CACHE_COUNTS.hits } else { &CACHE_COUNTS.misses };
        counter.fetch_add(1, Relaxed);
        found
    }

    fn lookup(&self, id: &DekId) -> Option<Zeroizing<Vec<u8>>> {
        let mut inner = self.lock();
        let inner = &mut *inner;
        let (slot, len, fresh) = {
            let e = inner.lru.get(id)?;
            (e.slot, e.len, e.expires > Instant::now())
        };
        if !fresh {
            inner.lru.pop(id);
            inner.slab.slot(slot).zeroize();
            inner.slab.free.push(slot);
            return None;
        }
        Some(Zeroizing::new(inner.slab.slot(slot)[..len].to_vec()))
    }

    /// Caches `dek` for `id`, evicting (and wiping) the least recently used key if full.
    pub fn insert(&self, id: DekId, dek: &[u8]) {
        if dek.len() > MAX_LEN {
            return;
        }
        let mut inner = self.lock();
        let inner = &mut *inner;
        if let Some(old) = inner.lru.pop(&id) {
            inner.slab.slot(old.slot).zeroize();
            inner.slab.free.push(old.slot);
        }
        if inner.slab.free.is_empty()
            && let Some((_, evicted)) = inner.lru.pop_lru()
        {
            inner.slab.slot(evicted.slot).zeroize();
            inner.slab.free.push(evicted.slot);
        }
        let Some(slot) = inner.slab.free.pop() else { return };
        inner.slab.slot(slot)[..dek.len()].copy_from_slice(dek);
        inner.lru.put(id, Entry { slot, len: dek.len(), expires: Instant::now() + self.ttl });
    }

    /// Forgets every key of a KEK version (after it is retired or destroyed).
    pub fn forget_version(&self, kek: &str, version: u32) {
        let mut inner = self.lock();
        let inner = &mut *inner;
        let doomed: Vec<DekId> = inner
            .lru
            .iter()
            .filter(|(k, _)| k.kek == kek && k.version == version)
            .map(|(k, _)| k.clone())
            .collect();
        for id in doomed {
            if let Some(e) = inner.lru.pop(&id) {
                inner.slab.slot(e.slot).zeroize();
                inner.slab.free.push(e.slot);
            }
        }
    }

    /// Keys cached now.
    pub fn len(&self) -> usize {
        self.lock().lru.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::hex;

    /// RFC 5869 A.1 (Test Case 1), the Expand half: PRK and info in, OKM out.
    #[test]
    fn rfc_5869_test_case_1_expand() {
        let prk = hex("077709362c2e32df0ddc3f0dc47bba6390b6c73bb50f9c3122ec844ad7c2b3e5");
        let hk = Hkdf::<Sha256>::from_prk(&prk).expect("prk");
        let mut okm = [0u8; 42];
        hk.expand(&hex("f0f1f2f3f4f5f6f7f8f9"), &mut okm).expect("expand");
        assert_eq!(
            okm.to_vec(),
            hex(
                "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
            )
        );
    }

    /// RFC 5869 A.3 (Test Case 3, empty salt and info), the Expand half.
    #[test]
    fn rfc_5869_test_case_3_expand() {
        let prk = hex("19ef24a32c717b167f33a91d6f648bdf96596776afdb6377ac434c1c293ccb04");
        let hk = Hkdf::<Sha256>::from_prk(&prk).expect("prk");
        let mut okm = [0u8; 42];
        hk.expand(&[], &mut okm).expect("expand");
        assert_eq!(
            okm.to_vec(),
            hex(
                "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8"
            )
        );
    }

    #[test]
    fn lengths_give_unrelated_keys_and_are_bounded() {
        let prk = [7u8; 32];
        let a = expand(&prk, 16, Purpose::DataKey).expect("16");
        let b = expand(&prk, 32, Purpose::DataKey).expect("32");
        assert_ne!(a.as_slice(), &b[..16], "a shorter key is not a prefix of a longer one");
        let e = expand(&prk, 32, Purpose::Envelope).expect("envelope");
        assert_ne!(e.as_slice(), b.as_slice(), "envelope keys are not data keys");
        assert_eq!(
            expand(&prk, 32, Purpose::DataKey).expect("again").as_slice(),
            b.as_slice(),
            "deterministic"
        );
        assert!(
            expand(&prk, 15, Purpose::DataKey).is_err()
                && expand(&prk, 65, Purpose::DataKey).is_err()
        );
    }

    fn id(ctx: &str) -> DekId {
        DekId {
            kek: "k".into(),
            version: 1,
            context: ctx.as_bytes().to_vec(),
            len: 32,
            purpose: Purpose::Envelope,
        }
    }

    #[test]
    fn the_cache_is_bounded_expires_and_forgets() {
        let c = DekCache::new(2, Duration::from_secs(60));
        c.insert(id("a"), &[1; 32]);
        c.insert(id("b"), &[2; 32]);
        assert_eq!(c.get(&id("a")).expect("a").as_slice(), &[1; 32]);
        let (hits, misses) = (CACHE_COUNTS.hits(), CACHE_COUNTS.misses());
        c.insert(id("c"), &[3; 32]); // evicts b, the least recently used
        assert!(c.get(&id("b")).is_none());
        assert!(c.get(&id("c")).is_some());
        // Other tests may use caches meanwhile: at least ours were counted.
        assert!(CACHE_COUNTS.hits() > hits && CACHE_COUNTS.misses() > misses);
        assert_eq!(c.len(), 2);
        c.forget_version("k", 1);
        assert!(c.is_empty());

        let short = DekCache::new(4, Duration::from_millis(1));
        short.insert(id("x"), &[9; 16]);
        std::thread::sleep(Duration::from_millis(5));
        assert!(short.get(&id("x")).is_none(), "expired keys are not served");
    }
}
