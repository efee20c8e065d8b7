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
//! * the state write is a compare-and-swap against the state the step was computed from,
//!   so of several daemons changing one KEK at once exactly one step wins each write;
//!   the others re-read and re-evaluate (a second `Prepare` then gets `invalid_state`);
//! * a version's keys are named by their ids, recorded in the state: a key a losing
//!   `Prepare` made under the same label is never used, and is destroyed by its maker, or
//!   by the sweep after the next version is created.
//!
//! A crash between steps therefore leaves either the old state or the new one, plus at
//! worst keys no live version uses: keys the state does not record (removed by the sweep
//! once their version number is taken) or keys of a version the state marks destroyed
//! (removed before the next change). The [`actor`] wraps this in an actix actor that
//! handles one request at a time and survives a panic in a step.
//!
//! `HARPOCRATES_CRASH_AT=<point>` makes the daemon kill itself with SIGKILL at a named
//! point (see [`CRASH_POINTS`]); `HARPOCRATES_PANIC_AT=<point>` makes the coordinator
//! panic there once. The crash-safety tests use them.

pub mod actor;

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use harpocrates_protocol::{KekInfo, RotationStep, WireError};
use zeroize::Zeroizing;

use crate::backend::{
    BackendError, BackendResult, BackendSession, KekKeyKind, SwapOutcome, key_ref,
};
use crate::keys::kek::{self, Effect, KekState, VersionKeys};
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

/// Kills the process with SIGKILL if `HARPOCRATES_CRASH_AT` names this point, or panics
/// (once per process) if `HARPOCRATES_PANIC_AT` does.
pub fn crash_point(point: &str) {
    static TARGET: OnceLock<Option<String>> = OnceLock::new();
    static PANIC_AT: OnceLock<Option<String>> = OnceLock::new();
    static PANICKED: AtomicBool = AtomicBool::new(false);
    let target = TARGET.get_or_init(|| std::env::var("HARPOCRATES_CRASH_AT").ok());
    if target.as_deref() == Some(point) {
        tracing::warn!(point, "HARPOCRATES_CRASH_AT reached: killing the daemon");
        // SAFETY: kill(2) on our own pid; no memory is involved.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    }
    let panic_at = PANIC_AT.get_or_init(|| std::env::var("HARPOCRATES_PANIC_AT").ok());
    if panic_at.as_deref() == Some(point) && !PANICKED.swap(true, Ordering::AcqRel) {
        panic!("HARPOCRATES_PANIC_AT reached at {point}");
    }
}

fn wire(e: BackendError) -> WireError {
    WireError::from(e)
}

/// How often a change is re-evaluated after losing a state write to another daemon.
const MAX_ATTEMPTS: u32 = 8;

fn labels(name: &str, v: u32) -> [String; 2] {
    [kek::aes_label(name, v), kek::mac_label(name, v)]
}

/// The key names of version `v`: its recorded keys, or (a version made before ids were
/// recorded) its labels.
fn refs(name: &str, v: u32, keys: Option<&VersionKeys>) -> (String, String) {
    let [aes, mac] = labels(name, v);
    match keys {
        Some(k) => (key_ref(&aes, &k.aes), key_ref(&mac, &k.mac)),
        None => (aes, mac),
    }
}

/// Creates both keys of version `v` under fresh ids. Keys another daemon (or a crashed
/// `Prepare`) made under the same labels are left alone: only the ids this returns will
/// be recorded.
fn create_version(s: &mut dyn BackendSession, name: &str, v: u32) -> BackendResult<VersionKeys> {
    let [aes_label, mac_label] = labels(name, v);
    let aes = s.create_kek_key(&aes_label, KekKeyKind::Aes(KEK_AES_ATTRIBUTES))?;
    match s.create_kek_key(&mac_label, KekKeyKind::Hmac(32)) {
        Ok(mac) => Ok(VersionKeys { aes, mac }),
        Err(e) => {
            let _ = s.destroy_key(&key_ref(&aes_label, &aes));
            Err(e)
        }
    }
}

/// Round-trips through version `v` inside the token: encrypt/decrypt, wrap/unwrap of a
/// data key, and a derivation.
fn validate_version(
    s: &mut dyn BackendSession,
    name: &str,
    v: u32,
    keys: Option<&VersionKeys>,
) -> BackendResult<()> {
    let (aes, mac) = refs(name, v, keys);
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

/// Destroys one key; one already gone counts as destroyed.
fn destroy_one(s: &mut dyn BackendSession, key: &str) -> BackendResult<()> {
    match s.destroy_key(key) {
        Ok(()) => Ok(()),
        Err(e) if e.is_not_found() => Ok(()),
        Err(e) => Err(e),
    }
}

/// Destroys a key nothing refers to (a lost write's, or one the sweep proved dead). A
/// failure only leaves garbage behind, so it is logged, not returned: the change the
/// caller asked for does not depend on it.
fn destroy_garbage(s: &mut dyn BackendSession, key: &str, why: &str) -> bool {
    match destroy_one(s, key) {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(key, why, error = %e, "unreferenced key not destroyed; left as garbage");
            false
        }
    }
}

/// Destroys every key under version `v`'s labels: its own keys, and any a losing or
/// crashed `Prepare` left under them (no state can ever name those, see [`sweep`]).
fn destroy_version(s: &mut dyn BackendSession, name: &str, v: u32) -> BackendResult<()> {
    for label in labels(name, v) {
        // One key per call: the label may name several.
        for _ in 0..64 {
            match s.destroy_key(&label) {
                Ok(()) => {}
                Err(e) if e.is_not_found() => break,
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

/// The version number in a KEK key label of `name` (`#kek/<name>/v<N>/aes|mac`).
fn version_of_label(name: &str, label: &str) -> Option<u32> {
    let rest = label.strip_prefix(&format!("{}{name}/v", kek::STATE_PREFIX))?;
    let (v, kind) = rest.split_once('/')?;
    matches!(kind, "aes" | "mac").then_some(())?;
    v.parse().ok()
}

/// Destroys keys that provably no state will ever name: keys under the label of a version
/// that `state` — read from the token just before — records with other ids. Every
/// published state was the single winner of its write (see docs/envelope.md), so a
/// version's recorded ids never change once recorded; every competing `Prepare` for that
/// number computed it from an older state, and its claim on that state's baton fails, so
/// its keys are never recorded. Keys under labels of versions above `highest` may still
/// belong to a write in progress and are left alone, as are versions made before ids were
/// recorded.
fn sweep(s: &mut dyn BackendSession, name: &str, state: &KekState) -> BackendResult<usize> {
    let prefix = format!("{}{name}/v", kek::STATE_PREFIX);
    let mut destroyed = 0;
    for (label, id) in s.list_key_ids(&prefix)? {
        let Some(v) = version_of_label(name, &label) else { continue };
        let Some(keys) = state.version_keys(v) else { continue };
        if v > state.highest || id == keys.aes || id == keys.mac {
            continue;
        }
        let key = key_ref(&label, &id);
        tracing::info!(
            kek = name,
            key,
            state_revision = state.revision,
            "sweeping a key its version does not record"
        );
        if destroy_garbage(s, &key, "sweep") {
            destroyed += 1;
        }
    }
    Ok(destroyed)
}

/// Writes `next` if the token still holds `expected` (the bytes the step started from).
async fn write_state(
    km: &KeyManager,
    name: &str,
    expected: Option<&[u8]>,
    next: &KekState,
) -> Result<SwapOutcome, WireError> {
    let (label, bytes, expected) =
        (kek::state_label(name), next.encode(), expected.map(<[u8]>::to_vec));
    let outcome = km
        .pool()
        .run("kek_state_write", move |s| {
            s.compare_and_swap_object(&label, expected.as_deref(), &bytes)
        })
        .await?;
    if outcome == SwapOutcome::Swapped {
        km.remember(name, Some(next.clone()));
    }
    Ok(outcome)
}

/// What a change does to a KEK, evaluated against the state read from the token.
#[derive(Debug, Clone, Copy)]
enum Change {
    Create,
    Step(RotationStep),
    Retire { version: u32, destroy: bool },
}

impl Change {
    fn point(self) -> &'static str {
        match self {
            Change::Create => "create",
            Change::Step(RotationStep::Prepare) => "prepare",
            Change::Step(RotationStep::Validate) => "validate",
            Change::Step(RotationStep::Commit) => "commit",
            Change::Step(RotationStep::Rollback) => "rollback",
            Change::Step(RotationStep::Status) => "status",
            Change::Retire { .. } => "retire",
        }
    }

    fn evaluate(
        self,
        name: &str,
        current: Option<&KekState>,
    ) -> Result<(KekState, Vec<Effect>), BackendError> {
        match (self, current) {
            (Change::Create, None) => Ok((KekState::new(), vec![Effect::CreateVersion(1)])),
            (Change::Create, Some(_)) => {
                Err(BackendError::AlreadyExists(format!("a KEK named '{name}' already exists")))
            }
            (_, None) => Err(no_kek(name)),
            (Change::Step(step), Some(s)) => s.step(name, step),
            (Change::Retire { version, destroy }, Some(s)) => s.retire(name, version, destroy),
        }
    }
}

fn no_kek(name: &str) -> BackendError {
    BackendError::NotFound(format!("no KEK named '{name}'"))
}

/// Destroys the keys of a version this daemon created for a write that lost, unless the
/// token's state records them after all (our write was decided, then superseded before
/// we could read the outcome back). Returns that state when it does.
async fn discard(
    km: &KeyManager,
    name: &str,
    v: u32,
    keys: &VersionKeys,
) -> Result<Option<KekState>, WireError> {
    let now = km.read_state(name).await?;
    if let Some(state) = now.filter(|s| s.version_keys(v) == Some(keys)) {
        return Ok(Some(state));
    }
    let (aes, mac) = refs(name, v, Some(keys));
    tracing::info!(kek = name, aes, mac, "destroying the keys of a write that lost");
    km.pool()
        .run("kek_discard_version", move |s| {
            destroy_garbage(s, &aes, "lost write");
            destroy_garbage(s, &mac, "lost write");
            Ok(())
        })
        .await?;
    Ok(None)
}

/// Carries out a change: effects that create or validate, then the state write (a
/// compare-and-swap), then effects that destroy. A write lost to another daemon undoes
/// what this one created and re-evaluates the change against the new state.
async fn run(km: &KeyManager, name: &str, change: Change) -> Result<KekInfo, WireError> {
    let point = change.point();
    for _ in 0..MAX_ATTEMPTS {
        let read = km.read_state_raw(name).await?;
        let (current, expected) = match &read {
            Some((s, b)) => (Some(s), Some(b.as_slice())),
            None => (None, None),
        };
        if let Some(state) = current
            && !state.cleanup.is_empty()
        {
            reconcile(km, name, state, expected).await?;
            continue;
        }
        let (mut next, effects) = change.evaluate(name, current).map_err(wire)?;
        if let Change::Retire { version, .. } = change {
            km.forget_version(name, version);
        }
        let (before, after): (Vec<Effect>, Vec<Effect>) =
            effects.into_iter().partition(|e| !matches!(e, Effect::DestroyVersion(_)));
        let (mut created, mut changed) = (None, false);
        if !before.is_empty() {
            crash_point(&format!("{point}:before-effects"));
            for e in before {
                let done = match e {
                    Effect::CreateVersion(v) => {
                        let n = name.to_owned();
                        km.pool()
                            .run("kek_create_version", move |s| create_version(s, &n, v))
                            .await
                            .map(|keys| {
                                next.keys.insert(v, keys.clone());
                                created = Some((v, keys));
                            })
                    }
                    Effect::Validate(v) => {
                        let (n, keys) = (name.to_owned(), next.version_keys(v).cloned());
                        km.pool()
                            .run("kek_validate", move |s| validate_version(s, &n, v, keys.as_ref()))
                            .await
                    }
                    Effect::DestroyVersion(_) => Ok(()),
                };
                if let Err(e) = done {
                    // Another daemon changed the KEK after we read it, and that can break
                    // this step's token work: a rollback destroys the keys a Validate
                    // uses, a sweep destroys the keys of a Prepare that can no longer win
                    // while they are being generated. Re-evaluate on the new state (which
                    // then answers `invalid_state`); what this step created is garbage the
                    // sweep removes.
                    if state_changed(km, name, expected).await? {
                        tracing::info!(
                            kek = name,
                            step = point,
                            error = %e.message,
                            "token work failed while another daemon changed the KEK; re-evaluating"
                        );
                        changed = true;
                        break;
                    }
                    return Err(e);
                }
            }
            if changed {
                back_off().await;
                continue;
            }
            crash_point(&format!("{point}:after-effects"));
        }
        crash_point(&format!("{point}:before-state"));
        let outcome = match write_state(km, name, expected, &next).await {
            Ok(o) => o,
            Err(e) => {
                // Whether the write took effect is unknown: keep what it created (the
                // sweep removes it if it never becomes part of a version).
                return Err(e);
            }
        };
        match outcome {
            SwapOutcome::Swapped => {}
            SwapOutcome::Lost | SwapOutcome::Superseded => {
                if let Some((v, keys)) = &created
                    && let Some(state) = discard(km, name, *v, keys).await?
                {
                    return Ok(state.info(name));
                }
                tracing::info!(
                    kek = name,
                    step = point,
                    "another daemon changed the KEK first; re-evaluating"
                );
                back_off().await;
                continue;
            }
            SwapOutcome::Undecided => {
                return Err(wire(BackendError::InvalidState(format!(
                    "KEK '{name}' is being changed by another daemon at the same time; \
                     this {point} may or may not take effect: check its status"
                ))));
            }
        }
        crash_point(&format!("{point}:after-state"));
        let info = finish(km, name, next, after, point).await?;
        if created.is_some() {
            // Keys that lost a race for a version number this state now records, judged
            // against the state as the token holds it now.
            let n = name.to_owned();
            if let Some((state, _)) = km.read_state_raw(name).await? {
                match km.pool().run("kek_sweep", move |s| sweep(s, &n, &state)).await {
                    Ok(0) => {}
                    Ok(count) => tracing::info!(kek = name, count, "removed keys no version uses"),
                    Err(e) => tracing::warn!(kek = name, error = %e, "sweep failed; will retry"),
                }
            }
        }
        return Ok(info);
    }
    Err(wire(BackendError::InvalidState(format!(
        "KEK '{name}' kept changing under this {point}; check its status and retry"
    ))))
}

/// Whether the token's state differs from `expected` (the bytes a step started from).
async fn state_changed(
    km: &KeyManager,
    name: &str,
    expected: Option<&[u8]>,
) -> Result<bool, WireError> {
    Ok(km.read_state_raw(name).await?.map(|(_, b)| b).as_deref() != expected)
}

/// Waits a short random time before re-reading a state another daemon is changing, so the
/// other write can finish and the two stop meeting.
async fn back_off() {
    let mut r = [0u8; 1];
    if getrandom::fill(&mut r).is_err() {
        r = [9];
    }
    tokio::time::sleep(std::time::Duration::from_millis(2 + u64::from(r[0] % 24))).await;
}

/// After a won state write: destroys what the state no longer names, then records that
/// it is gone.
async fn finish(
    km: &KeyManager,
    name: &str,
    next: KekState,
    after: Vec<Effect>,
    point: &str,
) -> Result<KekInfo, WireError> {
    if after.is_empty() {
        return Ok(next.info(name));
    }
    // The state no longer names these keys, so a failure here is not the caller's
    // failure: the version stays in `cleanup` and the next change removes it.
    let mut all_done = true;
    for e in after {
        if let Effect::DestroyVersion(v) = e {
            km.forget_version(name, v);
            let n = name.to_owned();
            if let Err(e) =
                km.pool().run("kek_destroy_version", move |s| destroy_version(s, &n, v)).await
            {
                tracing::warn!(kek = name, error = %e, "destroying keys failed; will retry");
                all_done = false;
            }
        }
    }
    crash_point(&format!("{point}:after-destroy"));
    if all_done {
        let cleaned = next.cleaned();
        let bytes = next.encode();
        // Losing this write only means someone else moved on; the next change cleans up.
        if write_state(km, name, Some(&bytes), &cleaned).await? == SwapOutcome::Swapped {
            return Ok(cleaned.info(name));
        }
    }
    Ok(next.info(name))
}

/// Destroys keys of destroyed versions that a crash or a failed destroy left in the token
/// (the state's `cleanup` set), then records that they are gone.
async fn reconcile(
    km: &KeyManager,
    name: &str,
    state: &KekState,
    expected: Option<&[u8]>,
) -> Result<(), WireError> {
    for &v in &state.cleanup {
        km.forget_version(name, v);
        let n = name.to_owned();
        km.pool().run("kek_destroy_version", move |s| destroy_version(s, &n, v)).await?;
    }
    write_state(km, name, expected, &state.cleaned()).await?;
    Ok(())
}

/// `GenerateKek`: version 1 of a new KEK.
pub async fn create(km: &KeyManager, name: &str) -> Result<KekInfo, WireError> {
    crate::keys::name::validate_label(name)
        .map_err(|m| WireError::new(harpocrates_protocol::ErrorCode::InvalidRequest, m))?;
    run(km, name, Change::Create).await
}

/// One rotation step.
pub async fn step(km: &KeyManager, name: &str, step: RotationStep) -> Result<KekInfo, WireError> {
    if step == RotationStep::Status {
        let state = km.read_state(name).await?.ok_or_else(|| wire(no_kek(name)))?;
        return Ok(state.info(name));
    }
    run(km, name, Change::Step(step)).await
}

/// `RetireKekVersion`.
pub async fn retire(
    km: &KeyManager,
    name: &str,
    version: u32,
    destroy: bool,
) -> Result<KekInfo, WireError> {
    run(km, name, Change::Retire { version, destroy }).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_numbers_come_from_this_keks_labels_only() {
        assert_eq!(version_of_label("k", "#kek/k/v12/aes"), Some(12));
        assert_eq!(version_of_label("k", "#kek/k/v3/mac"), Some(3));
        assert_eq!(version_of_label("k", "#kek/k/v3/other"), None);
        assert_eq!(version_of_label("k", "#kek/kk/v3/aes"), None);
        assert_eq!(version_of_label("k", "#kek/k/state"), None);
    }
}
