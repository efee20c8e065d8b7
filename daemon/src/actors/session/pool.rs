//! The session pool: bounded admission, and a dispatcher that hands queued work to the
//! session actors in batches.
//!
//! A thread hand-off costs far more than a software-token operation, so work is never
//! sent one request per message when more is waiting. The dispatcher drains everything
//! queued into one batch — no timers — and keeps at most two batches per session in
//! flight, so when the actors are busy the queue grows and the next batch is larger.

use std::sync::Arc;
use std::time::Instant;

use actix::{Addr, SyncArbiter};
use harpocrates_protocol::{ErrorCode, Request, WireError, WireResult};
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::actor::{ExecBatch, Job, Queued, SessionActor, Work};
use super::{PoolShared, SessionWorker};
use crate::backend::{BackendResult, BackendSession};
use crate::metrics::Metrics;

/// Most work items one batch message carries.
const MAX_WORK_PER_BATCH: usize = 512;

/// Handle to a running pool; cheap to clone.
#[derive(Clone)]
pub struct SessionPool {
    queue: mpsc::Sender<Queued>,
    shared: Arc<PoolShared>,
}

impl SessionPool {
    /// Starts `shared.max_sessions` session actors and the dispatcher. Must run inside an
    /// actix `System`. `queue_depth` bounds the work waiting for a session.
    pub fn start(shared: Arc<PoolShared>, queue_depth: usize, metrics: Arc<Metrics>) -> Self {
        let sessions = shared.max_sessions.max(1) as usize;
        let factory_shared = shared.clone();
        let addr = SyncArbiter::start(sessions, move || {
            SessionActor::new(SessionWorker::new(factory_shared.clone()), metrics.clone())
        });
        let (queue, rx) = mpsc::channel(queue_depth.max(1));
        actix::spawn(dispatch(rx, addr, sessions * 2));
        Self { queue, shared }
    }

    /// What the pool shares with its workers.
    pub fn shared(&self) -> &Arc<PoolShared> {
        &self.shared
    }

    /// Queues `ops` for one session actor; the answers arrive on the returned channel, in
    /// order. Refuses with `Busy` when the queue is full, never waits.
    pub fn submit(
        &self,
        ops: Vec<Request>,
    ) -> Result<oneshot::Receiver<Vec<WireResult>>, WireError> {
        let (reply, rx) = oneshot::channel();
        let work = Work { ops, admitted: Instant::now(), reply };
        self.admit(Queued::Work(work))?;
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

    fn admit(&self, item: Queued) -> Result<(), WireError> {
        self.queue.try_send(item).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => {
                WireError::new(ErrorCode::Busy, "the HSM queue is full; retry later")
            }
            mpsc::error::TrySendError::Closed(_) => {
                WireError::new(ErrorCode::Unavailable, "the session pool has stopped")
            }
        })
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

async fn dispatch(mut rx: mpsc::Receiver<Queued>, addr: Addr<SessionActor>, in_flight: usize) {
    let permits = Arc::new(Semaphore::new(in_flight));
    let mut batch = Vec::with_capacity(MAX_WORK_PER_BATCH);
    loop {
        // Take a permit first: while every actor is busy, work piles up in the queue and
        // the next drain picks all of it up as one batch.
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        if rx.recv_many(&mut batch, MAX_WORK_PER_BATCH).await == 0 {
            break;
        }
        addr.do_send(ExecBatch { work: std::mem::take(&mut batch), permit });
    }
    tracing::debug!("session pool dispatcher stopped");
}
