//! A real soft token whose every call blocks while its gate is shut: a wedged HSM path,
//! for the watchdog and for requests held in flight across a reload.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use harpocrates::protocol::{KeyAttributes, KeyInfo, SecretBytes, TokenInfo};
use harpocrates_daemon::backend::soft::SoftToken;
use harpocrates_daemon::backend::{Backend, BackendResult, BackendSession};
use harpocrates_daemon::config::{BackendSettings, Settings};

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

    fn pass(&self) {
        while self.0.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// The soft token `settings` configure, behind `gate`.
pub struct Hanging {
    inner: Arc<SoftToken>,
    gate: Arc<Gate>,
}

impl Hanging {
    /// Opens the soft token of `settings` (a soft-token configuration).
    pub fn open(settings: &Settings, gate: Arc<Gate>) -> Self {
        let BackendSettings::Soft(soft) = &settings.backend else {
            panic!("a soft-token configuration");
        };
        let pin = settings.pin.load().expect("pin");
        Self { inner: SoftToken::open(soft, &pin).expect("soft token"), gate }
    }
}

struct HangingSession {
    inner: Box<dyn BackendSession>,
    gate: Arc<Gate>,
}

impl Backend for Hanging {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn open_session(&self) -> BackendResult<Box<dyn BackendSession>> {
        Ok(Box::new(HangingSession { inner: self.inner.open_session()?, gate: self.gate.clone() }))
    }
    fn token_info(&self) -> TokenInfo {
        self.inner.token_info()
    }
    fn supports_key_backup(&self) -> bool {
        self.inner.supports_key_backup()
    }
}

impl BackendSession for HangingSession {
    fn generate_random(&mut self, len: usize) -> BackendResult<SecretBytes> {
        self.gate.pass();
        self.inner.generate_random(len)
    }
    fn generate_key(&mut self, label: &str, a: &KeyAttributes) -> BackendResult<KeyInfo> {
        self.gate.pass();
        self.inner.generate_key(label, a)
    }
    fn list_keys(&mut self) -> BackendResult<Vec<KeyInfo>> {
        self.gate.pass();
        self.inner.list_keys()
    }
    fn encrypt(&mut self, key: &str, p: &[u8], aad: &[u8]) -> BackendResult<Vec<u8>> {
        self.gate.pass();
        self.inner.encrypt(key, p, aad)
    }
    fn decrypt(&mut self, key: &str, c: &[u8], aad: &[u8]) -> BackendResult<SecretBytes> {
        self.gate.pass();
        self.inner.decrypt(key, c, aad)
    }
    fn destroy_key(&mut self, label: &str) -> BackendResult<()> {
        self.gate.pass();
        self.inner.destroy_key(label)
    }
    fn probe(&mut self) -> BackendResult<()> {
        self.gate.pass();
        self.inner.probe()
    }
}
