//! Routing: which part of the daemon answers a request, and the one place where every
//! request's outcome is recorded.
//!
//! A request (or each element of a `Batch`) goes through four stages in [`Router::run`]:
//!
//! 1. **admission** ([`admission`](super::admission)): the caller's right under the
//!    policy, then the arguments. A refusal is answered at once.
//! 2. **intent**: a key-changing operation (`manage`, `rotate`) first has its intent
//!    record made durable by the audit actor; without it the operation does not run.
//! 3. **work**: cheap requests (ping, metrics, capabilities) are answered on the I/O
//!    thread; token operations go to the [session pool](crate::actors::session::pool) in
//!    units of at most [`MAX_OPS_PER_UNIT`] (so one client's large batch interleaves with
//!    everyone else's work); key-manager operations run beside them.
//! 4. **completion** ([`completion`](super::completion)): listings are filtered to what the
//!    caller may see, then metrics and the audit record, once per element.
//!
//! Backup and restore run a password KDF (tens of milliseconds each): they go to the
//! pool's KDF lane, at most [`MAX_KDF_PER_CONNECTION`] at a time per connection, so they
//! can neither hold up cheap operations nor be queued without bound by one client.

use std::sync::Arc;

use harpocrates_protocol::{
    AuditPhase, ErrorCode, MAX_BATCH_LEN, Op, Request, Response, WireError, WireResult,
};

use super::admission::{Subject, admit};
use super::context::{ConnectionLanes, MAX_KDF_PER_CONNECTION, RequestContext};
use super::generation::{Current, Generation};
use super::reload::task::ReloadHandle;
use crate::actors::audit::actor::{Auditor, MAX_SUBSCRIBERS, SubscribeError, Subscription};
use crate::actors::rotation::actor::KekChange;
use crate::actors::session::pool::Lane;
use crate::keys::manager::EnvelopeOp;
use crate::metrics::Metrics;
use crate::policy::PolicyStore;

/// Answers requests after the handshake. Every connection I/O thread has its own clone.
///
/// Each request (a batch with all its elements) is served by the backend
/// [generation](super::generation) in force when it arrived, start to finish.
#[derive(Clone)]
pub struct Router {
    current: Arc<Current>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) audit: Auditor,
    policy: Arc<PolicyStore>,
    reload: ReloadHandle,
}

// Clones are made on the accept thread and moved to the I/O threads.
const _: () = {
    const fn send<T: Send>() {}
    send::<Router>();
};

/// A request and its place in the batch.
type Indexed = (usize, Request);

/// An answer and the place of its request in the batch.
type IndexedAnswer = (usize, WireResult);

/// Most operations handed to a session actor as one unit of work.
pub const MAX_OPS_PER_UNIT: usize = 64;

/// Where one request is answered.
enum Place {
    Here(WireResult),
    Pool,
    Keys,
    Reload,
}

fn uses_kdf(request: &Request) -> bool {
    matches!(request.op(), Op::BackupKey | Op::RestoreKey)
}

fn kdf_busy() -> WireError {
    WireError::new(
        ErrorCode::Busy,
        format!(
            "at most {MAX_KDF_PER_CONNECTION} backup or restore operations may run per connection; retry when one finishes"
        ),
    )
}

impl Router {
    /// A router over the generation in force, recording to `audit`, deciding with
    /// `policy`, and reloading through `reload`.
    pub fn new(
        current: Arc<Current>,
        metrics: Arc<Metrics>,
        audit: Auditor,
        policy: Arc<PolicyStore>,
        reload: ReloadHandle,
    ) -> Self {
        Self { current, metrics, audit, policy, reload }
    }

    /// The backend's name, for the handshake.
    pub fn backend_name(&self) -> &'static str {
        self.current.load().backend().name()
    }

    /// The backend generation in force now.
    pub(super) fn generation(&self) -> Arc<Generation> {
        self.current.load()
    }

    /// The metrics registry.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Answers one request (which may be a batch).
    pub async fn handle(&self, request: Request, ctx: &RequestContext) -> WireResult {
        match request {
            Request::Batch(items) if items.len() > MAX_BATCH_LEN => {
                self.metrics.record_outcomes(
                    [(Op::Batch, Some(ErrorCode::InvalidRequest))],
                    ctx.arrived.elapsed(),
                );
                Err(WireError::new(
                    ErrorCode::InvalidRequest,
                    format!("batch of {} operations; the limit is {MAX_BATCH_LEN}", items.len()),
                ))
            }
            Request::Batch(items) => {
                let answers = self.run(items, ctx, true).await;
                self.metrics.record_op(Op::Batch, true, ctx.arrived.elapsed());
                Ok(Response::Batch(answers))
            }
            single => self.run(vec![single], ctx, false).await.pop().unwrap_or_else(lost),
        }
    }

    /// Starts a live audit stream for an admin caller; the subscription is audited too.
    pub async fn subscribe(&self, ctx: &RequestContext) -> Result<Subscription, WireError> {
        let request = Request::SubscribeAudit;
        let subject = Subject::of(&request, None);
        let policy = self.policy.current();
        let grants = policy.grants(&ctx.conn.caller());
        let result = admit(&request, &subject, &grants).and_then(|()| {
            self.audit.subscribe().map_err(|e| match e {
                SubscribeError::Off => WireError::new(
                    ErrorCode::Unsupported,
                    "audit is off in this daemon's configuration",
                ),
                SubscribeError::Full => WireError::new(
                    ErrorCode::Busy,
                    format!("{MAX_SUBSCRIBERS} audit streams are open already; retry later"),
                ),
            })
        });
        // The stream itself is the answer; the record only needs how the subscription ended.
        let answer = result.as_ref().map(|_| Response::Pong).map_err(Clone::clone);
        self.complete(ctx, vec![subject], vec![answer]).await;
        result
    }

    /// Admits, runs and completes `requests` (a batch's elements, or one request).
    async fn run(
        &self,
        requests: Vec<Request>,
        ctx: &RequestContext,
        batched: bool,
    ) -> Vec<WireResult> {
        let policy = self.policy.current();
        let grants = policy.grants(&ctx.conn.caller());
        let generation = self.current.load();
        let mut subjects = Vec::with_capacity(requests.len());
        let mut answers: Vec<Option<WireResult>> = Vec::with_capacity(requests.len());
        let mut for_pool = Vec::new();
        let mut for_keys = Vec::new();
        let mut reloads = Vec::new();
        for (i, request) in requests.into_iter().enumerate() {
            let subject =
                Subject::of(&request, batched.then(|| u32::try_from(i).unwrap_or(u32::MAX)));
            let place = match admit(&request, &subject, &grants) {
                Ok(()) => self.place(&request, &generation),
                Err(refused) => Place::Here(Err(refused)),
            };
            match place {
                Place::Here(result) => answers.push(Some(result)),
                Place::Pool => {
                    answers.push(None);
                    for_pool.push((i, request));
                }
                Place::Keys => {
                    answers.push(None);
                    for_keys.push((i, request));
                }
                Place::Reload => {
                    answers.push(None);
                    reloads.push(i);
                }
            }
            subjects.push(subject);
        }
        self.record_intents(ctx, &subjects, &mut answers, &mut for_pool, &mut for_keys).await;
        let pooled = async {
            if for_pool.is_empty() {
                Vec::new()
            } else {
                self.run_in_pool(&generation, for_pool, &ctx.conn.lanes).await
            }
        };
        let reloaded = futures::future::join_all(
            reloads
                .into_iter()
                .map(|i| async move { (i, self.reload.reload().await.map(Response::Reloaded)) }),
        );
        let (pooled, keyed, reloaded) =
            futures::join!(pooled, self.run_keyed(&generation, for_keys), reloaded);
        // Answered: the generation may now retire, if a reload replaced it.
        drop(generation);
        for (i, r) in pooled.into_iter().chain(keyed).chain(reloaded) {
            answers[i] = Some(r);
        }
        let mut answers: Vec<WireResult> =
            answers.into_iter().map(|a| a.unwrap_or_else(lost)).collect();
        if !grants.unrestricted() {
            self.redact(&mut answers, &subjects, &grants, ctx).await;
        }
        self.complete(ctx, subjects, answers).await
    }

    /// Makes the intent of every admitted key-changing operation durable before it runs;
    /// if that fails, those operations are answered `audit_unavailable` and not run.
    async fn record_intents(
        &self,
        ctx: &RequestContext,
        subjects: &[Subject],
        answers: &mut [Option<WireResult>],
        for_pool: &mut Vec<Indexed>,
        for_keys: &mut Vec<Indexed>,
    ) {
        if !self.audit.enabled() {
            return;
        }
        let changing: Vec<usize> = for_pool
            .iter()
            .chain(for_keys.iter())
            .map(|(i, _)| *i)
            .filter(|&i| subjects[i].op.class().changes_keys())
            .collect();
        if changing.is_empty() {
            return;
        }
        let intents = changing
            .iter()
            .map(|&i| self.event(ctx, &subjects[i], AuditPhase::Intent, None))
            .collect();
        if let Err(e) = self.audit.record_durable(intents).await {
            let refused = WireError::new(
                ErrorCode::AuditUnavailable,
                format!("{e}; the operation was not carried out"),
            );
            let mut keep = |(i, _): &Indexed| {
                if changing.contains(i) {
                    answers[*i] = Some(Err(refused.clone()));
                    false
                } else {
                    true
                }
            };
            for_pool.retain(&mut keep);
            for_keys.retain(&mut keep);
        }
    }

    /// Key-manager operations: envelope operations resolved together (their AES work
    /// spread across cores), the others concurrently beside them.
    async fn run_keyed(&self, generation: &Generation, items: Vec<Indexed>) -> Vec<IndexedAnswer> {
        if items.is_empty() {
            return Vec::new();
        }
        let (envelopes, others): (Vec<Indexed>, Vec<Indexed>) = items
            .into_iter()
            .partition(|(_, r)| matches!(r.op(), Op::EnvelopeEncrypt | Op::EnvelopeDecrypt));
        let envelope_ops: Vec<(usize, EnvelopeOp)> =
            envelopes.into_iter().filter_map(|(i, r)| envelope_op(r).map(|op| (i, op))).collect();
        let (mut sealed, mut rest) = futures::join!(
            generation.keys.envelope_batch(envelope_ops),
            futures::future::join_all(
                others
                    .into_iter()
                    .map(|(i, r)| async move { (i, key_manager(generation, r).await) }),
            )
        );
        sealed.append(&mut rest);
        sealed
    }
}

/// Answers a key-manager request (other than envelope operations).
async fn key_manager(generation: &Generation, request: Request) -> WireResult {
    let km = &generation.keys;
    let change = |msg| async move {
        generation.coordinator.send(msg).await.unwrap_or_else(|_| {
            Err(WireError::new(ErrorCode::Unavailable, "the rotation coordinator stopped"))
        })
    };
    match request {
        Request::GenerateKek { name } => change(KekChange::Create(name)).await.map(Response::Kek),
        Request::Rotation { kek, step } => {
            change(KekChange::Step(kek, step)).await.map(Response::Kek)
        }
        Request::RetireKekVersion { kek, version, destroy } => {
            change(KekChange::Retire { name: kek, version, destroy }).await.map(Response::Kek)
        }
        Request::ListKeks => km.list().await.map(Response::Keks),
        Request::DeriveDataKey { kek, context, len } => {
            km.derive_data_key(&kek, &context, len).await.map(Response::DataKey)
        }
        Request::EnvelopeDataKey { kek, context, version } => {
            km.envelope_data_key(&kek, &context, version).await.map(Response::DataKey)
        }
        Request::GenerateDataKey { kek } => km.generate_data_key(&kek).await.map(Response::DataKey),
        Request::UnwrapDataKey { wrapped } => {
            km.unwrap_data_key(&wrapped).await.map(Response::DataKey)
        }
        Request::Rewrap { context, ciphertext, aad } => km
            .rewrap(&context, &ciphertext, aad.as_deref().unwrap_or_default())
            .await
            .map(Response::Ciphertext),
        other => Err(WireError::new(
            ErrorCode::InvalidRequest,
            format!("'{}' is not a key-manager request", other.op_name()),
        )),
    }
}

impl Router {
    /// Submits operations to the pool, in units of at most [`MAX_OPS_PER_UNIT`], with
    /// password-KDF work in its own lane; every operation gets an answer, tagged with the
    /// index it came with.
    pub(super) async fn run_in_pool(
        &self,
        generation: &Generation,
        ops: Vec<Indexed>,
        lanes: &ConnectionLanes,
    ) -> Vec<IndexedAnswer> {
        let (kdf, token): (Vec<Indexed>, Vec<Indexed>) =
            ops.into_iter().partition(|(_, r)| uses_kdf(r));
        let mut answers = Vec::with_capacity(kdf.len() + token.len());
        let mut units = Vec::new();
        let mut rest = token;
        while !rest.is_empty() {
            let tail = rest.split_off(rest.len().min(MAX_OPS_PER_UNIT));
            units.push((Lane::Token, std::mem::replace(&mut rest, tail)));
        }
        // KDF work beyond the connection's allowance is refused now, not queued.
        let granted = lanes.take_kdf(kdf.len());
        let mut kdf = kdf;
        answers.extend(kdf.split_off(granted).into_iter().map(|(i, _)| (i, Err(kdf_busy()))));
        units.extend(kdf.into_iter().map(|op| (Lane::Kdf, vec![op])));
        let submitted = units.into_iter().map(|(lane, unit)| {
            let (slots, ops): (Vec<usize>, Vec<Request>) = unit.into_iter().unzip();
            let receiver = generation.pool.submit(lane, ops);
            async move {
                let results = match receiver {
                    Ok(rx) => rx.await.unwrap_or_else(|_| vec![lost(); slots.len()]),
                    Err(refused) => vec![Err(refused); slots.len()],
                };
                if lane == Lane::Kdf {
                    lanes.give_kdf(slots.len());
                }
                slots.into_iter().zip(results).collect::<Vec<_>>()
            }
        });
        for unit in futures::future::join_all(submitted).await {
            answers.extend(unit);
        }
        answers
    }

    /// Where an admitted request is answered. The match is over every [`Op`], so a new
    /// request kind must be placed here before the daemon compiles.
    fn place(&self, request: &Request, generation: &Generation) -> Place {
        let here = Place::Here;
        match request.op() {
            Op::Hello => here(Err(WireError::new(
                ErrorCode::InvalidRequest,
                "Hello is only valid as the first request on a connection",
            ))),
            Op::Batch => here(Err(WireError::new(
                ErrorCode::InvalidRequest,
                "a Batch may not contain a Batch",
            ))),
            Op::SubscribeAudit => here(Err(WireError::new(
                ErrorCode::InvalidRequest,
                "SubscribeAudit is answered with a stream; send it alone, not in a batch",
            ))),
            Op::Ping => here(Ok(Response::Pong)),
            Op::SupportsKeyBackup => {
                here(Ok(Response::BackupSupported(generation.backend().supports_key_backup())))
            }
            Op::GetMetrics => {
                let snapshot = self.metrics.snapshot_with(generation.pool.gauges());
                here(Ok(Response::Metrics(Box::new(snapshot))))
            }
            Op::Reload => Place::Reload,
            Op::GenerateKek
            | Op::ListKeks
            | Op::DeriveDataKey
            | Op::EnvelopeDataKey
            | Op::GenerateDataKey
            | Op::UnwrapDataKey
            | Op::EnvelopeEncrypt
            | Op::EnvelopeDecrypt
            | Op::Rewrap
            | Op::Rotation
            | Op::RetireKekVersion => Place::Keys,
            Op::GenerateRandom
            | Op::GenerateKey
            | Op::GenerateKeyWithAttributes
            | Op::ListKeys
            | Op::Encrypt
            | Op::Decrypt
            | Op::DestroyKey
            | Op::HealthCheck
            | Op::BackupKey
            | Op::RestoreKey => Place::Pool,
        }
    }
}

/// The envelope operation inside `request`, if it is one.
fn envelope_op(request: Request) -> Option<EnvelopeOp> {
    match request {
        Request::EnvelopeEncrypt { kek, context, plaintext, aad } => {
            Some(EnvelopeOp::Encrypt { kek, context, plaintext, aad: aad.unwrap_or_default() })
        }
        Request::EnvelopeDecrypt { context, ciphertext, aad } => {
            Some(EnvelopeOp::Decrypt { context, ciphertext, aad: aad.unwrap_or_default() })
        }
        _ => None,
    }
}

pub(super) fn lost() -> WireResult {
    Err(WireError::new(ErrorCode::Unavailable, "the session actor stopped before answering"))
}
