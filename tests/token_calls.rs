//! How many PKCS#11 calls an operation costs, counted by OpenSC's call-tracing module
//! (`pkcs11-spy`) placed between the daemon and SoftHSM2. On a network HSM every call is
//! a network round trip, so the hot path must make no call a direct PKCS#11 user would
//! not: one `C_EncryptInit` + one `C_Encrypt` per encryption (no length query, no key
//! lookup once the handle is cached) and IVs drawn from the token for many operations at
//! once, not one `C_GenerateRandom` each.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::{Daemon, PIN, SOFTHSM2_MODULE, SoftHsm, TOKEN_LABEL};
use harpocrates::client::Client;

/// Debian's `opensc-pkcs11` puts the tracing module here.
const SPY_MODULE: &str = "/usr/lib/x86_64-linux-gnu/pkcs11/pkcs11-spy.so";

/// IVs the daemon draws from the token per `C_GenerateRandom`.
const IVS_PER_DRAW: usize = 64;

/// The spy's log: one `N: C_Name` line per call, with its arguments below.
struct SpyLog {
    path: PathBuf,
    seen: usize,
}

impl SpyLog {
    /// Calls logged since the last look, by name.
    fn calls_since_last(&mut self) -> BTreeMap<String, usize> {
        let text = std::fs::read_to_string(&self.path).expect("spy log");
        let mut calls = BTreeMap::new();
        let names: Vec<&str> = text
            .lines()
            .filter_map(|l| l.split_once(": C_"))
            .filter(|(n, _)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            .map(|(_, f)| f.trim())
            .collect();
        for name in &names[self.seen..] {
            *calls.entry(format!("C_{name}")).or_insert(0) += 1;
        }
        self.seen = names.len();
        calls
    }
}

fn counts(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
    pairs.iter().filter(|(_, n)| *n > 0).map(|(k, n)| ((*k).to_owned(), *n)).collect()
}

fn start(dir: &Path) -> (Daemon, SpyLog) {
    assert!(
        Path::new(SPY_MODULE).exists(),
        "{SPY_MODULE} is missing: install OpenSC (apt-get install opensc), as .ci/run does"
    );
    let hsm = SoftHsm::init(&dir.join("softhsm"), TOKEN_LABEL);
    let log = dir.join("spy.log");
    let conf = hsm.conf.to_str().expect("utf-8 path").to_owned();
    let log_text = log.to_str().expect("utf-8 path").to_owned();
    let daemon = Daemon::start_external(
        PIN,
        &format!("library_path = {SPY_MODULE:?}\ntoken_label = {TOKEN_LABEL:?}\n"),
        // One session, so every operation draws on the same reserve of IVs.
        "max_sessions = 1\n",
        &[
            ("PKCS11SPY", SOFTHSM2_MODULE),
            ("PKCS11SPY_OUTPUT", &log_text),
            ("SOFTHSM2_CONF", &conf),
        ],
    );
    (daemon, SpyLog { path: log, seen: 0 })
}

#[tokio::test]
async fn encrypt_decrypt_and_batches_make_the_fewest_token_calls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (daemon, mut spy) = start(dir.path());
    let c = Client::connect(&daemon.socket).await.expect("connect");
    c.generate_key("k", 256).await.expect("key");
    spy.calls_since_last();
    // The first encryption looks the key up and draws the first IVs.
    let first = c.encrypt("k", b"warm-up", None).await.expect("encrypt");
    let warm = spy.calls_since_last();
    assert_eq!(warm.get("C_GenerateRandom"), Some(&1), "{warm:?}");
    let mut ivs_left = IVS_PER_DRAW - 1;

    // Single encryptions: exactly one init and one call each, nothing else.
    let mut sealed = Vec::new();
    for i in 0..10u8 {
        sealed.push(c.encrypt("k", &[i; 64], Some(b"aad")).await.expect("encrypt"));
    }
    ivs_left -= 10;
    assert_eq!(spy.calls_since_last(), counts(&[("C_EncryptInit", 10), ("C_Encrypt", 10)]));

    // Decryptions: one init and one call each.
    for (i, ct) in sealed.iter().enumerate() {
        let plain = c.decrypt("k", ct, Some(b"aad")).await.expect("decrypt");
        assert_eq!(plain.expose(), &[i as u8; 64]);
    }
    assert_eq!(c.decrypt("k", &first, None).await.expect("decrypt").expose(), b"warm-up");
    assert_eq!(spy.calls_since_last(), counts(&[("C_DecryptInit", 11), ("C_Decrypt", 11)]));

    // A batch of 200: one init and one call per element, and IVs drawn 64 at a time.
    let n = 200;
    let mut batch = c.batch();
    for _ in 0..n {
        batch = batch.encrypt("k", &[7; 4096], None);
    }
    let answers = batch.send().await.expect("batch");
    assert_eq!(answers.len(), n);
    assert!(answers.iter().all(|a| a.is_ok()), "{:?}", answers.iter().find(|a| a.is_err()));
    let draws = (n - ivs_left).div_ceil(IVS_PER_DRAW);
    assert_eq!(
        spy.calls_since_last(),
        counts(&[("C_EncryptInit", n), ("C_Encrypt", n), ("C_GenerateRandom", draws)])
    );

    // Random bytes: one call per request.
    for _ in 0..5 {
        assert_eq!(c.generate_random(32).await.expect("random").expose().len(), 32);
    }
    assert_eq!(spy.calls_since_last(), counts(&[("C_GenerateRandom", 5)]));
    drop(c);
    let mut daemon = daemon;
    assert!(daemon.signal_and_wait(libc::SIGTERM).success());
}
