//! The actix glue of the rotation coordinator: one actor, one request at a time.

use std::sync::Arc;

use actix::{Actor, AtomicResponse, Context, Handler, Message, WrapFuture};
use harpocrates_protocol::{KekInfo, RotationStep, WireError};

use crate::keys::manager::KeyManager;

/// The coordinator.
pub struct RotationCoordinator {
    km: Arc<KeyManager>,
}

impl RotationCoordinator {
    /// A coordinator writing through `km`.
    pub fn new(km: Arc<KeyManager>) -> Self {
        Self { km }
    }
}

impl Actor for RotationCoordinator {
    type Context = Context<Self>;
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
    // the coordinator the single writer.
    type Result = AtomicResponse<Self, Result<KekInfo, WireError>>;

    fn handle(&mut self, msg: KekChange, _: &mut Context<Self>) -> Self::Result {
        let km = self.km.clone();
        AtomicResponse::new(Box::pin(
            async move {
                match msg {
                    KekChange::Create(name) => super::create(&km, &name).await,
                    KekChange::Step(name, step) => super::step(&km, &name, step).await,
                    KekChange::Retire { name, version, destroy } => {
                        super::retire(&km, &name, version, destroy).await
                    }
                }
            }
            .into_actor(self),
        ))
    }
}
