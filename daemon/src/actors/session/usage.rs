//! The encryption budget of token keys.
//!
//! `Encrypt` uses AES-GCM with a random 96-bit IV per message. NIST SP 800-38D §8.3
//! allows at most 2^32 such encryptions under one key (beyond that the chance of two
//! messages sharing an IV — which breaks GCM — exceeds 2^-32). At tens of thousands of
//! operations a second a hot key gets there in days, so every key's encryptions are
//! counted: past `warn_at` the daemon warns once, and at `limit` it refuses with
//! `invalid_state`, asking for a new key.
//!
//! The count must survive restarts and be shared by every daemon on the token, so it is
//! kept in the token as a reservation: a data object per key label holding how many
//! encryptions have been *reserved*. A daemon reserves a block (compare-and-swap, so two
//! daemons never reserve the same range), spends it in memory, and reserves the next
//! when it runs out. A crash or stop loses at most the unspent rest of one block, which
//! only ever counts as used: the count can run ahead of the truth, never behind it.
//!
//! Keys are counted by label (several keys sharing a label share one count), which again
//! errs towards counting too much.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::backend::{BackendError, BackendResult, BackendSession, SwapOutcome, split_key_ref};

/// Prefix of the data objects holding reservations.
pub const USAGE_PREFIX: &str = "harpocrates-usage/";

/// NIST SP 800-38D §8.3: at most 2^32 random-IV encryptions per key.
pub const NIST_RANDOM_IV_LIMIT: u64 = 1 << 32;

/// Largest block reserved at once: one token write per million encryptions.
const MAX_BLOCK: u64 = 1 << 20;

/// Attempts at reserving a block against other daemons before giving up.
const RESERVE_ATTEMPTS: usize = 8;

/// Encryptions spent and reserved for one label.
#[derive(Debug, Clone, Copy, Default)]
struct Budget {
    used: u64,
    reserved: u64,
    warned: bool,
}

/// Counts encryptions per key label against the limit; shared by every session.
#[derive(Debug)]
pub struct UsageLedger {
    limit: u64,
    warn_at: u64,
    block: u64,
    keys: Mutex<HashMap<String, Budget>>,
    /// One reservation in the token at a time from this daemon: they are rare, and
    /// sessions racing for the same record would only make each other retry.
    reserving: Mutex<()>,
    /// Cleared when the token cannot store data objects: counts are then kept in memory
    /// only (a restart resets them), and the log says so once.
    persist: AtomicBool,
}

impl UsageLedger {
    /// A ledger refusing past `limit` encryptions per key, warning from 15/16 of it.
    pub fn new(limit: u64) -> Self {
        let limit = limit.max(1);
        Self {
            limit,
            warn_at: limit - limit / 16,
            block: (limit / 1024).clamp(1, MAX_BLOCK),
            keys: Mutex::new(HashMap::new()),
            reserving: Mutex::new(()),
            persist: AtomicBool::new(true),
        }
    }

    /// The configured limit.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Takes one encryption from `key`'s budget, reserving more in the token through
    /// `session` when the reserved block is spent. Refuses once the limit is reached.
    pub fn charge(&self, key: &str, session: &mut dyn BackendSession) -> BackendResult<()> {
        let (label, _) = split_key_ref(key);
        if let Some(charged) = self.take_reserved(label) {
            return charged;
        }
        // Out of reserved encryptions (or first use since start): reserve in the token,
        // one session at a time; another may have reserved for this key meanwhile.
        let _one = self.reserving.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(charged) = self.take_reserved(label) {
            return charged;
        }
        let have = self
            .keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(label)
            .map_or(0, |b| b.reserved);
        let reserved_before = self.reserved(label, session, have)?;
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        let b = keys.entry(label.to_owned()).or_default();
        // What was reserved before this daemon's new block counts as used: by this
        // daemon before a restart, or by another daemon.
        b.used = b.used.max(reserved_before.0);
        b.reserved = b.reserved.max(reserved_before.1);
        if b.used >= b.reserved {
            return Err(exhausted(label, self.limit));
        }
        b.used += 1;
        self.check_warn(label, b)
    }

    /// Takes one encryption from what is reserved in memory, if any is left.
    fn take_reserved(&self, label: &str) -> Option<BackendResult<()>> {
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        let b = keys.get_mut(label).filter(|b| b.used < b.reserved)?;
        b.used += 1;
        Some(self.check_warn(label, b))
    }

    fn check_warn(&self, label: &str, b: &mut Budget) -> BackendResult<()> {
        if b.used >= self.warn_at && !b.warned {
            b.warned = true;
            tracing::warn!(
                key = label,
                used = b.used,
                limit = self.limit,
                "this key is near its encryption limit (random 96-bit IVs, NIST SP 800-38D \
                 §8.3); make a new key and move encryption to it"
            );
        }
        Ok(())
    }

    /// Reserves the next block for `label` in the token: `(start, end)` of the block, or
    /// `(limit, limit)` when nothing is left.
    /// A backend without data objects counts in memory only (`have` is what this daemon
    /// reserved so far).
    fn reserved(
        &self,
        label: &str,
        session: &mut dyn BackendSession,
        have: u64,
    ) -> BackendResult<(u64, u64)> {
        let in_memory = || Ok((have, have.saturating_add(self.block).min(self.limit)));
        if !self.persist.load(Ordering::Relaxed) {
            return in_memory();
        }
        let object = format!("{USAGE_PREFIX}{label}");
        let mut pause = Duration::from_millis(2);
        let mut last = None;
        for _ in 0..RESERVE_ATTEMPTS {
            if let Some(e) = last.take() {
                // SoftHSM2 answers CKR_GENERAL_ERROR when another process rewrites its
                // token at that instant; a moment later the same call succeeds.
                tracing::debug!(key = label, error = %e, "reserving encryptions; retrying");
                std::thread::sleep(pause);
                pause *= 2;
            }
            let current = match session.read_object(&object) {
                Err(e @ (BackendError::Unsupported(_) | BackendError::InvalidArgument(_))) => {
                    return self.cannot_persist(&e).and_then(|()| in_memory());
                }
                Err(e) if !e.is_transient() => {
                    last = Some(e);
                    continue;
                }
                other => other?,
            };
            let start = match current.as_deref() {
                None => 0,
                Some(bytes) => decode(bytes).ok_or_else(|| {
                    BackendError::InvalidState(format!(
                        "the usage record of key '{label}' is damaged; refusing to encrypt"
                    ))
                })?,
            };
            if start >= self.limit {
                return Ok((self.limit, self.limit));
            }
            let end = start.saturating_add(self.block).min(self.limit);
            match session.compare_and_swap_object(&object, current.as_deref(), &encode(end)) {
                Ok(SwapOutcome::Swapped) => return Ok((start, end)),
                // Another daemon reserved meanwhile: read its reservation and try again.
                Ok(SwapOutcome::Lost | SwapOutcome::Superseded | SwapOutcome::Undecided) => {}
                // A broken session is the session actor's to repair (and retry).
                Err(e) if e.is_transient() => return Err(e),
                // The token refuses our data objects (opencryptoki's template rules).
                Err(e @ (BackendError::Unsupported(_) | BackendError::InvalidArgument(_))) => {
                    return self.cannot_persist(&e).and_then(|()| in_memory());
                }
                Err(e) => last = Some(e),
            }
        }
        Err(BackendError::Failed(format!(
            "could not reserve encryptions for key '{label}' in the token ({}); retry",
            last.map_or_else(|| "other daemons kept reserving first".to_owned(), |e| e.to_string())
        )))
    }

    /// Switches to counting in memory for a token that cannot keep the records.
    fn cannot_persist(&self, why: &BackendError) -> BackendResult<()> {
        if self.persist.swap(false, Ordering::Relaxed) {
            tracing::warn!(
                error = %why,
                "this token cannot store encryption counts; counting in memory only, so a \
                 restart starts every key's count again"
            );
        }
        Ok(())
    }

    /// Starts a newly made key `label` at zero. A failure is only logged: the old count
    /// then stays, which can only refuse early, never late.
    pub fn reset(&self, label: &str, session: &mut dyn BackendSession) {
        self.keys.lock().unwrap_or_else(|p| p.into_inner()).remove(label);
        let object = format!("{USAGE_PREFIX}{label}");
        match session.read_object(&object) {
            Ok(None) => {}
            Ok(Some(_)) => {
                if let Err(e) = session.write_object(&object, &encode(0)) {
                    tracing::warn!(key = label, error = %e, "could not reset the encryption count of a new key");
                }
            }
            // Backends without data objects keep counts in memory only.
            Err(BackendError::Unsupported(_)) => {}
            Err(e) => {
                tracing::warn!(key = label, error = %e, "could not read the encryption count of a new key")
            }
        }
    }
}

fn exhausted(label: &str, limit: u64) -> BackendError {
    BackendError::InvalidState(format!(
        "key '{label}' has made its {limit} encryptions: more random IVs under one AES-GCM key \
         would risk a repeat (NIST SP 800-38D §8.3); make a new key for new data (this one \
         still decrypts)"
    ))
}

fn encode(n: u64) -> [u8; 8] {
    n.to_be_bytes()
}

fn decode(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Backend;
    use crate::backend::soft::store::KdfParams;
    use crate::backend::soft::{SoftConfig, SoftToken};

    fn token(dir: &std::path::Path) -> std::sync::Arc<SoftToken> {
        SoftToken::open(
            &SoftConfig {
                state_dir: dir.to_owned(),
                kdf: KdfParams { memory_kib: 256, iterations: 1, parallelism: 1 },
            },
            &zeroize::Zeroizing::new("pin".into()),
        )
        .expect("token")
    }

    #[test]
    fn refuses_at_the_limit_and_the_count_survives_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let t = token(dir.path());
        let mut s = t.open_session().expect("session");
        let ledger = UsageLedger::new(10);
        for _ in 0..4 {
            ledger.charge("k", s.as_mut()).expect("within budget");
        }
        // The same label with an id shares the count.
        ledger.charge("k?id=0a", s.as_mut()).expect("within budget");

        // A restart (a new ledger on the same token) starts from what was reserved.
        let restarted = UsageLedger::new(10);
        let mut allowed = 0;
        while restarted.charge("k", s.as_mut()).is_ok() {
            allowed += 1;
            assert!(allowed <= 10, "never past the limit");
        }
        assert_eq!(allowed, 5, "the 5 used before the restart still count");
        let err = restarted.charge("k", s.as_mut()).unwrap_err();
        assert!(matches!(err, BackendError::InvalidState(ref m) if m.contains("10 encryptions")));
        // Another key has its own budget.
        restarted.charge("other", s.as_mut()).expect("own budget");
    }

    #[test]
    fn two_ledgers_on_one_token_never_exceed_the_limit_together() {
        let dir = tempfile::tempdir().expect("tempdir");
        let t = token(dir.path());
        let (mut a, mut b) = (t.open_session().expect("a"), t.open_session().expect("b"));
        let (la, lb) = (UsageLedger::new(3000), UsageLedger::new(3000));
        let mut total = 0;
        loop {
            let ok_a = la.charge("k", a.as_mut()).is_ok();
            let ok_b = lb.charge("k", b.as_mut()).is_ok();
            total += usize::from(ok_a) + usize::from(ok_b);
            if !ok_a && !ok_b {
                break;
            }
        }
        assert!(total <= 3000, "{total}");
        assert!(total >= 3000 - 2 * 3, "at most one small block each is lost ({total})");
    }

    #[test]
    fn a_damaged_record_refuses_rather_than_restart_from_zero() {
        let dir = tempfile::tempdir().expect("tempdir");
        let t = token(dir.path());
        let mut s = t.open_session().expect("session");
        s.write_object(&format!("{USAGE_PREFIX}k"), b"junk").expect("write");
        let err = UsageLedger::new(10).charge("k", s.as_mut()).unwrap_err();
        assert!(matches!(err, BackendError::InvalidState(ref m) if m.contains("damaged")));
    }
}
