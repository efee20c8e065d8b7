//! Routing: which part of the daemon answers a request.
//!
//! Cheap requests (ping, metrics, capabilities) are answered right here on the I/O
//! thread; HSM operations go to the [session pool](crate::actors::session::pool); a
//! `Batch` is split, its HSM operations admitted in units of at most
//! [`MAX_OPS_PER_UNIT`] (so one client's large batch interleaves with everyone else's
//! work instead of holding a session for its whole length), and the answers put back in
//! request order.
//!
//! Backup and restore run a password KDF (tens of milliseconds each): they go to the
//! pool's KDF lane, at most [`MAX_KDF_PER_CONNECTION`] at a time per connection, so they
//! can neither hold up cheap operations nor be queued without bound by one client.

use std::cell::Cell;
use std::sync::Arc;
use std::time::Instant;

use harpocrates_protocol::{
    ErrorCode, MAX_BATCH_LEN, MAX_RANDOM_LEN, Op, Request, Response, WireError, WireResult,
};

use actix::Addr;

use crate::actors::rotation::actor::{KekChange, RotationCoordinator};
use crate::actors::session::pool::{Lane, SessionPool};
use crate::formats::backup::MAX_BACKUP_LEN;
use crate::keys::manager::{EnvelopeOp, KeyManager};
use crate::keys::name::validate_label;
use crate::metrics::Metrics;

/// Answers requests after the handshake.
pub struct Router {
    pool: SessionPool,
    metrics: Arc<Metrics>,
    keys: Arc<KeyManager>,
    coordinator: Addr<RotationCoordinator>,
}

/// A request and its place in the batch.
type Indexed = (usize, Request);

/// An answer and the place of its request in the batch.
type IndexedAnswer = (usize, WireResult);

/// Most operations handed to a session actor as one unit of work.
pub const MAX_OPS_PER_UNIT: usize = 64;

/// Password-KDF operations one connection may have running or queued at once.
pub const MAX_KDF_PER_CONNECTION: usize = 4;

/// Where one request is answered.
enum Place {
    Here(WireResult),
    Pool,
    Keys,
}

/// What one connection has running in the pool's lanes.
#[derive(Debug, Default)]
pub struct ConnectionLanes {
    kdf: Cell<usize>,
}

impl ConnectionLanes {
    /// Takes up to `want` KDF slots; returns how many were granted.
    fn take_kdf(&self, want: usize) -> usize {
        let granted = want.min(MAX_KDF_PER_CONNECTION.saturating_sub(self.kdf.get()));
        self.kdf.set(self.kdf.get() + granted);
        granted
    }

    fn give_kdf(&self, n: usize) {
        self.kdf.set(self.kdf.get() - n);
    }
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
    /// A router over `pool`, with the key manager and its rotation coordinator.
    pub fn new(
        pool: SessionPool,
        metrics: Arc<Metrics>,
        keys: Arc<KeyManager>,
        coordinator: Addr<RotationCoordinator>,
    ) -> Self {
        Self { pool, metrics, keys, coordinator }
    }

    /// Answers a key-manager request.
    async fn key_manager(&self, request: Request) -> WireResult {
        let started = Instant::now();
        let name = request.op_name();
        let km = &self.keys;
        let change = |msg| async move {
            self.coordinator.send(msg).await.unwrap_or_else(|_| {
                Err(WireError::new(ErrorCode::Unavailable, "the rotation coordinator stopped"))
            })
        };
        let result = match request {
            Request::GenerateKek { name } => {
                change(KekChange::Create(name)).await.map(Response::Kek)
            }
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
            Request::GenerateDataKey { kek } => {
                km.generate_data_key(&kek).await.map(Response::DataKey)
            }
            Request::UnwrapDataKey { wrapped } => {
                km.unwrap_data_key(&wrapped).await.map(Response::DataKey)
            }
            // Through the batch path even alone: it seals a large payload on a crypto thread
            // instead of the I/O thread.
            r @ (Request::EnvelopeEncrypt { .. } | Request::EnvelopeDecrypt { .. }) => {
                let ops = envelope_op(r).map(|op| (0, op)).into_iter().collect();
                km.envelope_batch(ops).await.pop().map_or_else(lost, |(_, r)| r)
            }
            Request::Rewrap { context, ciphertext, aad } => km
                .rewrap(&context, &ciphertext, aad.as_deref().unwrap_or_default())
                .await
                .map(Response::Ciphertext),
            other => Err(WireError::new(
                ErrorCode::InvalidRequest,
                format!("'{}' is not a key-manager request", other.op_name()),
            )),
        };
        self.metrics.record(name, result.is_ok(), started.elapsed());
        result
    }

    /// The backend's name, for the handshake.
    pub fn backend_name(&self) -> &'static str {
        self.pool.shared().backend.name()
    }

    /// The metrics registry.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Answers one request (which may be a batch) from a connection whose lane usage is
    /// `lanes`.
    pub async fn handle(&self, request: Request, lanes: &ConnectionLanes) -> WireResult {
        let started = Instant::now();
        match request {
            Request::Batch(items) => {
                let result = self.batch(items, lanes).await;
                self.metrics.record("batch", result.is_ok(), started.elapsed());
                result
            }
            single => match self.place(&single) {
                Place::Here(result) => {
                    self.metrics.record(single.op_name(), result.is_ok(), started.elapsed());
                    result
                }
                Place::Pool => self
                    .run_in_pool(vec![(0, single)], lanes)
                    .await
                    .pop()
                    .map_or_else(lost, |r| r.1),
                Place::Keys => self.key_manager(single).await,
            },
        }
    }

    async fn batch(&self, items: Vec<Request>, lanes: &ConnectionLanes) -> WireResult {
        if items.len() > MAX_BATCH_LEN {
            return Err(WireError::new(
                ErrorCode::InvalidRequest,
                format!("batch of {} operations; the limit is {MAX_BATCH_LEN}", items.len()),
            ));
        }
        let started = Instant::now();
        let mut answers: Vec<Option<WireResult>> = Vec::with_capacity(items.len());
        let mut for_pool = Vec::new();
        let mut for_keys = Vec::new();
        for (i, item) in items.into_iter().enumerate() {
            match self.place(&item) {
                Place::Here(result) => {
                    self.metrics.record(item.op_name(), result.is_ok(), started.elapsed());
                    answers.push(Some(result));
                }
                Place::Pool => {
                    answers.push(None);
                    for_pool.push((i, item));
                }
                Place::Keys => {
                    answers.push(None);
                    for_keys.push((i, item));
                }
            }
        }
        // Token operations go out as one unit of work; key-manager operations run
        // concurrently beside them (those with a cached data key need no token at all).
        let pooled = async {
            if for_pool.is_empty() { Vec::new() } else { self.run_in_pool(for_pool, lanes).await }
        };
        // Envelope operations are resolved together and their AES work spread across
        // cores; other key-manager operations run concurrently beside them.
        let (envelopes, others): (Vec<Indexed>, Vec<Indexed>) =
            for_keys.into_iter().partition(|(_, r)| {
                matches!(r, Request::EnvelopeEncrypt { .. } | Request::EnvelopeDecrypt { .. })
            });
        let envelope_ops: Vec<(usize, EnvelopeOp)> =
            envelopes.into_iter().filter_map(|(i, r)| envelope_op(r).map(|op| (i, op))).collect();
        let envelope_names: std::collections::HashMap<usize, &'static str> =
            envelope_ops.iter().map(|(i, op)| (*i, op_label(op))).collect();
        let keyed = async {
            let (mut sealed, mut rest) = futures::join!(
                self.keys.envelope_batch(envelope_ops),
                futures::future::join_all(
                    others.into_iter().map(|(i, r)| async move { (i, self.key_manager(r).await) }),
                )
            );
            for (i, r) in &sealed {
                if let Some(name) = envelope_names.get(i) {
                    self.metrics.record(name, r.is_ok(), started.elapsed());
                }
            }
            sealed.append(&mut rest);
            sealed
        };
        let (pooled, keyed) = futures::join!(pooled, keyed);
        for (i, r) in pooled.into_iter().chain(keyed) {
            answers[i] = Some(r);
        }
        let answers = answers.into_iter().map(|a| a.unwrap_or_else(lost)).collect();
        Ok(Response::Batch(answers))
    }

    /// Submits operations to the pool, in units of at most [`MAX_OPS_PER_UNIT`], with
    /// password-KDF work in its own lane; every operation gets an answer, tagged with the
    /// index it came with.
    async fn run_in_pool(&self, ops: Vec<Indexed>, lanes: &ConnectionLanes) -> Vec<IndexedAnswer> {
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
        for (i, r) in kdf.split_off(granted) {
            self.metrics.record(r.op_name(), false, std::time::Duration::ZERO);
            answers.push((i, Err(kdf_busy())));
        }
        units.extend(kdf.into_iter().map(|op| (Lane::Kdf, vec![op])));
        let submitted = units.into_iter().map(|(lane, unit)| {
            let (slots, ops): (Vec<usize>, Vec<Request>) = unit.into_iter().unzip();
            let names: Vec<&'static str> = ops.iter().map(Request::op_name).collect();
            let receiver = self.pool.submit(lane, ops);
            async move {
                let results = match receiver {
                    Ok(rx) => rx.await.unwrap_or_else(|_| vec![lost(); slots.len()]),
                    Err(refused) => {
                        for name in names {
                            self.metrics.record(name, false, std::time::Duration::ZERO);
                        }
                        vec![Err(refused); slots.len()]
                    }
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

    /// Where `request` is answered. The match is over every [`Op`], so a new request
    /// kind must be placed here before the daemon compiles.
    fn place(&self, request: &Request) -> Place {
        let here = Place::Here;
        let checked = |place: Place| match validate(request) {
            Ok(()) => place,
            Err(e) => here(Err(e)),
        };
        match request.op() {
            Op::Hello => here(Err(WireError::new(
                ErrorCode::InvalidRequest,
                "Hello is only valid as the first request on a connection",
            ))),
            Op::Batch => here(Err(WireError::new(
                ErrorCode::InvalidRequest,
                "a Batch may not contain a Batch",
            ))),
            Op::Ping => here(Ok(Response::Pong)),
            Op::SupportsKeyBackup => here(Ok(Response::BackupSupported(
                self.pool.shared().backend.supports_key_backup(),
            ))),
            Op::GetMetrics => here(Ok(Response::Metrics(self.metrics.snapshot()))),
            Op::GenerateKek
            | Op::ListKeks
            | Op::DeriveDataKey
            | Op::GenerateDataKey
            | Op::UnwrapDataKey
            | Op::EnvelopeEncrypt
            | Op::EnvelopeDecrypt
            | Op::Rewrap
            | Op::Rotation
            | Op::RetireKekVersion => checked(Place::Keys),
            Op::GenerateRandom
            | Op::GenerateKey
            | Op::GenerateKeyWithAttributes
            | Op::ListKeys
            | Op::Encrypt
            | Op::Decrypt
            | Op::DestroyKey
            | Op::HealthCheck
            | Op::BackupKey
            | Op::RestoreKey => checked(Place::Pool),
        }
    }
}

/// Longest derivation context accepted, bytes.
pub const MAX_CONTEXT_LEN: usize = 4096;

fn context_size(context: &[u8]) -> Result<(), WireError> {
    if context.len() > MAX_CONTEXT_LEN {
        return Err(WireError::new(
            ErrorCode::InvalidRequest,
            format!("a context of {} bytes; the limit is {MAX_CONTEXT_LEN}", context.len()),
        ));
    }
    Ok(())
}

/// Checks the arguments of an HSM operation before it is queued.
pub fn validate(request: &Request) -> Result<(), WireError> {
    let bad = |m: String| Err(WireError::new(ErrorCode::InvalidRequest, m));
    let label =
        |l: &str| validate_label(l).map_err(|m| WireError::new(ErrorCode::InvalidRequest, m));
    let size = |bits: u32| match bits {
        128 | 192 | 256 => Ok(()),
        other => bad(format!("AES keys are 128, 192 or 256 bits, not {other}")),
    };
    match request {
        Request::GenerateRandom { len } if *len > MAX_RANDOM_LEN => {
            bad(format!("{len} random bytes requested; the limit is {MAX_RANDOM_LEN}"))
        }
        Request::GenerateKey { label: l, size_bits } => label(l).and_then(|()| size(*size_bits)),
        Request::GenerateKeyWithAttributes { label: l, attributes } => {
            label(l).and_then(|()| size(attributes.size_bits))
        }
        Request::Encrypt { key, .. }
        | Request::Decrypt { key, .. }
        | Request::DestroyKey { key }
        | Request::BackupKey { key, .. } => label(key.as_str()),
        Request::RestoreKey { label: l, backup, .. } if backup.len() > MAX_BACKUP_LEN => label(l)
            .and_then(|()| bad(format!("a backup of {} bytes is not one of ours", backup.len()))),
        Request::RestoreKey { label: l, .. } => label(l),
        Request::GenerateKek { name: kek }
        | Request::GenerateDataKey { kek }
        | Request::Rotation { kek, .. }
        | Request::RetireKekVersion { kek, .. } => label(kek),
        Request::DeriveDataKey { kek, context, len } => label(kek).and_then(|()| {
            if !(16..=64).contains(len) {
                return bad(format!("data keys are 16 to 64 bytes, not {len}"));
            }
            context_size(context)
        }),
        Request::EnvelopeEncrypt { kek, context, .. } => {
            label(kek).and_then(|()| context_size(context))
        }
        Request::EnvelopeDecrypt { context, .. } | Request::Rewrap { context, .. } => {
            context_size(context)
        }
        _ => Ok(()),
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

fn op_label(op: &EnvelopeOp) -> &'static str {
    if matches!(op, EnvelopeOp::Encrypt { .. }) { "envelope_encrypt" } else { "envelope_decrypt" }
}

fn lost() -> WireResult {
    Err(WireError::new(ErrorCode::Unavailable, "the session actor stopped before answering"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use harpocrates_protocol::KeyAttributes;

    #[test]
    fn validation_refuses_out_of_range_arguments() {
        let refused = [
            Request::GenerateRandom { len: MAX_RANDOM_LEN + 1 },
            Request::GenerateKey { label: "ok".into(), size_bits: 512 },
            Request::GenerateKey { label: "bad label".into(), size_bits: 256 },
            Request::GenerateKeyWithAttributes {
                label: "ok".into(),
                attributes: KeyAttributes::aes(100),
            },
            Request::Encrypt { key: "".into(), plaintext: Vec::new().into(), aad: None },
            Request::DestroyKey { key: "x\n".into() },
        ];
        for r in refused {
            let err = validate(&r).expect_err(r.op_name());
            assert_eq!(err.code, ErrorCode::InvalidRequest);
        }
        assert_eq!(validate(&Request::GenerateRandom { len: MAX_RANDOM_LEN }), Ok(()));
        assert_eq!(validate(&Request::GenerateKey { label: "k".into(), size_bits: 192 }), Ok(()));
    }
}
