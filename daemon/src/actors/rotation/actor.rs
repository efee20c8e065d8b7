//! The actix glue of the rotation coordinator: one actor, one request at a time, and
//! supervision of the steps it runs.
//!
//! A step that panics does not take the coordinator down: the panic is caught at the
//! step's boundary, the request that was running gets a typed `operation_failed` error,
//! and the coordinator restarts — it forgets every cached KEK state, so the next step
//! re-reads the truth from the token. Requests queued behind it run on the restarted
//! coordinator. (A panic is caught here rather than left to actix, because an actix actor
//! whose future panics is gone for good and every later request would fail.)

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use actix::{Actor, AtomicResponse, Context, Handler, Message, Supervised, WrapFuture};
use futures::FutureExt;
use harpocrates_protocol::{ErrorCode, KekInfo, RotationStep, WireError};

use crate::keys::manager::KeyManager;

/// The coordinator.
pub struct RotationCoordinator {
    km: Arc<KeyManager>,
    restarts: Arc<AtomicU64>,
}

impl RotationCoordinator {
    /// A coordinator writing through `km`.
    pub fn new(km: Arc<KeyManager>) -> Self {
        Self { km, restarts: Arc::new(AtomicU64::new(0)) }
    }

    /// How many times the coordinator restarted after a failed step.
    pub fn restarts(&self) -> u64 {
        self.restarts.load(Ordering::Relaxed)
    }
}

/// Forgets what the coordinator's key manager remembers, so the next step starts from
/// the token's state.
fn restart(km: &KeyManager, restarts: &AtomicU64) {
    let n = restarts.fetch_add(1, Ordering::Relaxed) + 1;
    km.forget_states();
    tracing::error!(restarts = n, "rotation coordinator restarted; KEK states will be re-read");
}

impl Actor for RotationCoordinator {
    type Context = Context<Self>;
}

/// Also restartable by an `actix::Supervisor`: the restart re-reads state the same way.
impl Supervised for RotationCoordinator {
    fn restarting(&mut self, _: &mut Context<Self>) {
        restart(&self.km, &self.restarts);
    }
}

/// A change to a KEK.
#[derive(Message)]
#[rtype(result = "Result<KekInfo, WireError>")]
pub enum KekChange {
    /// `GenerateKek`.
    Create(String),
    /// A rotation step.
    Step(String, RotationStep),
    /// `RetireKekVersion`.
    Retire {
        /// KEK name.
        name: String,
        /// Version.
        version: u32,
        /// Destroy the keys too.
        destroy: bool,
    },
}

impl Handler<KekChange> for RotationCoordinator {
    // Atomic: the next change starts only after this one is written, which is what makes
    // the coordinator the single writer in this daemon.
    type Result = AtomicResponse<Self, Result<KekInfo, WireError>>;

    fn handle(&mut self, msg: KekChange, _: &mut Context<Self>) -> Self::Result {
        let (km, restarts) = (self.km.clone(), self.restarts.clone());
        AtomicResponse::new(Box::pin(
            async move {
                let work = async {
                    match msg {
                        KekChange::Create(name) => super::create(&km, &name).await,
                        KekChange::Step(name, step) => super::step(&km, &name, step).await,
                        KekChange::Retire { name, version, destroy } => {
                            super::retire(&km, &name, version, destroy).await
                        }
                    }
                };
                match AssertUnwindSafe(work).catch_unwind().await {
                    Ok(result) => result,
                    Err(_) => {
                        restart(&km, &restarts);
                        Err(WireError::new(
                            ErrorCode::OperationFailed,
                            "the rotation coordinator failed during this change and was \
                             restarted; check the KEK's status before retrying",
                        ))
                    }
                }
            }
            .into_actor(self),
        ))
    }
}
