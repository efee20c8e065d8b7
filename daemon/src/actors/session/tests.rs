//! Worker logic against the real soft token, with faults injected around it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use harpocrates_protocol::{ErrorCode, Request, Response, SecretBytes, TokenInfo};
use zeroize::Zeroizing;

use super::*;
use crate::backend::soft::store::KdfParams;
use crate::backend::soft::{SoftConfig, SoftToken};

/// Wraps a real backend; the next `fail_next` session calls fail as a broken session would.
struct Flaky {
    inner: Arc<SoftToken>,
    fail_next: Arc<AtomicU32>,
    opened: Arc<AtomicU32>,
}

struct FlakySession {
    inner: Box<dyn BackendSession>,
    fail_next: Arc<AtomicU32>,
}

impl FlakySession {
    fn fault(&self) -> BackendResult<()> {
        let left = self.fail_next.load(Ordering::SeqCst);
        if left > 0 {
            self.fail_next.store(left - 1, Ordering::SeqCst);
            return Err(BackendError::SessionBroken("CKR_DEVICE_ERROR (injected)".into()));
        }
        Ok(())
    }
}

impl Backend for Flaky {
    fn name(&self) -> &'static str {
        "flaky"
    }
    fn open_session(&self) -> BackendResult<Box<dyn BackendSession>> {
        self.opened.fetch_add(1, Ordering::SeqCst);
        Ok(Box::new(FlakySession {
            inner: self.inner.open_session()?,
            fail_next: self.fail_next.clone(),
        }))
    }
    fn token_info(&self) -> TokenInfo {
        self.inner.token_info()
    }
    fn supports_key_backup(&self) -> bool {
        false
    }
}

impl BackendSession for FlakySession {
    fn generate_random(&mut self, len: usize) -> BackendResult<SecretBytes> {
        self.fault()?;
        self.inner.generate_random(len)
    }
    fn generate_key(
        &mut self,
        l: &str,
        a: &KeyAttributes,
    ) -> BackendResult<harpocrates_protocol::KeyInfo> {
        self.fault()?;
        self.inner.generate_key(l, a)
    }
    fn list_keys(&mut self) -> BackendResult<Vec<harpocrates_protocol::KeyInfo>> {
        self.fault()?;
        self.inner.list_keys()
    }
    fn encrypt(&mut self, k: &str, p: &[u8], a: &[u8]) -> BackendResult<Vec<u8>> {
        self.fault()?;
        self.inner.encrypt(k, p, a)
    }
    fn decrypt(&mut self, k: &str, c: &[u8], a: &[u8]) -> BackendResult<SecretBytes> {
        self.fault()?;
        self.inner.decrypt(k, c, a)
    }
    fn destroy_key(&mut self, l: &str) -> BackendResult<()> {
        self.fault()?;
        self.inner.destroy_key(l)
    }
    fn probe(&mut self) -> BackendResult<()> {
        self.fault()?;
        self.inner.probe()
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    fail_next: Arc<AtomicU32>,
    opened: Arc<AtomicU32>,
    worker: SessionWorker,
}

fn fixture(attempts: u32, session_timeout: Duration) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = SoftConfig {
        state_dir: dir.path().to_owned(),
        kdf: KdfParams { memory_kib: 64, iterations: 1, parallelism: 1 },
    };
    let token = SoftToken::open(&cfg, &Zeroizing::new("pin".into())).expect("soft token");
    let fail_next = Arc::new(AtomicU32::new(0));
    let opened = Arc::new(AtomicU32::new(0));
    let backend = Flaky { inner: token, fail_next: fail_next.clone(), opened: opened.clone() };
    let shared = Arc::new(PoolShared {
        usage: super::usage::UsageLedger::new(super::usage::NIST_RANDOM_IV_LIMIT),
        backend: Arc::new(backend),
        max_sessions: 1,
        active: AtomicU32::new(0),
        retry: RetryPolicy { attempts, delay: Duration::from_millis(1) },
        session_timeout,
        started: Instant::now(),
        generation: super::GenerationStamp::first(),
    });
    Fixture { _dir: dir, fail_next, opened, worker: SessionWorker::new(shared) }
}

fn encrypt(key: &str) -> Request {
    Request::Encrypt { key: key.into(), plaintext: b"hello".to_vec().into(), aad: None }
}

#[test]
fn faults_within_the_budget_are_invisible() {
    let mut f = fixture(3, Duration::from_secs(60));
    f.worker.execute(&Request::GenerateKey { label: "k".into(), size_bits: 256 }).expect("keygen");
    f.fail_next.store(3, Ordering::SeqCst);
    let ct = match f.worker.execute(&encrypt("k")) {
        Ok(Response::Ciphertext(ct)) => ct,
        other => panic!("expected a ciphertext, got {other:?}"),
    };
    assert_eq!(f.opened.load(Ordering::SeqCst), 4, "one open plus three reopens");
    let back = f.worker.execute(&Request::Decrypt { key: "k".into(), ciphertext: ct, aad: None });
    assert!(matches!(back, Ok(Response::Plaintext(p)) if p.expose() == b"hello"));
}

#[test]
fn faults_beyond_the_budget_give_session_invalid_then_recover() {
    let mut f = fixture(2, Duration::from_secs(60));
    f.worker.execute(&Request::GenerateKey { label: "k".into(), size_bits: 128 }).expect("keygen");
    f.fail_next.store(10, Ordering::SeqCst);
    let err = f.worker.execute(&encrypt("k")).expect_err("budget spent");
    assert_eq!(err.code, ErrorCode::SessionInvalid);
    assert!(err.message.contains("3 attempts"), "{}", err.message);
    assert!(!f.worker.has_session(), "a broken session is not kept");
    f.fail_next.store(0, Ordering::SeqCst);
    assert!(f.worker.execute(&encrypt("k")).is_ok(), "recovers once faults stop");
}

#[test]
fn final_errors_are_not_retried() {
    let mut f = fixture(3, Duration::from_secs(60));
    let err = f.worker.execute(&encrypt("missing")).expect_err("no such key");
    assert_eq!(err.code, ErrorCode::KeyNotFound);
    assert_eq!(f.opened.load(Ordering::SeqCst), 1);
}

#[test]
fn idle_sessions_are_recycled() {
    let mut f = fixture(0, Duration::from_millis(20));
    f.worker.execute(&Request::ListKeys).expect("list");
    f.worker.execute(&Request::ListKeys).expect("list");
    assert_eq!(f.opened.load(Ordering::SeqCst), 1, "a busy session is kept");
    std::thread::sleep(Duration::from_millis(40));
    f.worker.execute(&Request::ListKeys).expect("list");
    assert_eq!(f.opened.load(Ordering::SeqCst), 2, "an idle one is reopened");
}

#[test]
fn health_reports_an_unreachable_token_without_failing() {
    let mut f = fixture(1, Duration::from_secs(60));
    f.fail_next.store(100, Ordering::SeqCst);
    match f.worker.execute(&Request::HealthCheck) {
        Ok(Response::Health(h)) => {
            assert!(!h.token_reachable);
            assert_eq!(h.state, HealthState::Unhealthy);
        }
        other => panic!("expected health, got {other:?}"),
    }
    f.fail_next.store(0, Ordering::SeqCst);
    match f.worker.execute(&Request::HealthCheck) {
        Ok(Response::Health(h)) => {
            assert!(h.token_reachable);
            assert_eq!((h.active_sessions, h.max_sessions), (1, 1));
        }
        other => panic!("expected health, got {other:?}"),
    }
}

#[test]
fn non_session_requests_are_refused() {
    let mut f = fixture(0, Duration::from_secs(60));
    let err = f.worker.execute(&Request::Ping).expect_err("not a session op");
    assert_eq!(err.code, ErrorCode::InvalidRequest);
}
