//! The actix glue of a session actor: a `SyncActor` on its own thread, fed batches.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

use actix::{Actor, ActorContext, Handler, Message, SyncContext};
use harpocrates_protocol::{Request, WireResult};
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot};

use super::{SessionWorker, panicked};
use crate::metrics::Metrics;

/// Operations admitted together (one client request or one client batch), answered
/// together.
pub struct Work {
    /// The operations, in order.
    pub ops: Vec<Request>,
    /// Where the answers go, one per operation and in order.
    pub reply: oneshot::Sender<Vec<WireResult>>,
}

/// Daemon-internal work on a session (the key manager's token calls), run with the same
/// retry and supervision as client operations.
pub trait Job: Send {
    /// Runs on the actor's worker and delivers its own result; returns whether it succeeded.
    fn run(self: Box<Self>, worker: &mut SessionWorker) -> bool;
    /// The operation name, for metrics.
    fn name(&self) -> &'static str;
}

/// What waits in the pool's queue.
pub enum Queued {
    /// Client operations.
    Work(Work),
    /// An internal job.
    Job(Box<dyn Job>),
}

/// A batch of work for one actor. The permit bounds how many batches are queued.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ExecBatch {
    /// The work items.
    pub work: Vec<Queued>,
    /// Released when the batch is done.
    pub permit: OwnedSemaphorePermit,
}

/// One session actor.
pub struct SessionActor {
    worker: SessionWorker,
    metrics: Arc<Metrics>,
    /// Sessions of the pool running a batch now (a gauge shared by the lane's actors).
    busy: Arc<AtomicU32>,
    /// Dropped with the actor, after its session: how the pool learns that every session
    /// is closed before the module is finalised.
    _alive: mpsc::Sender<()>,
}

impl SessionActor {
    /// An actor around `worker`; `alive` is held until the actor is dropped, and `busy`
    /// counts this actor while it runs a batch.
    pub fn new(
        worker: SessionWorker,
        metrics: Arc<Metrics>,
        busy: Arc<AtomicU32>,
        alive: mpsc::Sender<()>,
    ) -> Self {
        Self { worker, metrics, busy, _alive: alive }
    }
}

/// Counts an actor as busy while it lives.
struct Busy<'a>(&'a AtomicU32);

impl<'a> Busy<'a> {
    fn start(gauge: &'a AtomicU32) -> Self {
        gauge.fetch_add(1, Ordering::Relaxed);
        Self(gauge)
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Actor for SessionActor {
    type Context = SyncContext<Self>;
}

impl Handler<ExecBatch> for SessionActor {
    type Result = ();

    fn handle(&mut self, batch: ExecBatch, ctx: &mut SyncContext<Self>) {
        // Two atomic adds per batch, not per operation.
        let _busy = Busy::start(&self.busy);
        let mut poisoned = false;
        for item in batch.work {
            let work = match item {
                Queued::Work(work) => work,
                Queued::Job(job) => {
                    let name = job.name();
                    let started = Instant::now();
                    let ok = catch_unwind(AssertUnwindSafe(|| job.run(&mut self.worker)))
                        .unwrap_or_else(|_| {
                            poisoned = true;
                            self.worker.reset();
                            tracing::error!(job = name, "an internal job panicked");
                            false
                        });
                    self.metrics.record(name, ok, started.elapsed());
                    continue;
                }
            };
            let answers: Vec<WireResult> = work
                .ops
                .iter()
                .map(|op| {
                    // A panic must not kill this thread: SyncArbiter never restarts it.
                    let result = catch_unwind(AssertUnwindSafe(|| self.worker.execute(op)))
                        .unwrap_or_else(|_| {
                            poisoned = true;
                            self.worker.reset();
                            panicked(op)
                        });
                    // Client operations are counted where they complete, in the router.
                    result
                })
                .collect();
            // The caller may have gone away; its answers are simply dropped.
            let _ = work.reply.send(answers);
        }
        drop(batch.permit);
        if poisoned {
            tracing::error!("a session operation panicked; rebuilding the session actor");
            ctx.stop();
        }
    }
}
