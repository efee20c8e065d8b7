//! The server: listener, connections, routing, and the daemon's life cycle.
//!
//! [`serve`] runs inside an actix `System` (a single-threaded tokio runtime): it binds the
//! socket (or takes the one systemd passed), starts the first backend
//! [generation](generation) and the connection [I/O threads](io_threads), accepts
//! connections and deals them out to those threads until told to stop, then drains
//! in-flight requests, stops the I/O threads and the generation in force, and removes the
//! socket (unless systemd owns it). Beside it run the [reload](reload) task, which swaps
//! generations, and the [watchdog and status](supervise) tasks. [`run`] adds signal
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
pub mod generation;
pub mod io_threads;
pub mod listener;
pub mod live;
pub mod reload;
mod signals;
pub mod supervise;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use harpocrates_protocol::{ErrorCode, MessageCodec, RequestFrame, ResponseFrame, WireError};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::actors::audit::actor::Auditor;
use crate::actors::session::GenerationStamp;
use crate::backend::Backend;
use crate::config::{Args, Settings};
use crate::metrics::Metrics;
use crate::systemd::notify::{Notifier, NotifyState};
use generation::{Current, Generation, PoolSettings};
pub use listener::ListenError;
use live::Live;
use reload::task::{ReloadHandle, Reloader};

/// How the daemon meets its service manager. The default binds the configured socket,
/// notifies nobody, and cannot reload (unless the settings name a configuration file).
#[derive(Debug, Default)]
pub struct Service {
    /// A listening socket passed by systemd; without one the configured path is bound.
    pub activated: Option<std::os::unix::net::UnixListener>,
    /// Where READY, STATUS, WATCHDOG, RELOADING and STOPPING go.
    pub notifier: Notifier,
    /// How the daemon was started, to read the configuration again on a reload.
    pub args: Option<Args>,
}

impl Service {
    /// As systemd set up this process (`LISTEN_FDS`, `NOTIFY_SOCKET`, `WATCHDOG_USEC`);
    /// a passed socket the daemon cannot serve on is an error.
    pub fn from_env(args: &Args) -> Result<Self, ListenError> {
        let activated =
            crate::systemd::activation::listener_from_env().map_err(ListenError::Activation)?;
        Ok(Self { activated, notifier: Notifier::from_env(), args: Some(args.clone()) })
    }
}

/// A daemon that accepts connections.
pub struct Ready {
    /// Where it listens.
    pub path: PathBuf,
    /// Asks it to reload its configuration.
    pub reload: ReloadHandle,
}

/// Runs the daemon until `shutdown` is cancelled. `ready` receives the socket path once
/// the daemon accepts connections (or the reason it cannot). Returns the backend in force
/// at the end (a reload may have swapped it), for the caller to finalise.
pub async fn serve(
    settings: Settings,
    backend: Arc<dyn Backend>,
    service: Service,
    shutdown: CancellationToken,
    ready: oneshot::Sender<Result<Ready, ListenError>>,
) -> Arc<dyn Backend> {
    let Service { activated, notifier, args } = service;
    let bound = match activated {
        Some(socket) => listener::BoundSocket::activated(socket),
        None => listener::bind(&settings.socket_path, settings.socket_mode),
    };
    let bound = match bound {
        Ok(b) => b,
        Err(e) => {
            let _ = ready.send(Err(e));
            return backend;
        }
    };
    let mut threads = match io_threads::IoThreads::start(settings.io_threads) {
        Ok(threads) => threads,
        Err(source) => {
            let _ = ready.send(Err(ListenError::Io { path: bound.path().to_owned(), source }));
            return backend;
        }
    };
    let metrics = Arc::new(Metrics::new());
    let audit = match Auditor::start(settings.audit.clone(), metrics.clone()) {
        Ok(audit) => audit,
        Err(e) => {
            threads.stop_and_join();
            let _ = ready.send(Err(ListenError::Audit(e.to_string())));
            return backend;
        }
    };
    tracing::info!(
        rules = settings.policy.current().rule_count(),
        audit_file = ?settings.audit.file,
        "access policy and audit in force"
    );
    let (first, stopped) = Generation::start(
        GenerationStamp::first(),
        backend,
        &PoolSettings::of(&settings),
        Instant::now(),
        metrics.clone(),
    );
    let current = Arc::new(Current::new(first));
    let live = Arc::new(Live::new(
        live::ConnectionLimits::of(&settings),
        fd_limit::effective_max_connections(
            settings.max_connections,
            settings.max_sessions,
            threads.len(),
        ),
    ));
    // Without a configuration file there is nothing to re-read.
    let args = args.or_else(|| {
        settings.config_path.clone().map(|config| Args { config: Some(config), ..Args::default() })
    });
    let (reload, reload_rx) = reload::task::channel();
    let reloader = Reloader::new(
        args,
        settings.clone(),
        current.clone(),
        stopped,
        live.clone(),
        metrics.clone(),
        notifier.clone(),
        threads.len(),
    );
    let reloader = actix::spawn(reloader.run(reload_rx, shutdown.clone()));
    let parts = io_threads::ConnectionParts {
        router: dispatch::Router::new(
            current.clone(),
            metrics.clone(),
            audit.clone(),
            settings.policy.clone(),
            reload.clone(),
        ),
        limits: live.clone(),
        total: budget::TotalBudget::new(settings.max_total_bytes),
        shutdown: shutdown.clone(),
    };
    threads.serve(&parts);
    drop(parts);

    let mut background = vec![{
        let metrics = metrics.clone();
        actix::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                metrics.sample();
            }
        })
    }];
    // Returns at once when no textfile is configured.
    background.push({
        let (metrics, current) = (metrics.clone(), current.clone());
        actix::spawn(crate::metrics::textfile::run(
            settings.metrics.clone(),
            move || metrics.snapshot_with(current.load().pool.gauges()),
            shutdown.clone(),
        ))
    });
    if notifier.enabled() {
        background.push(actix::spawn(supervise::status(
            current.clone(),
            notifier.clone(),
            metrics.clone(),
        )));
        if let Some(timeout) = notifier.watchdog() {
            let every = supervise::ping_interval(timeout);
            tracing::info!(?timeout, ?every, "systemd watchdog enabled");
            background.push(actix::spawn(supervise::watchdog(
                current.clone(),
                notifier.clone(),
                every,
            )));
        }
    }
    drop(current);

    // The backend is logged in and every actor runs.
    notifier.tell(&[NotifyState::Ready]);
    let _ = ready.send(Ok(Ready { path: bound.path().to_owned(), reload }));
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
                    metrics.connection_refused();
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
        if connections.len() >= live.max_connections() {
            metrics.connection_refused();
            connections.spawn_local(refuse_busy(stream, settings.max_frame));
            continue;
        }
        // Counted here, before the hand-off, so the limit holds across threads.
        threads.hand_off(stream, connections.token());
    }

    notifier.tell(&[NotifyState::Stopping]);
    tracing::info!("shutting down: no new connections, finishing in-flight requests");
    drop(bound);
    // A reload under way finishes first; the reloader then knows the generation in force.
    let reloader = match reloader.await {
        Ok(reloader) => reloader,
        Err(e) => {
            // Cannot happen short of a panic in the reload task; the sessions are then
            // left to the process exit, and the module is not finalised under them.
            tracing::error!(error = %e, "the reload task failed");
            threads.stop_and_join();
            std::process::abort();
        }
    };
    let grace = reloader.shutdown_timeout();
    connections.close();
    if tokio::time::timeout(grace, connections.wait()).await.is_err() {
        tracing::warn!(
            remaining = connections.len(),
            "shutdown timeout; dropping connections with requests still in flight"
        );
    }
    // The I/O threads go first: whatever still runs there (past the grace period) is
    // dropped, so no client request can reach the pool once it is told to stop.
    threads.stop_and_join();
    for task in background {
        task.abort();
    }
    // Sessions are closed before the module is finalised, and both before the process
    // exits: a session thread still inside the module while exit handlers run the
    // module's destructors is how a SoftHSM2 daemon crashed on SIGTERM.
    let backend = reloader.finish().await;
    // Last: every request that could add a record has finished.
    audit.close().await;
    backend
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

/// Runs the daemon in this thread until SIGTERM or SIGINT; SIGHUP reloads. Prints
/// nothing; the caller learns the socket path through `on_ready`.
pub fn run(
    settings: Settings,
    backend: Arc<dyn Backend>,
    service: Service,
    on_ready: impl FnOnce(&std::path::Path) + 'static,
) -> Result<(), ListenError> {
    let system = actix::System::new();
    let (result, last) = system.block_on(async move {
        let signals = signals::Signals::install();
        let shutdown = CancellationToken::new();
        let (ready_tx, ready_rx) = oneshot::channel();
        let server = actix::spawn(serve(settings, backend, service, shutdown.clone(), ready_tx));
        let result = match ready_rx.await {
            Ok(Ok(ready)) => {
                on_ready(&ready.path);
                signals.wait(&ready.reload).await;
                drop(ready);
                shutdown.cancel();
                Ok(())
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Ok(()),
        };
        (result, server.await.ok())
    });
    actix::System::current().stop();
    drop(system);
    // `serve` has closed every session; only now may the module be finalised. (Not in
    // `spawn`: daemons embedded in one process may share a module.)
    if let Some(backend) = last {
        backend.finalize();
    }
    result
}

/// A daemon running on a background thread (tests, benchmarks, embedding).
pub struct RunningDaemon {
    socket_path: PathBuf,
    reload: ReloadHandle,
    shutdown: CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RunningDaemon {
    /// Where it listens.
    pub fn socket_path(&self) -> &std::path::Path {
        &self.socket_path
    }

    /// Reloads its configuration (as SIGHUP does) and says what changed.
    pub fn reload(&self) -> Result<harpocrates_protocol::ReloadReport, WireError> {
        let handle = self.reload.clone();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .map_err(|e| WireError::new(ErrorCode::Unavailable, e.to_string()))?;
        runtime.block_on(handle.reload())
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
    spawn_with(settings, backend, Service::default())
}

/// [`spawn`], meeting a service manager as `service` says (tests point the notifier at
/// a socket of their own).
pub fn spawn_with(
    settings: Settings,
    backend: Arc<dyn Backend>,
    service: Service,
) -> Result<RunningDaemon, ListenError> {
    let shutdown = CancellationToken::new();
    let (ready_tx, ready_rx) = oneshot::channel();
    let token = shutdown.clone();
    let thread = std::thread::Builder::new()
        .name("harpocratesd".into())
        .spawn(move || {
            let system = actix::System::new();
            system.block_on(serve(settings, backend, service, token, ready_tx));
            actix::System::current().stop();
        })
        .map_err(|source| ListenError::Io { path: PathBuf::new(), source })?;
    match ready_rx.blocking_recv() {
        Ok(Ok(Ready { path, reload })) => {
            Ok(RunningDaemon { socket_path: path, reload, shutdown, thread: Some(thread) })
        }
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
