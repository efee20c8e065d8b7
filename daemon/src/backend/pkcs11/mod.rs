//! The PKCS#11 backend: any vendor's module, loaded at run time through `cryptoki`.
//!
//! One [`Pkcs11Backend`] per daemon owns the module context (initialised for OS locking),
//! the selected slot and the PIN. Each session actor gets a [`session::Pkcs11Session`]
//! that owns one logged-in cryptoki `Session`. Keys are found by `CKA_LABEL` once and their
//! object handles cached for every session (handles are per process, not per session),
//! because `C_FindObjects` is far slower than an AES-GCM operation.
//!
//! When the module reports that the token or its own state is gone, the next session to
//! notice finalises and re-initialises the module; sessions opened before that fail once
//! with a session error and are reopened by their actors.

pub mod errors;
mod module;
pub mod raw;
pub mod session;
pub mod uri;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::object::ObjectHandle;
use cryptoki::session::UserType;
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use harpocrates_protocol::{KeyInfo, TokenInfo};
use zeroize::Zeroizing;

use super::{Backend, BackendError, BackendResult, BackendSession};
use uri::TokenSelector;

/// How the daemon finds its token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenChoice {
    /// A slot number (fragile: SoftHSM2 renumbers slots when tokens are initialised).
    SlotId(u64),
    /// The token label, and optionally more attributes (from a PKCS#11 URI).
    Match(TokenSelector),
    /// The first slot with an initialised token (single-slot modules such as CloudHSM).
    First,
}

/// Validated PKCS#11 settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pkcs11Config {
    /// The vendor's module.
    pub library_path: PathBuf,
    /// Which token.
    pub token: TokenChoice,
    /// Backend name reported to clients (`pkcs11`, `cloudhsm`).
    pub name: &'static str,
}

/// A key's handle and what we know of it; cheap to clone on the hot path.
#[derive(Clone)]
pub(crate) struct CachedKey {
    pub handle: ObjectHandle,
    pub info: Arc<KeyInfo>,
}

/// State shared by the backend and all its sessions.
pub(crate) struct Shared {
    pub ctx: Pkcs11,
    pub config: Pkcs11Config,
    pub pin: Zeroizing<String>,
    pub slot: RwLock<Slot>,
    pub token_info: RwLock<TokenInfo>,
    /// label → handle; valid for every session of this process until re-initialisation.
    pub keys: RwLock<HashMap<String, CachedKey>>,
    /// Bumped by every re-initialisation; sessions remember the one they were opened in.
    pub generation: AtomicU64,
    reinit: Mutex<()>,
    /// Serialises key creation (find-then-create is not atomic in PKCS#11).
    pub creating: Mutex<()>,
    /// The token offers CKM_AES_KEY_WRAP_PAD, which backups need.
    pub can_wrap: bool,
    /// Single-call AES-GCM, past cryptoki's length query.
    pub raw: raw::RawCalls,
    /// Counts this backend as a user of its module until it goes.
    module: module::ModuleUse,
}

/// The backend handle the daemon holds.
#[derive(Clone)]
pub struct Pkcs11Backend {
    shared: Arc<Shared>,
}

/// Why the backend could not start, one clear sentence each.
fn startup(msg: String) -> BackendError {
    BackendError::Startup(msg)
}

fn init_args() -> CInitializeArgs {
    // SoftHSM2 and others misbehave under concurrency unless told to use OS locking.
    CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)
}

impl Pkcs11Backend {
    /// Loads the module, initialises it, finds the token and checks the PIN by logging in.
    pub fn open(config: Pkcs11Config, pin: Zeroizing<String>) -> BackendResult<Self> {
        Self::open_with_retry(config, pin, 0, Duration::ZERO)
    }

    /// Like [`open`](Self::open), but a token that is not found (or not readable yet) is
    /// looked for again up to `attempts` more times, `delay` apart: another process on the
    /// same token (a second daemon starting at the same instant) may be writing it.
    pub fn open_with_retry(
        config: Pkcs11Config,
        pin: Zeroizing<String>,
        attempts: u32,
        delay: Duration,
    ) -> BackendResult<Self> {
        let lib = &config.library_path;
        if !lib.exists() {
            return Err(startup(format!("PKCS#11 module {} does not exist", lib.display())));
        }
        let module = module::ModuleUse::register(lib);
        let ctx = Pkcs11::new(lib)
            .map_err(|e| startup(format!("cannot load PKCS#11 module {}: {e}", lib.display())))?;
        match ctx.initialize(init_args()) {
            Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
            Err(e) => {
                return Err(startup(format!(
                    "C_Initialize of {} failed: {}",
                    lib.display(),
                    brief(&e)
                )));
            }
        }
        // A token another process is writing at this instant (a second daemon starting,
        // a key being created) can look absent, uninitialised or unreadable, and its login
        // can fail with CKR_GENERAL_ERROR: look again within the retry budget.
        let mut tried = 0;
        let (slot, token_info) = loop {
            match attach(&ctx, &config.token, &pin) {
                Ok(found) => break found,
                Err((e, true)) if tried < attempts => {
                    tried += 1;
                    tracing::warn!(error = %e, attempt = tried, "token not usable yet; looking again");
                    std::thread::sleep(delay);
                    // Modules such as SoftHSM2 read their tokens at C_Initialize; but a
                    // module another backend of ours is serving on is not ours to reset.
                    if module.others() == 0 {
                        let _ = ctx.clone().finalize();
                        if let Err(e) = ctx.initialize(init_args()) {
                            tracing::debug!(error = %brief(&e), "C_Initialize");
                        }
                    }
                }
                Err((e, _)) => return Err(e),
            }
        };
        // One targeted query: listing every mechanism makes cryptoki log each type it
        // does not know.
        let can_wrap = ctx
            .get_mechanism_info(slot, cryptoki::mechanism::MechanismType::AES_KEY_WRAP_PAD)
            .is_ok();
        let raw = raw::RawCalls::load(&config.library_path).map_err(startup)?;
        let backend = Self {
            shared: Arc::new(Shared {
                ctx,
                config,
                pin,
                slot: RwLock::new(slot),
                token_info: RwLock::new(token_info),
                keys: RwLock::new(HashMap::new()),
                generation: AtomicU64::new(0),
                reinit: Mutex::new(()),
                creating: Mutex::new(()),
                can_wrap,
                raw,
                module,
            }),
        };
        Ok(backend)
    }

    /// The module context, for tools and benchmarks that call the token directly.
    pub fn context(&self) -> &Pkcs11 {
        &self.shared.ctx
    }

    /// The slot in use.
    pub fn slot(&self) -> Slot {
        *read(&self.shared.slot)
    }
}

/// Finds the token and logs in once, so that a wrong PIN stops start-up instead of
/// failing requests later. The flag says whether trying again may help.
fn attach(
    ctx: &Pkcs11,
    choice: &TokenChoice,
    pin: &Zeroizing<String>,
) -> Result<(Slot, TokenInfo), (BackendError, bool)> {
    let slot = find_slot(ctx, choice).map_err(|e| (e, true))?;
    let token_info = read_token_info(ctx, slot);
    let label = &token_info.label;
    let session = ctx.open_rw_session(slot).map_err(|e| {
        (startup(format!("cannot open a session on token '{label}': {}", brief(&e))), true)
    })?;
    let secret = AuthPin::from(pin.as_str().to_owned());
    match session.login(UserType::User, Some(&secret)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
        Err(CkError::Pkcs11(RvError::PinIncorrect, _)) => {
            return Err((startup(format!("wrong PIN for token '{label}'")), false));
        }
        Err(CkError::Pkcs11(RvError::PinLocked, _)) => {
            return Err((startup(format!("the user PIN of token '{label}' is locked")), false));
        }
        // SoftHSM2 answers this too while another process rewrites the token file during
        // its own login (two daemons starting at once): worth another look.
        Err(CkError::Pkcs11(RvError::UserPinNotInitialized, _)) => {
            return Err((
                startup(format!(
                    "token '{label}' has no user PIN set (initialise the token first)"
                )),
                true,
            ));
        }
        Err(other) => {
            return Err((
                startup(format!("login to token '{label}' failed: {}", brief(&other))),
                true,
            ));
        }
    }
    Ok((slot, token_info))
}

/// A short description of a cryptoki error (the long RvError text is a paragraph).
pub(crate) fn brief(e: &CkError) -> String {
    match e {
        CkError::Pkcs11(rv, f) => format!("{} from {f:?}", errors::ckr_name(*rv)),
        other => other.to_string(),
    }
}

pub(crate) fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|p| p.into_inner())
}

pub(crate) fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|p| p.into_inner())
}

/// Logs the user in; a token already logged in (login is per token, not per session) is
/// fine.
pub(crate) fn login(shared: &Shared, session: &cryptoki::session::Session) -> Result<(), CkError> {
    let pin = AuthPin::from(shared.pin.as_str().to_owned());
    let (mut attempt, mut delay) = (1, Duration::from_millis(2));
    loop {
        match session.login(UserType::User, Some(&pin)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => return Ok(()),
            // SoftHSM2 rewrites its token file (the PIN-count flags) on every login, and a
            // login that reads it while another process rewrites it answers GENERAL_ERROR:
            // a moment later it succeeds.
            // USER_PIN_NOT_INITIALIZED is what the same race answers when the token file is
            // caught half-written.
            Err(CkError::Pkcs11(RvError::GeneralError | RvError::UserPinNotInitialized, _))
                if attempt < LOGIN_ATTEMPTS =>
            {
                std::thread::sleep(delay);
                (attempt, delay) = (attempt + 1, delay * 2);
            }
            Err(e) => return Err(e),
        }
    }
}

/// `C_Login` attempts when the token answers `CKR_GENERAL_ERROR` (see [`login`]).
const LOGIN_ATTEMPTS: u32 = 6;

fn find_slot(ctx: &Pkcs11, choice: &TokenChoice) -> BackendResult<Slot> {
    let slots = ctx
        .get_slots_with_token()
        .map_err(|e| startup(format!("cannot list slots: {}", brief(&e))))?;
    // Some modules fill optional token-info fields that cryptoki cannot parse (opencryptoki's
    // clock); keep the error so such a slot is not mistaken for an uninitialised one.
    let described: Vec<(Slot, Result<cryptoki::slot::TokenInfo, String>)> =
        slots.iter().map(|s| (*s, ctx.get_token_info(*s).map_err(|e| brief(&e)))).collect();
    let present = || {
        let labels: Vec<String> = described
            .iter()
            .map(|(s, t)| match t {
                Ok(t) if t.token_initialized() => format!("'{}' (slot {})", t.label(), s.id()),
                Ok(_) => format!("uninitialised (slot {})", s.id()),
                Err(e) => format!("unreadable token info (slot {}: {e})", s.id()),
            })
            .collect();
        if labels.is_empty() { "none".to_owned() } else { labels.join(", ") }
    };
    let chosen = match choice {
        TokenChoice::SlotId(id) => described.iter().find(|(s, _)| s.id() == *id),
        TokenChoice::First => {
            described.iter().find(|(_, t)| t.as_ref().is_ok_and(|t| t.token_initialized()))
        }
        TokenChoice::Match(sel) => described.iter().find(|(s, t)| {
            let Ok(t) = t else { return false };
            sel.token.as_deref().is_none_or(|l| l == t.label())
                && sel.serial.as_deref().is_none_or(|v| v == t.serial_number())
                && sel.model.as_deref().is_none_or(|v| v == t.model())
                && sel.manufacturer.as_deref().is_none_or(|v| v == t.manufacturer_id())
                && sel.slot_id.is_none_or(|id| id == s.id())
        }),
    };
    let Some((slot, info)) = chosen else {
        return Err(startup(format!(
            "no token matches {} (tokens present: {})",
            describe(choice),
            present()
        )));
    };
    match info {
        Ok(t) if !t.token_initialized() => Err(startup(format!(
            "the token in slot {} is not initialised (initialise it first, e.g. softhsm2-util --init-token)",
            slot.id()
        ))),
        // Chosen by slot number with unreadable info: logging in will tell.
        Err(e) => {
            tracing::warn!(slot = slot.id(), error = %e, "token info unreadable; using the slot as configured");
            Ok(*slot)
        }
        Ok(_) => Ok(*slot),
    }
}

fn describe(choice: &TokenChoice) -> String {
    match choice {
        TokenChoice::SlotId(id) => format!("slot_id = {id}"),
        TokenChoice::First => "any initialised token".into(),
        TokenChoice::Match(sel) => match (&sel.token, &sel.serial) {
            (Some(t), _) => format!("token label '{t}'"),
            (None, Some(s)) => format!("serial '{s}'"),
            _ => format!("{sel:?}"),
        },
    }
}

/// Token label, model and serial; tolerant of tokens whose optional fields do not parse.
fn read_token_info(ctx: &Pkcs11, slot: Slot) -> TokenInfo {
    match ctx.get_token_info(slot) {
        Ok(t) => TokenInfo {
            label: t.label().trim().to_owned(),
            manufacturer: t.manufacturer_id().trim().to_owned(),
            model: t.model().trim().to_owned(),
            serial: t.serial_number().trim().to_owned(),
        },
        Err(e) => {
            tracing::warn!(error = %brief(&e), "token info unavailable");
            TokenInfo { label: format!("slot {}", slot.id()), ..TokenInfo::default() }
        }
    }
}

impl Shared {
    /// Finalises and re-initialises the module, unless another session already did so
    /// since `seen_generation`.
    pub(crate) fn reinitialize(&self, seen_generation: u64) {
        let _one = self.reinit.lock().unwrap_or_else(|p| p.into_inner());
        if self.generation.load(Ordering::Acquire) != seen_generation {
            return;
        }
        tracing::warn!(module = %self.config.library_path.display(), "re-initialising the PKCS#11 module");
        write(&self.keys).clear();
        if let Err(e) = self.ctx.clone().finalize() {
            tracing::debug!(error = %brief(&e), "C_Finalize");
        }
        match self.ctx.initialize(init_args()) {
            Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {
                match find_slot(&self.ctx, &self.config.token) {
                    Ok(slot) => *write(&self.slot) = slot,
                    Err(e) => tracing::warn!(error = %e, "token not found after re-initialisation"),
                }
            }
            Err(e) => tracing::warn!(error = %brief(&e), "C_Initialize failed; will retry"),
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
    }
}

impl Backend for Pkcs11Backend {
    fn name(&self) -> &'static str {
        self.shared.config.name
    }

    fn open_session(&self) -> BackendResult<Box<dyn BackendSession>> {
        Ok(Box::new(session::Pkcs11Session::open(self.shared.clone())?))
    }

    fn token_info(&self) -> TokenInfo {
        read(&self.shared.token_info).clone()
    }

    fn supports_key_backup(&self) -> bool {
        self.shared.can_wrap
    }

    fn finalize(&self) {
        // Taking the re-initialisation lock keeps a late recovery from re-initialising
        // the module behind this call.
        let _one = self.shared.reinit.lock().unwrap_or_else(|p| p.into_inner());
        write(&self.shared.keys).clear();
        let others = self.shared.module.others();
        if others > 0 {
            // A hot swap to another token on the same module: the new backend lives on.
            tracing::info!(others, "PKCS#11 module left initialised: another backend uses it");
            return;
        }
        match self.shared.ctx.clone().finalize() {
            Ok(()) => tracing::info!("PKCS#11 module finalised"),
            Err(e) => tracing::warn!(error = %brief(&e), "C_Finalize failed"),
        }
    }
}
