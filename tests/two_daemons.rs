//! Two daemons on one SoftHSM2 token (two processes, one token directory): they agree on
//! KEK versions because the state lives in the token; after one commits a rotation the
//! other moves to the new version within its `kek_refresh`, and each decrypts everything
//! either produced. Rotation steps raced from both daemons at once never give two keys
//! one version, and two daemons started at the same instant both come up.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::{Daemon, PIN, SOFTHSM2_MODULE, SoftHsm, TOKEN_LABEL, Token};
use harpocrates::client::{Client, Error, KekVersionState, RotationStep};

/// The `[pkcs11]` section of a second daemon on the fixture token.
fn same_token() -> String {
    format!("library_path = {SOFTHSM2_MODULE:?}\ntoken_label = {TOKEN_LABEL:?}")
}

fn version_of(ct: &[u8]) -> u32 {
    let n = usize::from(ct[1]);
    u32::from_be_bytes(ct[2 + n..6 + n].try_into().expect("4 bytes"))
}

#[tokio::test]
async fn two_daemons_share_kek_state_through_the_token() {
    let refresh = Duration::from_millis(300);
    let a = Daemon::start_on(Token::SoftHsm, "kek_refresh = \"300ms\"");
    let conf = a.softhsm.as_ref().expect("softhsm").conf.to_str().expect("utf-8").to_owned();
    let b = Daemon::start_external(
        PIN,
        &same_token(),
        "kek_refresh = \"300ms\"",
        &[("SOFTHSM2_CONF", &conf)],
    );
    let (ca, cb) = (
        Client::connect(&a.socket).await.expect("a"),
        Client::connect(&b.socket).await.expect("b"),
    );

    ca.generate_kek("shared").await.expect("kek on a");
    let from_a =
        ca.encrypt_with_context("shared", b"ctx", b"from a at v1", None).await.expect("seal on a");
    assert_eq!(cb.list_keks().await.expect("b lists").len(), 1, "b sees a's KEK");
    let from_b =
        cb.encrypt_with_context("shared", b"ctx", b"from b at v1", None).await.expect("seal on b");
    assert_eq!(version_of(&from_b), 1);
    assert_eq!(
        cb.decrypt_with_context(b"ctx", &from_a, None).await.expect("b opens a's").expose(),
        b"from a at v1"
    );

    for step in [RotationStep::Prepare, RotationStep::Validate, RotationStep::Commit] {
        ca.rotate("shared", step).await.expect("rotate on a");
    }
    let committed = Instant::now();
    // b moves to v2 for new data within its refresh period (plus scheduling slack).
    let from_b2 = loop {
        let ct = cb
            .encrypt_with_context("shared", b"ctx", b"from b after", None)
            .await
            .expect("seal on b");
        if version_of(&ct) == 2 {
            break ct;
        }
        assert!(
            committed.elapsed() < refresh * 3,
            "b still used v1 after {:?}",
            committed.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(committed.elapsed() < refresh * 3);
    let from_a2 =
        ca.encrypt_with_context("shared", b"ctx", b"from a after", None).await.expect("seal on a");
    assert_eq!(version_of(&from_a2), 2);

    for (ct, text) in [
        (&from_a, &b"from a at v1"[..]),
        (&from_b, b"from b at v1"),
        (&from_a2, b"from a after"),
        (&from_b2, b"from b after"),
    ] {
        for c in [&ca, &cb] {
            assert_eq!(
                c.decrypt_with_context(b"ctx", ct, None).await.expect("decrypt").expose(),
                text
            );
        }
    }
    // A rotation on b is seen by a: both agree on the state in the token.
    for step in [RotationStep::Prepare, RotationStep::Validate, RotationStep::Commit] {
        cb.rotate("shared", step).await.expect("rotate on b");
    }
    assert_eq!(
        ca.rotate("shared", RotationStep::Status).await.expect("status on a").active_version,
        3
    );
}

/// Rounds each daemon runs in the race (`HARPOCRATES_RACE_ROUNDS` overrides).
fn race_rounds() -> usize {
    std::env::var("HARPOCRATES_RACE_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(100)
}

/// One daemon's side of the race: an envelope encryption, then prepare, validate and
/// commit (every seventh round on `b`, rollback instead). A step the other daemon made
/// illegal gets `invalid_state`; anything else is a failure.
fn race(
    socket: PathBuf,
    who: &'static str,
    rounds: usize,
    start: Arc<Barrier>,
) -> Vec<(Vec<u8>, String)> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
    rt.block_on(async move {
        let c = Client::connect(&socket).await.expect("connect");
        start.wait();
        let mut sealed = Vec::with_capacity(rounds);
        for i in 0..rounds {
            let text = format!("{who} round {i}");
            let ct = c
                .encrypt_with_context("race", b"ctx", text.as_bytes(), None)
                .await
                .unwrap_or_else(|e| panic!("{who} round {i}: seal: {e}"));
            sealed.push((ct, text));
            let last = if who == "b" && i % 7 == 3 {
                RotationStep::Rollback
            } else {
                RotationStep::Commit
            };
            for step in [RotationStep::Prepare, RotationStep::Validate, last] {
                match c.rotate("race", step).await {
                    Ok(_) | Err(Error::InvalidState(_)) => {}
                    Err(e) => panic!("{who} round {i}: {step:?}: {e}"),
                }
            }
        }
        sealed
    })
}

/// What both daemons logged about keys they destroyed, writes they lost, and anything
/// that went wrong: enough to tell which state each destroy was based on.
fn race_logs(a: &Daemon, b: &Daemon) -> String {
    [("a", a), ("b", b)]
        .iter()
        .flat_map(|(who, d)| {
            d.output()
                .lines()
                .filter(|l| {
                    ["WARN", "ERROR", "sweeping", "write that lost", "removed keys", "destroy"]
                        .iter()
                        .any(|k| l.contains(k))
                })
                .map(|l| format!("{who}: {l}"))
                .collect::<Vec<_>>()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Creates and destroys a data object from another process (OpenSC's `pkcs11-tool`), which
/// makes every SoftHSM2 process re-read the token directory.
fn touch_token(hsm: &SoftHsm) {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("touch");
    std::fs::write(&file, b"touch").expect("touch file");
    let file = file.to_str().expect("utf-8");
    let login = ["--token-label", TOKEN_LABEL, "--login", "--pin", PIN];
    let object = ["--type", "data", "--label", "harpocrates-test-touch"];
    hsm.pkcs11_tool(&[&login[..], &["--write-object", file], &object[..]].concat());
    hsm.pkcs11_tool(&[&login[..], &["--delete-object"], &object[..]].concat());
}

/// Labels of the KEK keys in the token, with how many objects carry each.
fn kek_key_labels(hsm: &SoftHsm, kek: &str) -> BTreeMap<String, usize> {
    let listing = hsm.list_objects("secrkey");
    let prefix = format!("#kek/{kek}/v");
    let mut counts = BTreeMap::new();
    for line in listing.lines() {
        let Some(label) = line.trim().strip_prefix("label:") else { continue };
        let label = label.trim().trim_matches('\'');
        if label.starts_with(&prefix) {
            *counts.entry(label.to_owned()).or_insert(0) += 1;
        }
    }
    counts
}

#[test]
fn racing_rotations_on_two_daemons_keep_one_key_per_version() {
    let rounds = race_rounds();
    let started = Instant::now();
    let a = Daemon::start_on(Token::SoftHsm, "kek_refresh = \"300ms\"");
    let hsm = a.softhsm.as_ref().expect("softhsm");
    let conf = hsm.conf.to_str().expect("utf-8").to_owned();
    let b = Daemon::start_external(
        PIN,
        &same_token(),
        "kek_refresh = \"300ms\"",
        &[("SOFTHSM2_CONF", &conf)],
    );
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
    let (ca, cb) = rt.block_on(async {
        (Client::connect(&a.socket).await.expect("a"), Client::connect(&b.socket).await.expect("b"))
    });
    rt.block_on(ca.generate_kek("race")).expect("kek");

    let start = Arc::new(Barrier::new(2));
    let threads: Vec<_> = [(a.socket.clone(), "a"), (b.socket.clone(), "b")]
        .into_iter()
        .map(|(socket, who)| {
            let start = start.clone();
            std::thread::spawn(move || race(socket, who, rounds, start))
        })
        .collect();
    let joined: Vec<_> = threads.into_iter().map(|t| t.join()).collect();
    if joined.iter().any(Result::is_err) {
        panic!("a racing thread failed (see above); the daemons said:\n{}", race_logs(&a, &b));
    }
    let sealed: Vec<(Vec<u8>, String)> = joined.into_iter().flatten().flatten().collect();
    let raced = started.elapsed();
    // SoftHSM2's file store may hide from a daemon the objects the other daemon created
    // just before this one's own last write, until some other process writes (see
    // docs/pkcs11.md, "SoftHSM2 across processes"). Another process's write ends that,
    // as the next rotation would in service.
    touch_token(hsm);

    // Every acknowledged ciphertext opens on both daemons.
    rt.block_on(async {
        for (ct, text) in &sealed {
            for (c, on) in [(&ca, "a"), (&cb, "b")] {
                let opened = c.decrypt_with_context(b"ctx", ct, None).await.unwrap_or_else(|e| {
                    panic!("'{text}' does not open on {on}: {e}\n{}", race_logs(&a, &b))
                });
                assert_eq!(opened.expose(), text.as_bytes());
            }
        }
    });

    // Both daemons report the same state, read from the token.
    let (la, lb) = rt.block_on(async {
        (ca.list_keks().await.expect("list on a"), cb.list_keks().await.expect("list on b"))
    });
    assert_eq!(la, lb, "the daemons disagree about the KEK");
    let info = la.into_iter().find(|k| k.name == "race").expect("race KEK listed");
    assert!(info.active_version > 1, "no rotation ever committed: {info:?}");

    // One key object per label; a live version has both keys, a destroyed one none.
    let counts = kek_key_labels(hsm, "race");
    for (label, n) in &counts {
        assert_eq!(*n, 1, "{n} objects share {label}: {counts:?}");
    }
    for v in &info.versions {
        let present = ["aes", "mac"]
            .iter()
            .filter(|k| counts.contains_key(&format!("#kek/race/v{}/{k}", v.version)))
            .count();
        let want = if v.state == KekVersionState::Destroyed { 0 } else { 2 };
        assert_eq!(present, want, "v{} ({:?}) has {present} keys: {counts:?}", v.version, v.state);
    }
    assert!(
        counts.len() <= 2 * info.versions.len(),
        "keys of versions the state does not know: {counts:?}"
    );
    eprintln!(
        "{rounds} rounds per daemon raced in {raced:?}; {} versions, active v{}",
        info.versions.len(),
        info.active_version
    );
}

/// Keeps the token busy the way another host's daemon would: keys created and destroyed
/// in a loop (each rewrites the token's files) until `stop` is set.
fn keep_token_busy(conf: String, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let tool = |args: &[&str]| {
            let _ = std::process::Command::new("pkcs11-tool")
                .args(["--module", SOFTHSM2_MODULE, "--token-label", TOKEN_LABEL, "--login"])
                .args(["--pin", PIN])
                .args(args)
                .env("SOFTHSM2_CONF", &conf)
                .output();
        };
        while !stop.load(Ordering::Relaxed) {
            tool(&["--keygen", "--key-type", "AES:32", "--label", "busy"]);
            tool(&["--delete-object", "--type", "secrkey", "--label", "busy"]);
        }
    })
}

#[test]
fn two_daemons_started_at_the_same_instant_both_come_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hsm = SoftHsm::init(&dir.path().join("softhsm"), TOKEN_LABEL);
    let conf = hsm.conf.to_str().expect("utf-8").to_owned();
    let stop = Arc::new(AtomicBool::new(false));
    let busy = keep_token_busy(conf.clone(), stop.clone());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
    for round in 0..15 {
        let start = Arc::new(Barrier::new(2));
        let daemons: Vec<_> = (0..2)
            .map(|_| {
                let (start, conf) = (start.clone(), conf.clone());
                std::thread::spawn(move || {
                    start.wait();
                    // A budget of 20 × 10 ms: the token is unreadable only for moments.
                    Daemon::start_external(
                        PIN,
                        &same_token(),
                        "retry_attempts = 20",
                        &[("SOFTHSM2_CONF", &conf)],
                    )
                })
            })
            .collect();
        let joined: Vec<_> = daemons.into_iter().map(|t| t.join()).collect();
        if joined.iter().any(Result::is_err) {
            stop.store(true, Ordering::Relaxed);
            panic!("round {round}: a daemon did not come up");
        }
        for mut d in joined.into_iter().flatten() {
            assert!(d.is_running(), "round {round}");
            let c = rt.block_on(Client::connect(&d.socket)).expect("connect");
            rt.block_on(c.list_keks()).expect("serves requests");
        }
    }
    stop.store(true, Ordering::Relaxed);
    busy.join().expect("busy thread");
}

/// Env var that makes `softhsm2_view_helper` run (it is a child of the test below).
const VIEW_HELPER_CONF: &str = "HARPOCRATES_TEST_VIEW_CONF";

/// SoftHSM2 2.6.1's file store, across processes: an object another process created just
/// before this process's own create is not found by this process, until yet another
/// process writes. This is why the KEK state is claimed by destroying a baton rather than
/// decided from what a process sees (docs/pkcs11.md, "SoftHSM2 across processes").
#[test]
fn softhsm2_hides_another_process_object_created_before_an_own_write() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hsm = SoftHsm::init(&dir.path().join("softhsm"), TOKEN_LABEL);
    let out = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", "softhsm2_view_helper", "--ignored", "--nocapture", "--test-threads=1"])
        .env(VIEW_HELPER_CONF, &hsm.conf)
        .env("SOFTHSM2_CONF", &hsm.conf)
        .output()
        .expect("run the helper");
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "helper failed:\n{text}");
    assert!(text.contains("view helper done"), "the helper did not run:\n{text}");
}

/// The process whose view is observed: searches, lets `pkcs11-tool` create an object,
/// creates one itself, and searches again.
#[test]
#[ignore = "helper: run by softhsm2_hides_another_process_object_created_before_an_own_write"]
fn softhsm2_view_helper() {
    use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
    use cryptoki::object::{Attribute, ObjectClass};
    use cryptoki::session::UserType;
    use cryptoki::types::AuthPin;

    let Ok(conf) = std::env::var(VIEW_HELPER_CONF) else { return };
    let hsm = SoftHsm { conf: conf.into() };
    let ctx = Pkcs11::new(SOFTHSM2_MODULE).expect("load SoftHSM2");
    ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)).expect("initialise");
    let slot = ctx
        .get_slots_with_token()
        .expect("slots")
        .into_iter()
        .find(|s| ctx.get_token_info(*s).is_ok_and(|t| t.label() == TOKEN_LABEL))
        .expect("fixture token");
    let session = ctx.open_rw_session(slot).expect("session");
    session.login(UserType::User, Some(&AuthPin::from(PIN.to_owned()))).expect("login");
    let data = |label: &str| {
        vec![Attribute::Class(ObjectClass::DATA), Attribute::Label(label.as_bytes().to_vec())]
    };
    let count = |label: &str| session.find_objects(&data(label)).expect("find").len();
    let tool_writes = |label: &str| {
        let file = std::env::temp_dir().join(format!("harpocrates-view-{}", std::process::id()));
        std::fs::write(&file, b"x").expect("value file");
        hsm.pkcs11_tool(&[
            "--token-label",
            TOKEN_LABEL,
            "--login",
            "--pin",
            PIN,
            "--write-object",
            file.to_str().expect("utf-8"),
            "--type",
            "data",
            "--label",
            label,
        ]);
        let _ = std::fs::remove_file(&file);
    };

    assert_eq!(count("other"), 0, "a fresh token");
    tool_writes("other");
    assert_eq!(count("other"), 1, "seen by a search after the other process's create");
    tool_writes("other-2");
    let mut own = data("own");
    own.extend([Attribute::Token(true), Attribute::Value(b"x".to_vec())]);
    session.create_object(&own).expect("own object");
    assert_eq!(
        count("other-2"),
        0,
        "SoftHSM2 no longer hides an object another process created just before our own \
         create: docs/pkcs11.md needs updating"
    );
    tool_writes("other-3");
    assert_eq!(count("other-2"), 1, "seen once another process writes again");
    println!("view helper done");
}
