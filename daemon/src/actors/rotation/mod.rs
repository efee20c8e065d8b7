//! The rotation coordinator: the only writer of KEK versions and state.
//!
//! The transitions themselves are pure ([`KekState::step`](crate::keys::kek::KekState));
//! this module carries them out against the token in a crash-safe order:
//!
//! * keys are created (and a new version validated) **before** the state that refers to
//!   them is written, so the state never names a version whose keys are missing;
//! * keys are destroyed **after** the state stops referring to them;
//! * each state change is a single write of one token object.
//!
//! A crash between steps therefore leaves either the old state or the new one, plus at
//! worst keys no live version uses: those of a version above the highest the state knows
//! (the next `Prepare` replaces them) or of a version the state marks destroyed (removed
//! before the next change). The
//! [`actor`] wraps this in an actix actor that handles one request at a time.
//!
//! `HARPOCRATES_CRASH_AT=<point>` makes the daemon kill itself with SIGKILL at a named
//! point (see [`CRASH_POINTS`]); the crash-safety tests use it.

pub mod actor;

use std::sync::OnceLock;

use harpocrates_protocol::{KekInfo, RotationStep, WireError};
use zeroize::Zeroizing;

use crate::backend::{BackendError, BackendResult, BackendSession};
use crate::keys::kek::{self, Effect, KekState};
use crate::keys::manager::{KEK_AES_ATTRIBUTES, KeyManager};

/// Every point where the coordinator can be made to crash, in the order they occur:
/// around the token work a step does before its state write (`before-effects`,
/// `after-effects`), around the state write, and after the keys a step destroys once the
/// state no longer names them (`after-destroy`; `retire` reaches it only with `destroy`).
pub const CRASH_POINTS: [&str; 20] = [
    "create:before-effects",
    "create:after-effects",
    "create:before-state",
    "create:after-state",
    "prepare:before-effects",
    "prepare:after-effects",
    "prepare:before-state",
    "prepare:after-state",
    "validate:before-effects",
    "validate:after-effects",
    "validate:before-state",
    "validate:after-state",
    "commit:before-state",
    "commit:after-state",
    "rollback:before-state",
    "rollback:after-state",
    "rollback:after-destroy",
    "retire:before-state",
    "retire:after-state",
    "retire:after-destroy",
];

/// Kills the process with SIGKILL if `HARPOCRATES_CRASH_AT` names this point.
pub fn crash_point(point: &str) {
    static TARGET: OnceLock<Option<String>> = OnceLock::new();
    let target = TARGET.get_or_init(|| std::env::var("HARPOCRATES_CRASH_AT").ok());
    if target.as_deref() == Some(point) {
        tracing::warn!(point, "HARPOCRATES_CRASH_AT reached: killing the daemon");
        // SAFETY: kill(2) on our own pid; no memory is involved.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    }
}

fn wire(e: BackendError) -> WireError {
    WireError::from(e)
}

/// Creates both keys of a version, replacing keys a crashed `Prepare` may have left (no
/// state refers to a version above `highest`, so such keys were never used).
fn create_version(s: &mut dyn BackendSession, name: &str, v: u32) -> BackendResult<()> {
    let (aes, mac) = (kek::aes_label(name, v), kek::mac_label(name, v));
    for label in [&aes, &mac] {
        match s.destroy_key(label) {
            Ok(()) => {
                tracing::warn!(label = %label, "replaced keys left by an interrupted rotation")
            }
            Err(BackendError::KeyNotFound(_)) => {}
            Err(e) => return Err(e),
        }
    }
    s.generate_key(&aes, &KEK_AES_ATTRIBUTES)?;
    s.generate_hmac_key(&mac, 32)
}

/// Round-trips through version `v` inside the token: encrypt/decrypt, wrap/unwrap of a
/// data key, and a derivation.
fn validate_version(s: &mut dyn BackendSession, name: &str, v: u32) -> BackendResult<()> {
    let (aes, mac) = (kek::aes_label(name, v), kek::mac_label(name, v));
    let probe = s.generate_random(32)?;
    let ct = s.encrypt(&aes, probe.expose(), b"harpocrates validate")?;
    if s.decrypt(&aes, &ct, b"harpocrates validate")?.expose() != probe.expose() {
        return Err(BackendError::Failed(format!(
            "KEK {name} v{v} failed its encryption round trip"
        )));
    }
    let dek = Zeroizing::new(s.generate_random(32)?.expose().to_vec());
    let wrapped = s.encrypt(&aes, &dek, b"harpocrates wrap")?;
    if s.decrypt(&aes, &wrapped, b"harpocrates wrap")?.expose() != dek.as_slice() {
        return Err(BackendError::Failed(format!("KEK {name} v{v} failed its wrap round trip")));
    }
    let (a, b) = (
        s.hmac_sha256(&mac, b"harpocrates validate")?,
        s.hmac_sha256(&mac, b"harpocrates validate")?,
    );
    if a != b {
        return Err(BackendError::Failed(format!(
            "KEK {name} v{v} derivation is not deterministic"
        )));
    }
    Ok(())
}

fn destroy_version(s: &mut dyn BackendSession, name: &str, v: u32) -> BackendResult<()> {
    for label in [kek::aes_label(name, v), kek::mac_label(name, v)] {
        match s.destroy_key(&label) {
            Ok(()) | Err(BackendError::KeyNotFound(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

async fn run_effect(km: &KeyManager, name: &str, effect: Effect) -> Result<(), WireError> {
    let n = name.to_owned();
    match effect {
        Effect::CreateVersion(v) => {
            km.pool().run("kek_create_version", move |s| create_version(s, &n, v)).await
        }
        Effect::Validate(v) => {
            km.pool().run("kek_validate", move |s| validate_version(s, &n, v)).await
        }
        Effect::DestroyVersion(v) => {
            km.forget_version(name, v);
            km.pool().run("kek_destroy_version", move |s| destroy_version(s, &n, v)).await
        }
    }
}

async fn write_state(km: &KeyManager, name: &str, state: &KekState) -> Result<(), WireError> {
    let (label, bytes) = (kek::state_label(name), state.encode());
    km.pool().run("kek_state_write", move |s| s.write_object(&label, &bytes)).await?;
    km.remember(name, Some(state.clone()));
    Ok(())
}

/// Applies a transition: effects that create come before the state write, effects that
/// destroy after it.
async fn apply(
    km: &KeyManager,
    name: &str,
    step: &str,
    next: KekState,
    effects: Vec<Effect>,
) -> Result<KekInfo, WireError> {
    let (before, after): (Vec<Effect>, Vec<Effect>) =
        effects.into_iter().partition(|e| !matches!(e, Effect::DestroyVersion(_)));
    if !before.is_empty() {
        crash_point(&format!("{step}:before-effects"));
        for e in before {
            run_effect(km, name, e).await?;
        }
        crash_point(&format!("{step}:after-effects"));
    }
    crash_point(&format!("{step}:before-state"));
    write_state(km, name, &next).await?;
    crash_point(&format!("{step}:after-state"));
    if !after.is_empty() {
        // The state no longer names these keys, so a failure here is not the caller's
        // failure: the version stays in `cleanup` and the next change removes it.
        let mut all_done = true;
        for e in after {
            if let Err(e) = run_effect(km, name, e).await {
                tracing::warn!(kek = name, error = %e, "destroying keys failed; will retry");
                all_done = false;
            }
        }
        crash_point(&format!("{step}:after-destroy"));
        if all_done {
            let cleaned = next.cleaned();
            write_state(km, name, &cleaned).await?;
            return Ok(cleaned.info(name));
        }
    }
    Ok(next.info(name))
}

/// `GenerateKek`: version 1 of a new KEK.
pub async fn create(km: &KeyManager, name: &str) -> Result<KekInfo, WireError> {
    crate::keys::name::validate_label(name)
        .map_err(|m| WireError::new(harpocrates_protocol::ErrorCode::InvalidRequest, m))?;
    if km.read_state(name).await?.is_some() {
        return Err(wire(BackendError::KeyExists(format!("KEK '{name}'"))));
    }
    apply(km, name, "create", KekState::new(), vec![Effect::CreateVersion(1)]).await
}

/// Destroys keys of destroyed versions that a crash or a failed destroy left in the token
/// (the state's `cleanup` set), then records that they are gone.
async fn reconcile(km: &KeyManager, name: &str, state: KekState) -> Result<KekState, WireError> {
    if state.cleanup.is_empty() {
        return Ok(state);
    }
    for &v in &state.cleanup {
        let n = name.to_owned();
        km.pool().run("kek_destroy_version", move |s| destroy_version(s, &n, v)).await?;
    }
    let cleaned = state.cleaned();
    write_state(km, name, &cleaned).await?;
    Ok(cleaned)
}

/// The KEK's state, re-read from the token (the truth; another daemon may have moved
/// it), with leftovers of destroyed versions cleaned up.
async fn current(km: &KeyManager, name: &str) -> Result<KekState, WireError> {
    let state = km
        .read_state(name)
        .await?
        .ok_or_else(|| wire(BackendError::KeyNotFound(format!("no KEK named '{name}'"))))?;
    reconcile(km, name, state).await
}

/// One rotation step.
pub async fn step(km: &KeyManager, name: &str, step: RotationStep) -> Result<KekInfo, WireError> {
    if step == RotationStep::Status {
        let state = km
            .read_state(name)
            .await?
            .ok_or_else(|| wire(BackendError::KeyNotFound(format!("no KEK named '{name}'"))))?;
        return Ok(state.info(name));
    }
    let state = current(km, name).await?;
    let (next, effects) = state.step(name, step).map_err(wire)?;
    let label = match step {
        RotationStep::Status => return Ok(state.info(name)),
        RotationStep::Prepare => "prepare",
        RotationStep::Validate => "validate",
        RotationStep::Commit => "commit",
        RotationStep::Rollback => "rollback",
    };
    apply(km, name, label, next, effects).await
}

/// `RetireKekVersion`.
pub async fn retire(
    km: &KeyManager,
    name: &str,
    version: u32,
    destroy: bool,
) -> Result<KekInfo, WireError> {
    let state = km
        .read_state(name)
        .await?
        .ok_or_else(|| wire(BackendError::KeyNotFound(format!("no KEK named '{name}'"))))?;
    let (next, effects) = state.retire(name, version, destroy).map_err(wire)?;
    km.forget_version(name, version);
    apply(km, name, "retire", next, effects).await
}
