//! Backend generations: a token with its session pool, key manager and rotation
//! coordinator, as one unit that a reload can replace while the daemon serves.
//!
//! Every request takes the generation in force when it starts ([`Current::load`]) and
//! holds it until it is answered, so a swap never moves a request from one token to
//! another halfway. After a swap the old generation is [retired](retire): once the last
//! request holding it has been answered, its pool stops, its sessions close, and then its
//! backend is finalised (unless the new generation kept the same backend).

use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use std::time::{Duration, Instant};

use actix::{Actor, Addr};
use arc_swap::ArcSwap;

use crate::actors::rotation::actor::RotationCoordinator;
use crate::actors::session::pool::{PoolStopped, SessionPool};
use crate::actors::session::usage::UsageLedger;
use crate::actors::session::{GenerationStamp, PoolShared, RetryPolicy};
use crate::backend::Backend;
use crate::config::Settings;
use crate::keys::manager::{KeyManager, KeyManagerSettings};
use crate::metrics::Metrics;

/// The settings a generation is built from: a reload that changes any of them builds a
/// new generation, even over the same backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSettings {
    /// Session actors.
    pub max_sessions: u32,
    /// Work queued for sessions before `Busy`.
    pub queue_depth: usize,
    /// Broken-session retry budget.
    pub retry: RetryPolicy,
    /// Idle session lifetime.
    pub session_timeout: Duration,
    /// Encryptions allowed per token key.
    pub max_encryptions_per_key: u64,
    /// Key-manager caches and refresh.
    pub keys: KeyManagerSettings,
}

impl PoolSettings {
    /// The pool settings within `settings`.
    pub fn of(settings: &Settings) -> Self {
        Self {
            max_sessions: settings.max_sessions,
            queue_depth: settings.queue_depth,
            retry: settings.retry,
            session_timeout: settings.session_timeout,
            max_encryptions_per_key: settings.max_encryptions_per_key,
            keys: settings.keys,
        }
    }
}

/// One backend and what serves requests on it.
pub struct Generation {
    /// Its number and when it took over.
    pub stamp: GenerationStamp,
    /// Its session pool.
    pub pool: SessionPool,
    /// Its key manager (KEK state and data-key caches are per token).
    pub keys: Arc<KeyManager>,
    /// Its rotation coordinator.
    pub coordinator: Addr<RotationCoordinator>,
}

impl Generation {
    /// Starts the pool, key manager and coordinator of a generation on `backend` (already
    /// logged in). Must run inside an actix `System`.
    pub fn start(
        stamp: GenerationStamp,
        backend: Arc<dyn Backend>,
        settings: &PoolSettings,
        daemon_started: Instant,
        metrics: Arc<Metrics>,
    ) -> (Arc<Self>, PoolStopped) {
        let shared = Arc::new(PoolShared {
            backend,
            max_sessions: settings.max_sessions,
            active: AtomicU32::new(0),
            retry: settings.retry,
            session_timeout: settings.session_timeout,
            usage: UsageLedger::new(settings.max_encryptions_per_key),
            started: daemon_started,
            generation: stamp,
        });
        let (pool, stopped) = SessionPool::start(shared, settings.queue_depth, metrics);
        let keys = Arc::new(KeyManager::new(pool.clone(), settings.keys));
        let coordinator = RotationCoordinator::new(keys.clone()).start();
        (Arc::new(Self { stamp, pool, keys, coordinator }), stopped)
    }

    /// Its backend.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.pool.shared().backend
    }
}

/// The generation in force. Reading it is a few atomic operations; replacing it does not
/// wait for readers.
pub struct Current(ArcSwap<Generation>);

impl Current {
    /// `first` in force.
    pub fn new(first: Arc<Generation>) -> Self {
        Self(ArcSwap::new(first))
    }

    /// The generation in force now; the caller keeps it alive while it holds it.
    pub fn load(&self) -> Arc<Generation> {
        self.0.load_full()
    }

    /// Puts `next` in force and returns the one it replaces.
    pub fn replace(&self, next: Arc<Generation>) -> Arc<Generation> {
        self.0.swap(next)
    }
}

/// How often a retiring generation is checked for requests still holding it.
const DRAIN_POLL: Duration = Duration::from_millis(20);

/// Waits until `shared` has no other owner, or until `deadline`; says whether it has none.
async fn sole_owner<T: ?Sized>(shared: &Arc<T>, deadline: tokio::time::Instant) -> bool {
    while Arc::strong_count(shared) > 1 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(DRAIN_POLL).await;
    }
    Arc::strong_count(shared) == 1
}

/// Retires `old`: waits (at most `grace`) for the requests still holding it to be
/// answered, stops its pool, waits (at most `grace` again) for its sessions to close,
/// then finalises its backend when `finalize`.
pub async fn retire(old: Arc<Generation>, stopped: PoolStopped, grace: Duration, finalize: bool) {
    let number = old.stamp.number;
    // Only requests hold a generation besides this task; nothing new can take it.
    if !sole_owner(&old, tokio::time::Instant::now() + grace).await {
        tracing::warn!(
            generation = number,
            holding = Arc::strong_count(&old) - 1,
            "retiring generation: requests still hold it after the grace period; stopping its pool anyway"
        );
    }
    old.pool.stop();
    let backend = old.backend().clone();
    drop(old);
    if tokio::time::timeout(grace, stopped.wait()).await.is_err() {
        // Its sessions are still inside the token: finalising now could crash the module.
        tracing::warn!(
            generation = number,
            "a retired session actor is still inside the token; its backend is left open"
        );
        return;
    }
    if finalize {
        // The key manager and the coordinator hold the backend too; they go with the
        // generation's actors. Wait for them, so that whatever the backend holds (the
        // soft token's lock on its directory) is released when this returns.
        sole_owner(&backend, tokio::time::Instant::now() + grace).await;
        let _ = tokio::task::spawn_blocking(move || backend.finalize()).await;
    }
    tracing::info!(generation = number, "retired backend generation closed");
}
