//! The session pool: bounded admission, and a dispatcher that hands queued work to the
//! session actors in batches.
//!
//! A thread hand-off costs far more than a software-token operation, so work is never
//! sent one request per message when more is waiting. The dispatcher drains everything
//! queued into one batch — no timers — and keeps at most two batches per session in
//! flight, so when the actors are busy the queue grows and the next batch is larger.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use actix::{Addr, SyncArbiter};
use harpocrates_protocol::{ErrorCode, PoolGauges, Request, WireError, WireResult};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::actor::{ExecBatch, Job, Queued, SessionActor, Work};
use super::{PoolShared, SessionWorker};
use crate::backend::{BackendResult, BackendSession};
use crate::metrics::Metrics;

/// Most work items one batch message carries.
const MAX_WORK_PER_BATCH: usize = 512;

/// Password-KDF work (backup, restore) waiting for its lane before `Busy`.
const KDF_QUEUE_DEPTH: usize = 16;

/// Which session actors run a piece of work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// Token operations: fast, batched.
    Token,
    /// Operations that run a password KDF (tens of milliseconds each). They get their own
    /// session actor so they can never hold up cheap operations.
    Kdf,
}

/// Handle to a running pool; cheap to clone.
#[derive(Clone)]
pub struct SessionPool {
    queue: mpsc::Sender<Queued>,
    kdf_queue: mpsc::Sender<Queued>,
    shared: Arc<PoolShared>,
    stop: CancellationToken,
    /// Token-lane actors running a batch now.
    busy: Arc<AtomicU32>,
}

/// Resolves once every session actor of a pool has stopped and dropped its session.
pub struct PoolStopped {
    alive: mpsc::Receiver<()>,
}

impl PoolStopped {
    /// Waits for the last session actor thread to let go of its session.
    pub async fn wait(mut self) {
        // Nothing is ever sent: `recv` returns `None` once every actor (and the factories
        // that could build new ones) has been dropped.
        while self.alive.recv().await.is_some() {}
    }
}

impl SessionPool {
    /// Starts `shared.max_sessions` session actors, one more for password-KDF work, and
    /// their dispatchers. Must run inside an actix `System`. `queue_depth` bounds the work
    /// waiting for a session.
    pub fn start(
        shared: Arc<PoolShared>,
        queue_depth: usize,
        metrics: Arc<Metrics>,
    ) -> (Self, PoolStopped) {
        let (alive_tx, alive) = mpsc::channel::<()>(1);
        let stop = CancellationToken::new();
        let busy = Arc::new(AtomicU32::new(0));
        let start_lane = |threads: usize, depth: usize, busy: Arc<AtomicU32>| {
            let factory_shared = shared.clone();
            let metrics = metrics.clone();
            let alive = alive_tx.clone();
            let addr = SyncArbiter::start(threads, move || {
                SessionActor::new(
                    SessionWorker::new(factory_shared.clone()),
                    metrics.clone(),
                    busy.clone(),
                    alive.clone(),
                )
            });
            let (queue, rx) = mpsc::channel(depth.max(1));
            actix::spawn(dispatch(rx, addr, threads * 2, stop.clone()));
            queue
        };
        let sessions = shared.max_sessions.max(1) as usize;
        let queue = start_lane(sessions, queue_depth, busy.clone());
        // The KDF lane's session is not one of `max_sessions`: its busy count is its own.
        let kdf_queue = start_lane(1, KDF_QUEUE_DEPTH, Arc::default());
        (Self { queue, kdf_queue, shared, stop, busy }, PoolStopped { alive })
    }

    /// The pool's gauges right now: token sessions busy, open and configured, and the work
    /// waiting in the token lane's queue.
    pub fn gauges(&self) -> PoolGauges {
        let capacity = self.queue.max_capacity();
        PoolGauges {
            sessions_busy: self.busy.load(Ordering::Relaxed),
            sessions_open: self.shared.active.load(Ordering::Relaxed),
            sessions_max: self.shared.max_sessions,
            queue_depth: capacity.saturating_sub(self.queue.capacity()) as u64,
            queue_capacity: capacity as u64,
        }
    }

    /// What the pool shares with its workers.
    pub fn shared(&self) -> &Arc<PoolShared> {
        &self.shared
    }

    /// Stops the dispatchers: work already handed to an actor finishes, then the actors
    /// stop and close their sessions ([`PoolStopped`] tells when). Call it once no more
    /// client work can arrive.
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// Queues `ops` for one session actor of `lane`; the answers arrive on the returned
    /// channel, in order. Refuses with `Busy` when the queue is full, never waits.
    pub fn submit(
        &self,
        lane: Lane,
        ops: Vec<Request>,
    ) -> Result<oneshot::Receiver<Vec<WireResult>>, WireError> {
        let (reply, rx) = oneshot::channel();
        let work = Work { ops, reply };
        let queue = match lane {
            Lane::Token => &self.queue,
            Lane::Kdf => &self.kdf_queue,
        };
        queue.try_send(Queued::Work(work)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => {
                WireError::new(ErrorCode::Busy, "the HSM queue is full; retry later")
            }
            mpsc::error::TrySendError::Closed(_) => {
                WireError::new(ErrorCode::Unavailable, "the session pool has stopped")
            }
        })?;
        Ok(rx)
    }

    /// Runs `f` on a session (retried on broken sessions like any operation) and returns
    /// its result. `name` labels it in the metrics.
    pub async fn run<T, F>(&self, name: &'static str, f: F) -> Result<T, WireError>
    where
        T: Send + 'static,
        F: FnMut(&mut dyn BackendSession) -> BackendResult<T> + Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        // The daemon's own work waits for a slot instead of failing with Busy: a rotation
        // step must not stop halfway because clients filled the queue.
        self.queue
            .send(Queued::Job(Box::new(FnJob { name, f, reply })))
            .await
            .map_err(|_| WireError::new(ErrorCode::Unavailable, "the session pool has stopped"))?;
        match rx.await {
            Ok(result) => result.map_err(WireError::from),
            Err(_) => Err(WireError::new(ErrorCode::Unavailable, "the session actor stopped")),
        }
    }
}

struct FnJob<F, T> {
    name: &'static str,
    f: F,
    reply: oneshot::Sender<BackendResult<T>>,
}

impl<F, T> Job for FnJob<F, T>
where
    T: Send,
    F: FnMut(&mut dyn BackendSession) -> BackendResult<T> + Send,
{
    fn run(mut self: Box<Self>, worker: &mut SessionWorker) -> bool {
        let result = worker.with_session(&mut self.f);
        let ok = result.is_ok();
        let _ = self.reply.send(result);
        ok
    }

    fn name(&self) -> &'static str {
        self.name
    }
}

async fn dispatch(
    mut rx: mpsc::Receiver<Queued>,
    addr: Addr<SessionActor>,
    in_flight: usize,
    stop: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(in_flight));
    let mut batch = Vec::with_capacity(MAX_WORK_PER_BATCH);
    loop {
        // Take a permit first: while every actor is busy, work piles up in the queue and
        // the next drain picks all of it up as one batch.
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            () = stop.cancelled() => break,
        };
        let got = tokio::select! {
            n = rx.recv_many(&mut batch, MAX_WORK_PER_BATCH) => n,
            () = stop.cancelled() => break,
        };
        if got == 0 {
            break;
        }
        addr.do_send(ExecBatch { work: std::mem::take(&mut batch), permit });
    }
    // Work still queued is answered (its senders see a closed channel) and, with the last
    // address gone, the actors finish what they hold and stop.
    rx.close();
    drop(rx);
    drop(addr);
    tracing::debug!("session pool dispatcher stopped");
}
