//! Session actors: each owns one backend session and runs HSM operations on it.
//!
//! This module holds the logic — turning a [`Request`] into backend calls, reopening a
//! broken session and retrying within the budget, recycling idle sessions — in
//! [`SessionWorker`], which knows nothing of actix. [`actor`] wraps it in a `SyncArbiter`
//! actor and [`pool`] feeds the actors batches from one bounded queue.

pub mod actor;
pub mod pool;
pub mod usage;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use harpocrates_protocol::{
    ErrorCode, HealthState, HealthStatus, KeyAttributes, KeyInfo, Request, Response, WireError,
    WireResult,
};

use crate::backend::{Backend, BackendError, BackendResult, BackendSession};

/// How hard to try when a session breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub attempts: u32,
    /// Pause before each retry.
    pub delay: Duration,
}

/// State shared by the pool and all its workers.
pub struct PoolShared {
    /// The token.
    pub backend: Arc<dyn Backend>,
    /// Configured pool size.
    pub max_sessions: u32,
    /// Sessions open right now.
    pub active: AtomicU32,
    /// Retry budget for broken sessions.
    pub retry: RetryPolicy,
    /// Sessions idle longer than this are reopened before use.
    pub session_timeout: Duration,
    /// When the daemon started, for health reports.
    pub started: Instant,
    /// Encryptions per key, against the random-IV limit.
    pub usage: usage::UsageLedger,
    /// Which backend generation this pool serves, for health reports.
    pub generation: GenerationStamp,
}

/// A backend generation's number and when it took over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GenerationStamp {
    /// 1 at start, one more per hot swap.
    pub number: u64,
    /// When it took over.
    pub since: std::time::SystemTime,
}

impl GenerationStamp {
    /// The first generation, taking over now.
    pub fn first() -> Self {
        Self { number: 1, since: std::time::SystemTime::now() }
    }

    /// The generation after this one, taking over now.
    pub fn next(self) -> Self {
        Self { number: self.number + 1, since: std::time::SystemTime::now() }
    }

    /// `since` in seconds after the Unix epoch.
    pub fn since_unix(self) -> u64 {
        self.since.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
    }
}

/// An open session, counted in [`PoolShared::active`] while it lives.
struct OpenSession {
    session: Box<dyn BackendSession>,
    last_used: Instant,
    shared: Arc<PoolShared>,
}

impl Drop for OpenSession {
    fn drop(&mut self) {
        self.shared.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The logic of one session actor.
pub struct SessionWorker {
    shared: Arc<PoolShared>,
    session: Option<OpenSession>,
}

impl SessionWorker {
    /// A worker that opens its session on first use.
    pub fn new(shared: Arc<PoolShared>) -> Self {
        Self { shared, session: None }
    }

    /// Drops the session, so the next operation opens a fresh one.
    pub fn reset(&mut self) {
        self.session = None;
    }

    /// Whether a session is open.
    pub fn has_session(&self) -> bool {
        self.session.is_some()
    }

    /// Runs one operation, answering it whatever happens.
    pub fn execute(&mut self, request: &Request) -> WireResult {
        self.run(request).map_err(WireError::from)
    }

    fn run(&mut self, request: &Request) -> BackendResult<Response> {
        Ok(match request {
            Request::GenerateRandom { len } => {
                Response::Random(self.with_session(|s| s.generate_random(*len as usize))?)
            }
            Request::GenerateKey { label, size_bits } => Response::KeyGenerated(
                self.new_key(label, |s| s.generate_key(label, &KeyAttributes::aes(*size_bits)))?,
            ),
            Request::GenerateKeyWithAttributes { label, attributes } => {
                Response::KeyGenerated(self.new_key(label, |s| s.generate_key(label, attributes))?)
            }
            Request::ListKeys => Response::Keys(
                // The key manager's own keys (KEK versions) are not the caller's to see.
                self.with_session(|s| s.list_keys())?
                    .into_iter()
                    .filter(|k| !k.handle.as_str().starts_with(crate::keys::kek::INTERNAL_PREFIX))
                    .collect(),
            ),
            Request::Encrypt { key, plaintext, aad } => {
                let aad = aad.as_deref().unwrap_or_default();
                let shared = self.shared.clone();
                Response::Ciphertext(self.with_session(|s| {
                    // Names of keys that do not exist must cost nothing: no count, and no
                    // record in the token for a caller to pile up.
                    if !s.has_key(key.as_str())? {
                        return Err(BackendError::KeyNotFound(key.as_str().into()));
                    }
                    shared.usage.charge(key.as_str(), s)?;
                    s.encrypt(key.as_str(), plaintext.expose(), aad)
                })?)
            }
            Request::Decrypt { key, ciphertext, aad } => {
                let aad = aad.as_deref().unwrap_or_default();
                Response::Plaintext(
                    self.with_session(|s| s.decrypt(key.as_str(), ciphertext, aad))?,
                )
            }
            Request::DestroyKey { key } => {
                self.with_session(|s| s.destroy_key(key.as_str()))?;
                Response::KeyDestroyed
            }
            Request::BackupKey { key, password } => Response::KeyBackup(
                self.with_session(|s| s.backup_key(key.as_str(), password.expose()))?,
            ),
            Request::RestoreKey { label, backup, password } => Response::KeyGenerated(
                self.new_key(label, |s| s.restore_key(label, backup, password.expose()))?,
            ),
            Request::HealthCheck => Response::Health(self.health()),
            other => {
                return Err(BackendError::InvalidArgument(format!(
                    "'{}' is not a session operation",
                    other.op_name()
                )));
            }
        })
    }

    /// Makes a key with `make`; a new key starts with its whole encryption budget (a
    /// count left by a destroyed key of the same label is reset).
    fn new_key(
        &mut self,
        label: &str,
        mut make: impl FnMut(&mut dyn BackendSession) -> BackendResult<KeyInfo>,
    ) -> BackendResult<KeyInfo> {
        let shared = self.shared.clone();
        self.with_session(|s| {
            let info = make(s)?;
            shared.usage.reset(label, s);
            Ok(info)
        })
    }

    /// Probes the token; never fails, reports what it found.
    fn health(&mut self) -> HealthStatus {
        let keys = self
            .with_session(|s| {
                s.probe()?;
                s.list_keys()
            })
            .map(|keys| {
                keys.into_iter()
                    .filter(|k| !k.handle.as_str().starts_with(crate::keys::kek::INTERNAL_PREFIX))
                    .collect::<Vec<_>>()
            });
        let shared = &self.shared;
        let active = shared.active.load(Ordering::Relaxed);
        let state = if keys.is_ok() { HealthState::Healthy } else { HealthState::Unhealthy };
        HealthStatus {
            state,
            backend: shared.backend.name().to_owned(),
            token: shared.backend.token_info(),
            token_reachable: keys.is_ok(),
            active_sessions: active,
            max_sessions: shared.max_sessions,
            key_count: keys.map_or(0, |k| k.len() as u64),
            uptime_secs: shared.started.elapsed().as_secs(),
            generation: shared.generation.number,
            generation_since: shared.generation.since_unix(),
        }
    }

    /// Runs `op` on an open session, reopening and retrying on transient errors until
    /// the budget is spent.
    pub fn with_session<T>(
        &mut self,
        mut op: impl FnMut(&mut dyn BackendSession) -> BackendResult<T>,
    ) -> BackendResult<T> {
        let retry = self.shared.retry;
        let mut attempt = 0;
        loop {
            let result = self.session().and_then(|s| {
                let r = op(s.session.as_mut());
                s.last_used = Instant::now();
                r
            });
            match result {
                Err(e) if e.is_transient() => {
                    self.reset();
                    if attempt >= retry.attempts {
                        return Err(BackendError::RetriesExhausted {
                            attempts: attempt + 1,
                            last: e.to_string(),
                        });
                    }
                    attempt += 1;
                    tracing::warn!(error = %e, attempt, "session broken; reopening");
                    std::thread::sleep(retry.delay);
                }
                other => return other,
            }
        }
    }

    fn session(&mut self) -> BackendResult<&mut OpenSession> {
        let timeout = self.shared.session_timeout;
        if self.session.as_ref().is_some_and(|s| s.last_used.elapsed() > timeout) {
            tracing::debug!("recycling idle session");
            self.reset();
        }
        if self.session.is_none() {
            let session = self.shared.backend.open_session()?;
            self.shared.active.fetch_add(1, Ordering::Relaxed);
            self.session = Some(OpenSession {
                session,
                last_used: Instant::now(),
                shared: self.shared.clone(),
            });
        }
        self.session.as_mut().ok_or_else(|| BackendError::Failed("no session".into()))
    }
}

/// The answer given for an operation whose handler panicked.
pub fn panicked(request: &Request) -> WireResult {
    Err(WireError::new(
        ErrorCode::OperationFailed,
        format!("internal error in '{}'; the session was reset", request.op_name()),
    ))
}

#[cfg(test)]
mod tests;
