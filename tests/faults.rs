//! Fault injection around the real PKCS#11 backend on SoftHSM2, under concurrent client
//! load, through an in-process daemon:
//!
//! * faults inside the retry budget are invisible: zero lost or wrong answers;
//! * faults beyond it give typed `SessionInvalid` errors in bounded time, never a hang;
//! * when faults stop, the daemon recovers fully without a restart;
//! * a real loss of the module's state (C_Finalize behind the daemon's back) is repaired.
//!
//! One test function only: SoftHSM2 reads `SOFTHSM2_CONF` once per process.

mod common;

use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::hooked::{Hook, Hooked};
use cryptoki::context::Function;
use cryptoki::error::{Error as CkError, RvError};
use harpocrates::client::{Client, Error};
use harpocrates_daemon::backend::BackendResult;
use harpocrates_daemon::backend::pkcs11::{Pkcs11Backend, Pkcs11Config, TokenChoice, errors, uri};
use harpocrates_daemon::config::{RawConfig, Settings};
use harpocrates_daemon::server;
use zeroize::Zeroizing;

const OFF: u8 = 0;
/// Each session thread fails two calls in a row, then lets one through.
const TWO_IN_THREE: u8 = 1;
/// Every call fails.
const ALWAYS: u8 = 2;

/// What to inject, shared by the test and every session.
#[derive(Default)]
struct Plan {
    mode: AtomicU8,
    injected: AtomicU64,
}

thread_local! {
    // Session actors live on fixed threads, and a request's retries run on its thread, so
    // a per-thread streak bounds the consecutive failures any one request can see.
    static STREAK: Cell<u32> = const { Cell::new(0) };
}

const FAULTS: [RvError; 4] = [
    RvError::DeviceError,
    RvError::SessionHandleInvalid,
    RvError::TokenNotPresent,
    RvError::SessionClosed,
];

impl Plan {
    fn check(&self, what: &str) -> BackendResult<()> {
        let fail = match self.mode.load(Ordering::SeqCst) {
            ALWAYS => true,
            TWO_IN_THREE => STREAK.with(|s| {
                let n = s.get();
                s.set(if n >= 2 { 0 } else { n + 1 });
                n < 2
            }),
            _ => false,
        };
        if !fail {
            return Ok(());
        }
        let n = self.injected.fetch_add(1, Ordering::SeqCst);
        let rv = FAULTS[n as usize % FAULTS.len()];
        Err(errors::map(CkError::Pkcs11(rv, Function::Encrypt), what))
    }
}

impl Hook for Plan {
    fn before(&self, what: &'static str) -> BackendResult<()> {
        self.check(what)
    }

    fn before_open(&self) -> BackendResult<()> {
        // Opening counts only when everything fails: a reopen must not use up the one
        // success in three that keeps requests inside the budget.
        if self.mode.load(Ordering::SeqCst) == ALWAYS {
            self.check("open session")?;
        }
        Ok(())
    }
}

/// Many clients each encrypt and decrypt their own messages; returns (ok, errors, slowest).
async fn load(
    socket: &std::path::Path,
    clients: usize,
    each: usize,
) -> (usize, Vec<Error>, Duration) {
    let mut tasks = Vec::new();
    for t in 0..clients {
        let c = Client::connect(socket).await.expect("connect");
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut errs, mut slowest) = (0, Vec::new(), Duration::ZERO);
            for i in 0..each {
                let msg = format!("client {t} message {i}");
                let started = Instant::now();
                let round = async {
                    let ct = c.encrypt("k", msg.as_bytes(), Some(b"fault")).await?;
                    c.decrypt("k", &ct, Some(b"fault")).await
                };
                match tokio::time::timeout(Duration::from_secs(30), round).await {
                    Ok(Ok(pt)) => {
                        assert_eq!(
                            pt.expose(),
                            msg.as_bytes(),
                            "a wrong answer is never acceptable"
                        );
                        ok += 1;
                    }
                    Ok(Err(e)) => errs.push(e),
                    Err(_) => panic!("a request hung"),
                }
                slowest = slowest.max(started.elapsed());
            }
            (ok, errs, slowest)
        }));
    }
    let mut total = (0, Vec::new(), Duration::ZERO);
    for t in tasks {
        let (ok, errs, slowest) = t.await.expect("client task");
        total.0 += ok;
        total.1.extend(errs);
        total.2 = total.2.max(slowest);
    }
    total
}

#[test]
fn faults_are_retried_bounded_and_recovered_from() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hsm = common::SoftHsm::init(&dir.path().join("softhsm"), "faults");
    // SAFETY: this binary's only test sets the variable before any thread that reads the
    // environment (SoftHSM2, inside Pkcs11Backend::open below) exists.
    unsafe { std::env::set_var("SOFTHSM2_CONF", &hsm.conf) };
    let inner = Pkcs11Backend::open(
        Pkcs11Config {
            library_path: common::SOFTHSM2_MODULE.into(),
            token: TokenChoice::Match(uri::TokenSelector {
                token: Some("faults".into()),
                ..Default::default()
            }),
            name: "pkcs11",
        },
        Zeroizing::new(common::PIN.into()),
    )
    .expect("open SoftHSM2 token");
    let plan = Arc::new(Plan::default());
    let backend = Hooked::new(Arc::new(inner.clone()), plan.clone());
    let settings = Settings::validate(RawConfig {
        socket_path: Some(dir.path().join("faults.sock")),
        max_sessions: Some(4),
        retry_attempts: Some(3),
        retry_delay: Some("5ms".into()),
        ..RawConfig::default()
    })
    .expect("settings");
    let daemon = server::spawn(settings, Arc::new(backend)).expect("daemon");
    let socket = daemon.socket_path().to_owned();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("rt");

    rt.block_on(async {
        let c = Client::connect(&socket).await.expect("connect");
        c.generate_key("k", 256).await.expect("keygen");

        // 1. Inside the budget: two failures in a row at most, three retries allowed.
        plan.mode.store(TWO_IN_THREE, Ordering::SeqCst);
        let (ok, errs, _) = load(&socket, 8, 50).await;
        let injected = plan.injected.load(Ordering::SeqCst);
        assert!(
            errs.is_empty(),
            "{} faults inside the budget leaked, first: {:?}",
            errs.len(),
            errs.first()
        );
        assert_eq!(ok, 400);
        assert!(injected >= 400, "the plan really injected faults ({injected})");

        // 2. Beyond the budget: typed errors, quickly, no hang.
        plan.mode.store(ALWAYS, Ordering::SeqCst);
        let (ok, errs, slowest) = load(&socket, 8, 10).await;
        assert_eq!(ok, 0);
        assert_eq!(errs.len(), 80);
        let other = errs.iter().find(|e| !matches!(e, Error::SessionInvalid(_)));
        assert!(other.is_none(), "only SessionInvalid expected, got {other:?}");
        // 4 attempts × 5 ms per request, queued behind at most a few others per session.
        assert!(slowest < Duration::from_secs(5), "bounded latency, got {slowest:?}");
        let health = c.health_check().await.expect("health answers even now");
        assert!(!health.token_reachable);

        // 3. Faults stop: full recovery without a restart.
        plan.mode.store(OFF, Ordering::SeqCst);
        let (ok, errs, _) = load(&socket, 8, 25).await;
        assert!(
            errs.is_empty(),
            "{} errors after faults stopped, first: {:?}",
            errs.len(),
            errs.first()
        );
        assert_eq!(ok, 200);
        assert!(c.health_check().await.expect("health").token_reachable);

        // 4. A real fault: the module is finalised behind the daemon's back, so every open
        //    session and the login are gone. (Between requests: PKCS#11 forbids C_Finalize
        //    while other calls are in progress, and SoftHSM2 crashes if it happens.)
        inner.context().clone().finalize().expect("C_Finalize");
        let (ok, errs, _) = load(&socket, 8, 50).await;
        assert!(
            errs.is_empty(),
            "a re-initialisation inside the budget must be invisible: {} errors, first: {:?}",
            errs.len(),
            errs.first()
        );
        assert_eq!(ok, 400);
        let ct = c.encrypt("k", b"after", None).await.expect("encrypt after re-init");
        assert_eq!(c.decrypt("k", &ct, None).await.expect("decrypt").expose(), b"after");
    });
    drop(rt);
    daemon.stop();
}
