//! Connection I/O threads: one actix `Arbiter` each, connections dealt out in turn.
//!
//! The accept loop stays on the actix `System` thread (with the session pool's
//! dispatchers, the rotation coordinator and the audit actor). Every accepted stream is
//! taken off that thread's reactor, sent to the next I/O thread, registered with that
//! thread's reactor and served there for its whole life: its reader, its writer and the
//! tasks of its requests all run on the one thread, so a connection needs no locks (its
//! state is `Rc`/`Cell`) and its answers need no further hand-off.
//!
//! What is daemon-wide stays shared and thread-safe: the connection count is the
//! [`TaskTracker`] the accept loop counts with (each connection holds a token of it), the
//! byte budget is one semaphore, metrics are atomics. Each thread has its own
//! [`Router`], cloned from the same parts, so the request path bumps no reference count
//! that another thread touches.
//!
//! Stopping: [`IoThreads::stop_and_join`] ends every thread's event loop and joins it.
//! The server calls it once the connections have finished (or the shutdown grace period
//! has passed), and before the session pool stops: when it returns, no thread but the
//! pool's own can be inside the token.

use std::os::unix::net::UnixStream as StdUnixStream;
use std::rc::Rc;
use std::sync::Arc;

use actix::Arbiter;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::task_tracker::TaskTrackerToken;

use super::budget::TotalBudget;
use super::connection;
use super::dispatch::Router;
use super::live::Live;

/// An accepted connection on its way to its thread. The token counts it as open until
/// its last answer has been written.
struct Accepted {
    stream: StdUnixStream,
    token: TaskTrackerToken,
}

/// What every I/O thread builds its connections from.
#[derive(Clone)]
pub struct ConnectionParts {
    /// Cloned once per thread.
    pub router: Router,
    /// Per-connection limits in force (a reload may change them for new connections).
    pub limits: Arc<Live>,
    /// The daemon-wide byte budget.
    pub total: TotalBudget,
    /// Cancelled when the daemon stops.
    pub shutdown: CancellationToken,
}

struct IoThread {
    arbiter: Arbiter,
    intake: mpsc::UnboundedSender<Accepted>,
    /// Until [`IoThreads::serve`] gives it to the thread.
    rx: Option<mpsc::UnboundedReceiver<Accepted>>,
}

/// The running I/O threads.
pub struct IoThreads {
    threads: Vec<IoThread>,
    next: usize,
}

impl IoThreads {
    /// Starts `n` (at least one) idle I/O threads. Must run inside an actix `System`.
    pub fn start(n: usize) -> std::io::Result<Self> {
        let mut started = Self { threads: Vec::with_capacity(n.max(1)), next: 0 };
        for _ in 0..n.max(1) {
            match Arbiter::try_new() {
                Ok(arbiter) => {
                    let (intake, rx) = mpsc::unbounded_channel();
                    started.threads.push(IoThread { arbiter, intake, rx: Some(rx) });
                }
                Err(e) => {
                    started.stop_and_join();
                    return Err(e);
                }
            }
        }
        Ok(started)
    }

    /// Lets every thread serve the connections it is handed, with a router of its own.
    pub fn serve(&mut self, parts: &ConnectionParts) {
        for t in &mut self.threads {
            if let Some(rx) = t.rx.take() {
                let parts = parts.clone();
                t.arbiter.spawn_fn(move || {
                    actix::spawn(serve_intake(rx, parts));
                });
            }
        }
    }

    /// How many threads serve connections.
    pub fn len(&self) -> usize {
        self.threads.len()
    }

    /// Whether there are none (never, once started).
    pub fn is_empty(&self) -> bool {
        self.threads.is_empty()
    }

    /// Hands `stream` to the next thread in turn. A stream that cannot be moved (its
    /// descriptor could not be taken off this thread's reactor) is closed.
    pub fn hand_off(&mut self, stream: tokio::net::UnixStream, token: TaskTrackerToken) {
        // `into_std` deregisters the descriptor here; it stays non-blocking, which the
        // receiving reactor needs (said again so that it never depends on that detail).
        let stream = match stream.into_std().and_then(|s| s.set_nonblocking(true).map(|()| s)) {
            Ok(s) => s,
            Err(e) => {
                return tracing::warn!(error = %e, "cannot hand a connection to an I/O thread");
            }
        };
        let i = self.next;
        self.next = (i + 1) % self.threads.len();
        if self.threads[i].intake.send(Accepted { stream, token }).is_err() {
            tracing::warn!(thread = i, "an I/O thread has stopped; connection closed");
        }
    }

    /// Ends every thread's event loop (dropping whatever still runs there) and waits for
    /// the threads to exit.
    pub fn stop_and_join(self) {
        for t in &self.threads {
            t.arbiter.stop();
        }
        for (i, t) in self.threads.into_iter().enumerate() {
            drop(t.intake);
            if t.arbiter.join().is_err() {
                tracing::error!(thread = i, "an I/O thread panicked");
            }
        }
    }
}

/// Runs on an I/O thread: serves each connection it is handed, with this thread's own
/// router.
async fn serve_intake(mut rx: mpsc::UnboundedReceiver<Accepted>, parts: ConnectionParts) {
    let ConnectionParts { router, limits, total, shutdown } = parts;
    let router = Rc::new(router);
    // Every connection and request clones and polls its shutdown token; a token of this
    // thread's own keeps those locks off the daemon-wide token that every thread shares.
    let shutdown = shutdown.child_token();
    while let Some(Accepted { stream, token }) = rx.recv().await {
        let stream = match tokio::net::UnixStream::from_std(stream) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot register a connection with its I/O thread");
                continue;
            }
        };
        let (router, total, shutdown) = (router.clone(), total.clone(), shutdown.clone());
        let limits = limits.limits();
        actix::spawn(async move {
            connection::serve(stream, router, limits, total, shutdown).await;
            drop(token);
        });
    }
}
