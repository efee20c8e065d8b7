//! The actix glue of the audit actor: one actor on a thread of its own, fed bursts of
//! events, writing them with group commit.
//!
//! A burst is accepted at once (journal, subscribers, the file's pending buffer) and a
//! commit is scheduled behind whatever else is already in the mailbox, so every burst
//! that arrived meanwhile shares one write and, when someone waits for durability, one
//! fdatasync. The queue is bounded by a semaphore counted in events: [`Auditor`] takes
//! permits before sending, so a sink that falls behind makes callers wait (or, with
//! [`Backlog::Count`], lose `use` records into a counter) instead of growing memory.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::{Actor, ActorContext, Addr, Arbiter, AsyncContext, Context, Handler, Message};
use harpocrates_protocol::AuditEvent;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use super::file::AuditFileError;
use super::{AuditSettings, Backlog, Event, Sinks};
use crate::metrics::Metrics;

/// How often records not waited for are written and synced anyway.
const FLUSH_EVERY: Duration = Duration::from_millis(200);

/// Events a live subscriber may have unread before it starts missing some.
const SUBSCRIBER_BACKLOG: usize = 1024;

/// Live subscribers at once: each holds up to [`SUBSCRIBER_BACKLOG`] events.
pub const MAX_SUBSCRIBERS: usize = 16;

/// The audit record could not be made durable.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the audit record could not be written: {0}")]
pub struct AuditUnavailable(pub String);

/// The actor.
pub struct AuditActor {
    sinks: Sinks,
    metrics: Arc<Metrics>,
    /// Callers waiting for the next commit to be durable.
    waiters: Vec<oneshot::Sender<Result<(), AuditUnavailable>>>,
    /// Queue room held by accepted events until they are written.
    permits: Vec<OwnedSemaphorePermit>,
    /// Events accepted since the last commit (lost if it fails).
    uncommitted: u64,
    commit_scheduled: bool,
    /// Something was written without an fdatasync.
    unsynced: bool,
    last_failure_log: Option<Instant>,
}

/// A burst of events.
#[derive(Message)]
#[rtype(result = "()")]
struct Record {
    events: Vec<Event>,
    durable: Option<oneshot::Sender<Result<(), AuditUnavailable>>>,
    permit: Option<OwnedSemaphorePermit>,
}

/// Write what is pending.
#[derive(Message)]
#[rtype(result = "()")]
struct Commit;

/// A new live subscriber.
#[derive(Message)]
#[rtype(result = "()")]
struct Subscribe(mpsc::Sender<AuditEvent>);

/// Final commit, then stop.
#[derive(Message)]
#[rtype(result = "()")]
struct Close;

impl Actor for AuditActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(FLUSH_EVERY, |actor, _| {
            if actor.uncommitted > 0 || actor.unsynced {
                actor.commit(true);
            }
        });
    }
}

impl AuditActor {
    fn commit(&mut self, sync: bool) {
        self.commit_scheduled = false;
        let sync = sync || !self.waiters.is_empty();
        let result = self.sinks.commit(sync);
        let lost = std::mem::take(&mut self.uncommitted);
        match &result {
            Ok(()) => self.unsynced = !sync,
            Err(e) => self.failed(e, lost),
        }
        let answer = result.map_err(|e| AuditUnavailable(e.to_string()));
        for w in self.waiters.drain(..) {
            let _ = w.send(answer.clone());
        }
        self.permits.clear();
    }

    fn failed(&mut self, e: &AuditFileError, lost: u64) {
        self.metrics.audit_failed(lost);
        let now = Instant::now();
        if self.last_failure_log.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(10)) {
            self.last_failure_log = Some(now);
            tracing::error!(error = %e, records = lost, "audit records could not be written");
        }
    }
}

impl Handler<Record> for AuditActor {
    type Result = ();

    fn handle(&mut self, r: Record, ctx: &mut Context<Self>) {
        self.sinks.accept(&r.events);
        self.uncommitted += r.events.len() as u64;
        self.metrics.audit_recorded(r.events.len() as u64);
        self.permits.extend(r.permit);
        self.waiters.extend(r.durable);
        if !self.commit_scheduled {
            // Behind what is already in the mailbox: those bursts share this commit.
            self.commit_scheduled = true;
            ctx.notify(Commit);
        }
    }
}

impl Handler<Commit> for AuditActor {
    type Result = ();

    fn handle(&mut self, _: Commit, _: &mut Context<Self>) {
        if self.commit_scheduled {
            self.commit(false);
        }
    }
}

impl Handler<Subscribe> for AuditActor {
    type Result = ();

    fn handle(&mut self, s: Subscribe, _: &mut Context<Self>) {
        self.sinks.subscribe(s.0);
    }
}

impl Handler<Close> for AuditActor {
    type Result = ();

    fn handle(&mut self, _: Close, ctx: &mut Context<Self>) {
        self.commit(true);
        if let Some((seq, hash)) = self.sinks.head() {
            // The anchor: with the journal's copy of the head, a rewritten file shows.
            tracing::info!(seq, head = %hash, "audit file closed");
        }
        ctx.stop();
    }
}

/// The request path's handle on the audit actor. Cheap to clone.
#[derive(Clone)]
pub struct Auditor {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    addr: Addr<AuditActor>,
    queue: Arc<Semaphore>,
    capacity: usize,
    settings: AuditSettings,
    metrics: Arc<Metrics>,
    arbiter: std::sync::Mutex<Option<Arbiter>>,
    subscribers: Arc<std::sync::atomic::AtomicUsize>,
}

/// A live audit stream; dropping it frees its subscriber slot.
pub struct Subscription {
    /// The events.
    pub events: mpsc::Receiver<AuditEvent>,
    slots: Arc<std::sync::atomic::AtomicUsize>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.slots.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Why a subscription was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscribeError {
    /// No sink is configured.
    Off,
    /// [`MAX_SUBSCRIBERS`] are already streaming.
    Full,
}

impl Auditor {
    /// No audit at all.
    pub fn disabled() -> Self {
        Self { inner: None }
    }

    /// Opens the sinks and starts the actor on a thread of its own. Must run inside an
    /// actix system.
    pub fn start(settings: AuditSettings, metrics: Arc<Metrics>) -> Result<Self, AuditFileError> {
        if !settings.enabled() {
            return Ok(Self::disabled());
        }
        let sinks = Sinks::open(&settings)?;
        let arbiter = Arbiter::new();
        let actor_metrics = metrics.clone();
        let addr = AuditActor::start_in_arbiter(&arbiter.handle(), move |_| AuditActor {
            sinks,
            metrics: actor_metrics,
            waiters: Vec::new(),
            permits: Vec::new(),
            uncommitted: 0,
            commit_scheduled: false,
            unsynced: false,
            last_failure_log: None,
        });
        let capacity = settings.queue.max(1);
        Ok(Self {
            inner: Some(Arc::new(Inner {
                addr,
                queue: Arc::new(Semaphore::new(capacity)),
                capacity,
                settings,
                metrics,
                arbiter: std::sync::Mutex::new(Some(arbiter)),
                subscribers: Arc::default(),
            })),
        })
    }

    /// Whether events are recorded at all.
    pub fn enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// Whether every class waits for durable records (`audit.fail_closed`).
    pub fn fail_closed(&self) -> bool {
        self.inner.as_ref().is_some_and(|i| i.settings.fail_closed)
    }

    /// Records `events` without waiting for them to be durable. With
    /// [`Backlog::Wait`] this waits for queue room; with [`Backlog::Count`] a full queue
    /// drops them (counted and logged).
    pub async fn record(&self, events: Vec<Event>) {
        let Some(inner) = &self.inner else { return };
        if events.is_empty() {
            return;
        }
        let n = u32::try_from(events.len().min(inner.capacity)).unwrap_or(u32::MAX);
        let permit = match inner.settings.backlog {
            Backlog::Wait => inner.queue.clone().acquire_many_owned(n).await.ok(),
            Backlog::Count => match inner.queue.clone().try_acquire_many_owned(n) {
                Ok(p) => Some(p),
                Err(_) => {
                    inner.metrics.audit_dropped(events.len() as u64);
                    return;
                }
            },
        };
        inner.addr.do_send(Record { events, durable: None, permit });
    }

    /// Records `events` and waits until they are durable (written and synced).
    pub async fn record_durable(&self, events: Vec<Event>) -> Result<(), AuditUnavailable> {
        let Some(inner) = &self.inner else { return Ok(()) };
        let n = u32::try_from(events.len().clamp(1, inner.capacity)).unwrap_or(u32::MAX);
        let permit = inner.queue.clone().acquire_many_owned(n).await.ok();
        let (tx, rx) = oneshot::channel();
        inner.addr.do_send(Record { events, durable: Some(tx), permit });
        rx.await.unwrap_or_else(|_| Err(AuditUnavailable("the audit actor stopped".into())))
    }

    /// A live stream of every event from now on.
    pub fn subscribe(&self) -> Result<Subscription, SubscribeError> {
        use std::sync::atomic::Ordering::Relaxed;
        let inner = self.inner.as_ref().ok_or(SubscribeError::Off)?;
        inner
            .subscribers
            .fetch_update(Relaxed, Relaxed, |n| (n < MAX_SUBSCRIBERS).then_some(n + 1))
            .map_err(|_| SubscribeError::Full)?;
        let (tx, events) = mpsc::channel(SUBSCRIBER_BACKLOG);
        inner.addr.do_send(Subscribe(tx));
        Ok(Subscription { events, slots: inner.subscribers.clone() })
    }

    /// Writes and syncs what is pending, stops the actor and waits for its thread.
    pub async fn close(&self) {
        let Some(inner) = &self.inner else { return };
        let _ = inner.addr.send(Close).await;
        let arbiter = inner.arbiter.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(arbiter) = arbiter {
            arbiter.stop();
            // Its last work (the final commit) is done; the thread only has to exit.
            let _ = arbiter.join();
        }
    }
}
