//! The server: listener, connections, routing, and the daemon's life cycle.
//!
//! [`serve`] runs inside an actix `System` (a single-threaded tokio runtime): it binds the
//! socket, starts the session pool and the connection [I/O threads](io_threads), accepts
//! connections and deals them out to those threads until told to stop, then drains
//! in-flight requests, stops the I/O threads and removes the socket. [`run`] adds signal
//! handling for the binary; [`spawn`] runs a daemon on a background thread for tests and
//! benchmarks.

pub mod admission;
pub mod budget;
pub mod completion;
pub mod connection;
pub mod context;
pub mod dispatch;
pub mod fd_limit;
pub mod frame_reader;
pub mod io_threads;
pub mod listener;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use std::time::{Duration, Instant};

use harpocrates_protocol::{ErrorCode, MessageCodec, RequestFrame, ResponseFrame, WireError};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use actix::Actor;

use crate::actors::audit::actor::Auditor;
use crate::actors::rotation::actor::RotationCoordinator;
use crate::actors::session::PoolShared;
use crate::actors::session::pool::SessionPool;
use crate::actors::session::usage::UsageLedger;
use crate::backend::Backend;
use crate::config::Settings;
use crate::keys::manager::KeyManager;
use crate::metrics::Metrics;
pub use listener::ListenError;

/// Runs the daemon until `shutdown` is cancelled. `ready` receives the socket path once
/// the daemon accepts connections (or the reason it cannot).
pub async fn serve(
    settings: Settings,
    backend: Arc<dyn Backend>,
    shutdown: CancellationToken,
    ready: oneshot::Sender<Result<PathBuf, ListenError>>,
) {
    let bound = match listener::bind(&settings.socket_path, settings.socket_mode) {
        Ok(b) => b,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let mut threads = match io_threads::IoThreads::start(settings.io_threads) {
        Ok(threads) => threads,
        Err(source) => {
            let _ = ready.send(Err(ListenError::Io { path: bound.path().to_owned(), source }));
            return;
        }
    };
    let metrics = Arc::new(Metrics::new());
    let audit = match Auditor::start(settings.audit.clone(), metrics.clone()) {
        Ok(audit) => audit,
        Err(e) => {
            threads.stop_and_join();
            let _ = ready.send(Err(ListenError::Audit(e.to_string())));
            return;
        }
    };
    tracing::info!(
        rules = settings.policy.current().rule_count(),
        audit_file = ?settings.audit.file,
        "access policy and audit in force"
    );
    let shared = Arc::new(PoolShared {
        backend,
        max_sessions: settings.max_sessions,
        active: AtomicU32::new(0),
        retry: settings.retry,
        session_timeout: settings.session_timeout,
        usage: UsageLedger::new(settings.max_encryptions_per_key),
        started: Instant::now(),
    });
    let (pool, pool_stopped) = SessionPool::start(shared, settings.queue_depth, metrics.clone());
    let keys = Arc::new(KeyManager::new(pool.clone(), settings.keys));
    let coordinator = RotationCoordinator::new(keys.clone()).start();
    let parts = io_threads::ConnectionParts {
        router: dispatch::Router::new(
            pool.clone(),
            metrics.clone(),
            keys,
            coordinator,
            audit.clone(),
            settings.policy.clone(),
        ),
        limits: connection::ConnectionLimits {
            max_frame: settings.max_frame,
            max_in_flight: settings.max_in_flight,
            max_connection_bytes: settings.max_connection_bytes,
            frame_timeout: settings.frame_timeout,
            idle_timeout: settings.idle_timeout,
        },
        total: budget::TotalBudget::new(settings.max_total_bytes),
        shutdown: shutdown.clone(),
    };
    threads.serve(&parts);
    drop(parts);
    let max_connections = fd_limit::effective_max_connections(
        settings.max_connections,
        settings.max_sessions,
        threads.len(),
    );

    let sampler = {
        let metrics = metrics.clone();
        actix::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                metrics.sample();
            }
        })
    };

    let _ = ready.send(Ok(bound.path().to_owned()));
    let connections = TaskTracker::new();
    let mut spare = fd_limit::Spare::open();
    let mut accept_warning = fd_limit::RateLimitedWarning::new(Duration::from_secs(10));
    loop {
        let accepted = tokio::select! {
            a = bound.listener.accept() => a,
            () = shutdown.cancelled() => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) if fd_limit::is_fd_exhaustion(&e) && spare.release() => {
                // Out of descriptors: use the spare to take the newcomer and tell it Busy,
                // rather than leave it hanging in the backlog.
                if let Ok((stream, _)) = bound.listener.accept().await {
                    connections.spawn_local(refuse_busy(stream, settings.max_frame));
                }
                spare.restore();
                if let Some(held_back) = accept_warning.tick(Instant::now()) {
                    tracing::warn!(error = %e, held_back, "out of file descriptors; refusing connections with Busy");
                }
                continue;
            }
            Err(e) => {
                if let Some(held_back) = accept_warning.tick(Instant::now()) {
                    tracing::warn!(error = %e, held_back, "accept failed");
                }
                // Back off instead of spinning.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if connections.len() >= max_connections {
            connections.spawn_local(refuse_busy(stream, settings.max_frame));
            continue;
        }
        // Counted here, before the hand-off, so the limit holds across threads.
        threads.hand_off(stream, connections.token());
    }

    tracing::info!("shutting down: no new connections, finishing in-flight requests");
    drop(bound);
    connections.close();
    if tokio::time::timeout(settings.shutdown_timeout, connections.wait()).await.is_err() {
        tracing::warn!(
            remaining = connections.len(),
            "shutdown timeout; dropping connections with requests still in flight"
        );
    }
    // The I/O threads go first: whatever still runs there (past the grace period) is
    // dropped, so no client request can reach the pool once it is told to stop.
    threads.stop_and_join();
    sampler.abort();
    // Sessions are closed before the module is finalised, and both before the process
    // exits: a session thread still inside the module while exit handlers run the
    // module's destructors is how a SoftHSM2 daemon crashed on SIGTERM.
    pool.stop();
    drop(pool);
    if tokio::time::timeout(settings.shutdown_timeout, pool_stopped.wait()).await.is_err() {
        tracing::warn!("shutdown timeout; a session actor is still inside the token");
    } else {
        tracing::info!("session actors stopped and their sessions closed");
    }
    // Last: every request that could add a record has finished.
    audit.close().await;
}

/// Tells a client over the connection limit why it is being turned away.
async fn refuse_busy(stream: tokio::net::UnixStream, max_frame: u32) {
    use futures::SinkExt;
    let mut sink = tokio_util::codec::FramedWrite::new(
        stream,
        MessageCodec::<RequestFrame, ResponseFrame>::new(max_frame),
    );
    let err = WireError::new(ErrorCode::Busy, "too many connections; retry later");
    // A peer that never reads cannot keep the descriptor.
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        sink.send(ResponseFrame { id: 0, result: Err(err) }),
    )
    .await;
}

/// Runs the daemon in this thread until SIGTERM or SIGINT. Prints nothing; the caller
/// learns the socket path through `on_ready`.
pub fn run(
    settings: Settings,
    backend: Arc<dyn Backend>,
    on_ready: impl FnOnce(&std::path::Path) + 'static,
) -> Result<(), ListenError> {
    let token = backend.clone();
    let reload = Reload {
        path: settings.config_path.clone(),
        dev: settings.dev,
        policy: settings.policy.clone(),
    };
    let system = actix::System::new();
    let result = system.block_on(async move {
        // Handlers first: a SIGTERM sent right after READY=1 (systemd may) must find them
        // installed, or the default action kills the daemon without a graceful stop.
        let signals = Signals::install();
        let shutdown = CancellationToken::new();
        let (ready_tx, ready_rx) = oneshot::channel();
        let server = actix::spawn(serve(settings, backend, shutdown.clone(), ready_tx));
        match ready_rx.await {
            Ok(Ok(path)) => on_ready(&path),
            Ok(Err(e)) => return Err(e),
            Err(_) => return Ok(()),
        }
        signals.wait(&reload).await;
        shutdown.cancel();
        let _ = server.await;
        Ok(())
    });
    actix::System::current().stop();
    drop(system);
    // `serve` has closed every session; only now may the module be finalised. (Not in
    // `spawn`: daemons embedded in one process may share a module.)
    token.finalize();
    result
}

/// What SIGHUP reloads (today: the access policy).
struct Reload {
    path: Option<PathBuf>,
    dev: bool,
    policy: Arc<crate::policy::PolicyStore>,
}

impl Reload {
    fn run(&self) {
        let Some(path) = &self.path else {
            tracing::info!("SIGHUP: no configuration file to reload");
            return;
        };
        match crate::config::audit::reload_policy(path, self.dev, &self.policy) {
            Ok(rules) => {
                tracing::info!(rules, file = %path.display(), "SIGHUP: access policy reloaded")
            }
            Err(e) => {
                tracing::error!(error = %e, "SIGHUP: the new policy is refused; the old one stays in force")
            }
        }
    }
}

type SignalStreams =
    (tokio::signal::unix::Signal, tokio::signal::unix::Signal, tokio::signal::unix::Signal);

/// SIGTERM, SIGINT and SIGHUP, caught from the moment they are installed.
struct Signals(Option<SignalStreams>);

impl Signals {
    fn install() -> Self {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::hangup()),
        ) {
            (Ok(term), Ok(int), Ok(hup)) => Self(Some((term, int, hup))),
            _ => {
                tracing::error!("cannot install signal handlers; stop the daemon with SIGKILL");
                Self(None)
            }
        }
    }

    /// Returns on SIGTERM or SIGINT; reloads on every SIGHUP until then.
    async fn wait(self, reload: &Reload) {
        let Some((mut term, mut int, mut hup)) = self.0 else {
            return std::future::pending().await;
        };
        loop {
            tokio::select! {
                _ = term.recv() => return tracing::info!("SIGTERM received"),
                _ = int.recv() => return tracing::info!("SIGINT received"),
                _ = hup.recv() => reload.run(),
            }
        }
    }
}

/// A daemon running on a background thread (tests, benchmarks, embedding).
pub struct RunningDaemon {
    socket_path: PathBuf,
    shutdown: CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RunningDaemon {
    /// Where it listens.
    pub fn socket_path(&self) -> &std::path::Path {
        &self.socket_path
    }

    /// Stops it gracefully and waits for its thread.
    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        self.shutdown.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for RunningDaemon {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

/// Starts a daemon on its own thread and returns once it accepts connections.
pub fn spawn(settings: Settings, backend: Arc<dyn Backend>) -> Result<RunningDaemon, ListenError> {
    let shutdown = CancellationToken::new();
    let (ready_tx, ready_rx) = oneshot::channel();
    let token = shutdown.clone();
    let thread = std::thread::Builder::new()
        .name("harpocratesd".into())
        .spawn(move || {
            let system = actix::System::new();
            system.block_on(serve(settings, backend, token, ready_tx));
            actix::System::current().stop();
        })
        .map_err(|source| ListenError::Io { path: PathBuf::new(), source })?;
    match ready_rx.blocking_recv() {
        Ok(Ok(socket_path)) => Ok(RunningDaemon { socket_path, shutdown, thread: Some(thread) }),
        Ok(Err(e)) => {
            let _ = thread.join();
            Err(e)
        }
        Err(_) => {
            let _ = thread.join();
            Err(ListenError::Io {
                path: PathBuf::new(),
                source: std::io::Error::other("daemon thread exited before it was ready"),
            })
        }
    }
}
