//! The reload task: one reload at a time, for SIGHUP and `Reload` requests alike, on the
//! actix `System` thread (where a new generation's actors must start).

use std::sync::Arc;
use std::time::Duration;

use harpocrates_protocol::{ErrorCode, ReloadReport, WireError};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Plan;
use crate::actors::session::pool::PoolStopped;
use crate::backend::Backend;
use crate::config::{Args, ConfigError, Settings};
use crate::metrics::Metrics;
use crate::server::generation::{self, Current, Generation, PoolSettings};
use crate::server::live::{ConnectionLimits, Live};
use crate::systemd::notify::{Notifier, NotifyState};

/// Why a reload was refused; the configuration in force stays.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// Nothing to re-read.
    #[error("the daemon was started without a configuration file; there is nothing to reload")]
    NoConfiguration,
    /// The new configuration does not validate.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The new backend could not be opened or logged in to.
    #[error("the new backend cannot be used: {0}")]
    Backend(String),
}

impl From<&ReloadError> for WireError {
    fn from(e: &ReloadError) -> Self {
        let code = match e {
            ReloadError::NoConfiguration => ErrorCode::Unsupported,
            ReloadError::Config(_) => ErrorCode::InvalidRequest,
            ReloadError::Backend(_) => ErrorCode::OperationFailed,
        };
        WireError::new(code, format!("reload refused: {e}; the running configuration stays"))
    }
}

type Reply = oneshot::Sender<Result<ReloadReport, WireError>>;

/// Asks the reload task for a reload; cheap to clone.
#[derive(Clone)]
pub struct ReloadHandle(mpsc::Sender<Option<Reply>>);

impl ReloadHandle {
    /// Reloads and waits for the outcome.
    pub async fn reload(&self) -> Result<ReloadReport, WireError> {
        let (tx, rx) = oneshot::channel();
        let stopped = || WireError::new(ErrorCode::Unavailable, "the daemon is stopping");
        self.0.send(Some(tx)).await.map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    /// Asks for a reload without waiting (SIGHUP). Signals that arrive while one is
    /// queued fold into it.
    pub fn request(&self) {
        let _ = self.0.try_send(None);
    }
}

/// The state a reload works on.
pub struct Reloader {
    /// How the daemon was started (`None`: no configuration file to re-read).
    args: Option<Args>,
    /// The settings in force.
    settings: Settings,
    /// The generation in force.
    current: Arc<Current>,
    /// Tells when the current generation's sessions have closed.
    stopped: PoolStopped,
    /// Connection limits in force.
    live: Arc<Live>,
    metrics: Arc<Metrics>,
    notifier: Notifier,
    /// I/O threads (for the connection limit the descriptors allow).
    io_threads: usize,
    retiring: TaskTracker,
}

impl Reloader {
    /// A reloader over the first generation.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        args: Option<Args>,
        settings: Settings,
        current: Arc<Current>,
        stopped: PoolStopped,
        live: Arc<Live>,
        metrics: Arc<Metrics>,
        notifier: Notifier,
        io_threads: usize,
    ) -> Self {
        Self {
            args,
            settings,
            current,
            stopped,
            live,
            metrics,
            notifier,
            io_threads,
            retiring: TaskTracker::new(),
        }
    }

    /// The grace period for requests in flight at shutdown, as configured now.
    pub fn shutdown_timeout(&self) -> Duration {
        self.settings.shutdown_timeout
    }

    /// Serves reload requests from `rx` until `shutdown`, then returns itself.
    pub async fn run(
        mut self,
        mut rx: mpsc::Receiver<Option<Reply>>,
        shutdown: CancellationToken,
    ) -> Self {
        loop {
            let reply = tokio::select! {
                r = rx.recv() => match r { Some(reply) => reply, None => break },
                () = shutdown.cancelled() => break,
            };
            let monotonic = NotifyState::monotonic_usec_now();
            let mut states = vec![NotifyState::Reloading];
            states.extend(monotonic.ok());
            self.notifier.tell(&states);
            let outcome = self.reload().await;
            match &outcome {
                Ok(report) => tracing::info!(
                    generation = report.generation,
                    swapped = report.swapped,
                    applied = ?report.applied,
                    need_restart = ?report.need_restart,
                    "configuration reloaded"
                ),
                Err(e) => {
                    tracing::error!(error = %e, "reload refused; the running configuration stays")
                }
            }
            self.metrics.reloaded(outcome.is_ok());
            self.notifier.tell(&[NotifyState::Ready]);
            if let Some(reply) = reply {
                let _ = reply.send(outcome.map_err(|e| WireError::from(&e)));
            }
        }
        self
    }

    async fn reload(&mut self) -> Result<ReloadReport, ReloadError> {
        let args = self.args.clone().ok_or(ReloadError::NoConfiguration)?;
        let next = Settings::from_args(&args)?;
        crate::logging::check_level(&next.log_level)
            .map_err(|reason| ConfigError::Invalid { field: "log_level", reason })?;
        let plan = Plan::between(&self.settings, &next);
        let before = self.current.load();
        let backend = if plan.new_backend {
            // A generation still retiring may hold what the new backend needs (going back
            // to a soft token it still has locked): let it finish first.
            self.retiring.close();
            let grace = self.settings.shutdown_timeout;
            if tokio::time::timeout(grace, self.retiring.wait()).await.is_err() {
                tracing::warn!("a retiring backend generation is still open");
            }
            self.retiring.reopen();
            let opening = next.clone();
            tokio::task::spawn_blocking(move || crate::startup::open_backend(&opening))
                .await
                .map_err(|e| ReloadError::Backend(e.to_string()))?
                .map_err(|e| ReloadError::Backend(e.to_string()))?
        } else {
            before.backend().clone()
        };
        // From here on nothing can fail: the new configuration is applied whole.
        let mut generation = before.stamp.number;
        if plan.new_generation {
            generation = self.swap(before, backend, &next, plan.new_backend);
        }
        let limits = ConnectionLimits::of(&next);
        let max_connections = crate::server::fd_limit::effective_max_connections(
            next.max_connections,
            next.max_sessions,
            self.io_threads,
        );
        self.live.set(limits, max_connections);
        if let Err(e) = crate::logging::set_level(&next.log_level) {
            tracing::warn!(error = %e, "log level not changed");
        }
        self.settings.policy.put(next.policy.current());
        let policy = self.settings.policy.clone();
        self.settings = Settings { policy, ..next };
        Ok(ReloadReport {
            generation,
            swapped: plan.new_generation,
            applied: plan.applied.iter().map(|s| (*s).to_owned()).collect(),
            need_restart: plan.need_restart.iter().map(|s| (*s).to_owned()).collect(),
        })
    }

    /// Starts the next generation on `backend`, puts it in force and retires `before`.
    fn swap(
        &mut self,
        before: Arc<Generation>,
        backend: Arc<dyn Backend>,
        next: &Settings,
        new_backend: bool,
    ) -> u64 {
        let stamp = before.stamp.next();
        let token = backend.token_info().label;
        // Health reports uptime from the daemon's start, which every generation carries on.
        let daemon_started = before.pool.shared().started;
        let (generation, stopped) = Generation::start(
            stamp,
            backend,
            &PoolSettings::of(next),
            daemon_started,
            self.metrics.clone(),
        );
        let old = self.current.replace(generation);
        drop(before);
        let old_stopped = std::mem::replace(&mut self.stopped, stopped);
        self.metrics.backend_swapped(stamp.number);
        tracing::info!(
            generation = stamp.number,
            backend = next.backend.name(),
            token = %token,
            new_backend,
            "backend generation swapped in; requests in flight finish on the old one"
        );
        let grace = next.shutdown_timeout.max(Duration::from_secs(1));
        self.retiring.spawn_local(generation::retire(old, old_stopped, grace, new_backend));
        stamp.number
    }

    /// At shutdown, once no request can arrive: stops the generation in force, waits
    /// (at most the shutdown timeout each) for its sessions and for retiring generations
    /// to close, and returns the backend in force for the caller to finalise.
    pub async fn finish(self) -> Arc<dyn Backend> {
        let grace = self.settings.shutdown_timeout;
        let current = self.current.load();
        let backend = current.backend().clone();
        current.pool.stop();
        drop(current);
        if tokio::time::timeout(grace, self.stopped.wait()).await.is_err() {
            tracing::warn!("shutdown timeout; a session actor is still inside the token");
        } else {
            tracing::info!("session actors stopped and their sessions closed");
        }
        self.retiring.close();
        if tokio::time::timeout(grace, self.retiring.wait()).await.is_err() {
            tracing::warn!("shutdown timeout; a retiring backend generation is still open");
        }
        backend
    }
}

/// A reload task and the handle that asks it.
pub fn channel() -> (ReloadHandle, mpsc::Receiver<Option<Reply>>) {
    let (tx, rx) = mpsc::channel(1);
    (ReloadHandle(tx), rx)
}
