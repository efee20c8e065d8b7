//! A real backend with a hook that runs before every token call: fault injection
//! (`tests/faults.rs`) and a wedged token path (the watchdog, stop and reload tests).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use harpocrates::protocol::{KeyAttributes, KeyInfo, SecretBytes, TokenInfo};
use harpocrates_daemon::backend::soft::SoftToken;
use harpocrates_daemon::backend::{Backend, BackendResult, BackendSession};
use harpocrates_daemon::config::{BackendSettings, Settings};

/// What runs before the wrapped backend is called.
pub trait Hook: Send + Sync {
    /// Before the token call `what`; an error is answered instead of calling the token.
    fn before(&self, what: &'static str) -> BackendResult<()>;

    /// Before a session is opened.
    fn before_open(&self) -> BackendResult<()> {
        Ok(())
    }
}

/// `inner` with `hook` in front of every call.
pub struct Hooked {
    inner: Arc<dyn Backend>,
    hook: Arc<dyn Hook>,
}

impl Hooked {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Backend>, hook: Arc<dyn Hook>) -> Self {
        Self { inner, hook }
    }
}

struct HookedSession {
    inner: Box<dyn BackendSession>,
    hook: Arc<dyn Hook>,
}

impl Backend for Hooked {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn open_session(&self) -> BackendResult<Box<dyn BackendSession>> {
        self.hook.before_open()?;
        Ok(Box::new(HookedSession { inner: self.inner.open_session()?, hook: self.hook.clone() }))
    }
    fn token_info(&self) -> TokenInfo {
        self.inner.token_info()
    }
    fn supports_key_backup(&self) -> bool {
        self.inner.supports_key_backup()
    }
}

impl BackendSession for HookedSession {
    fn generate_random(&mut self, len: usize) -> BackendResult<SecretBytes> {
        self.hook.before("random")?;
        self.inner.generate_random(len)
    }
    fn generate_key(&mut self, label: &str, a: &KeyAttributes) -> BackendResult<KeyInfo> {
        self.hook.before("keygen")?;
        self.inner.generate_key(label, a)
    }
    fn list_keys(&mut self) -> BackendResult<Vec<KeyInfo>> {
        self.hook.before("list")?;
        self.inner.list_keys()
    }
    fn encrypt(&mut self, key: &str, p: &[u8], aad: &[u8]) -> BackendResult<Vec<u8>> {
        self.hook.before("encrypt")?;
        self.inner.encrypt(key, p, aad)
    }
    fn decrypt(&mut self, key: &str, c: &[u8], aad: &[u8]) -> BackendResult<SecretBytes> {
        self.hook.before("decrypt")?;
        self.inner.decrypt(key, c, aad)
    }
    fn destroy_key(&mut self, label: &str) -> BackendResult<()> {
        self.hook.before("destroy")?;
        self.inner.destroy_key(label)
    }
    fn probe(&mut self) -> BackendResult<()> {
        self.hook.before("probe")?;
        self.inner.probe()
    }
}

/// Shut: every token call waits until it opens.
#[derive(Default)]
pub struct Gate(AtomicBool);

impl Gate {
    /// Calls from now on wait.
    pub fn shut(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Waiting calls go on.
    pub fn open(&self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

impl Hook for Gate {
    fn before(&self, _: &'static str) -> BackendResult<()> {
        while self.0.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }
}

/// The soft token `settings` configure (a soft-token configuration), behind `gate`.
pub fn gated_soft_token(settings: &Settings, gate: Arc<Gate>) -> Hooked {
    let BackendSettings::Soft(soft) = &settings.backend else {
        panic!("a soft-token configuration");
    };
    let pin = settings.pin.load().expect("pin");
    // The soft backend is the shared handle `open` returns.
    let token: Arc<SoftToken> = SoftToken::open(soft, &pin).expect("soft token");
    Hooked::new(Arc::new(token), gate)
}
