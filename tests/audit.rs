//! The audit trail end to end: what the daemon records, that its hash chain holds, that
//! it is kept (or the operation refused) when it cannot be written, and that it never
//! holds a secret.
//!
//! - A long mixed run from several callers, across a daemon restart, through a small
//!   `max_file_bytes` rotates the file many times and records every operation once;
//!   `harpoctl audit verify` accepts the chain, and names the file, line and seq of each
//!   kind of tampering with copies of it.
//! - On a full file system (a small tmpfs) a key-changing operation fails with
//!   `AuditUnavailable` (harpoctl: exit 69) and changes nothing, a `use` operation still
//!   runs and its lost record is counted, and with `fail_closed` it fails too; with room
//!   again everything works and the chain verifies.
//! - Neither the audit file nor the daemon's debug log (with every event journaled to
//!   stderr) holds the PIN, a backup password, a plaintext or a data key, in any of the
//!   forms harpoctl would print them.
//! - A live audit stream shows root what other callers do, and refuses a caller without
//!   `admin`.
//!
//! The parts that need other identities run as root and switch child processes to the
//! users named by `HARPOCRATES_TEST_USERS` (default `harpotest1,harpotest2`), and the
//! tmpfs needs root; without them the tests say why and pass, unless `CI` is set: then
//! they fail.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{Daemon, TestUser, bin};
use futures::StreamExt;
use harpocrates::client::{Client, Error};
use harpocrates::protocol::{AuditEvent, AuditPhase, KeyAttributes, RotationStep};
use harpocrates_daemon::config::raw::{RawAudit, RawSoft};
use harpocrates_daemon::config::{RawConfig, Settings};
use harpocrates_daemon::policy::RawRule;
use harpocrates_daemon::server::{self, RunningDaemon};
use serde_json::json;

/// harpoctl's exit code for permission denied.
const EXIT_DENIED: i32 = 77;

/// An in-process daemon on a soft token in `dir` (socket `d.sock`, mode 0666, so the test
/// users can connect), recording to `audit`.
fn in_process(dir: &Path, audit: RawAudit, policy: Vec<RawRule>) -> RunningDaemon {
    common::write_secret(&dir.join("pin"), common::PIN);
    let raw = RawConfig {
        socket_path: Some(dir.join("d.sock")),
        socket_mode: Some("0666".into()),
        pin_file: Some(dir.join("pin")),
        soft: Some(RawSoft {
            state_dir: Some(dir.join("state")),
            kdf_memory_kib: Some(256),
            kdf_iterations: Some(1),
            kdf_parallelism: None,
        }),
        audit: Some(audit),
        policy: Some(policy),
        ..RawConfig::default()
    };
    let settings = Settings::validate(raw).expect("settings");
    let backend = harpocrates_daemon::startup::open_backend(&settings).expect("backend");
    server::spawn(settings, backend).expect("daemon")
}

/// The `[audit]` of a daemon writing `file` with the journal off.
fn file_audit(file: &Path) -> RawAudit {
    RawAudit { file: Some(file.to_owned()), journal: Some("off".into()), ..RawAudit::default() }
}

/// A rule granting `user` the `classes` on token keys `keys` and KEKs `keks`.
fn rule(user: &TestUser, keys: &[&str], keks: &[&str], classes: &[&str]) -> RawRule {
    let strings = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect();
    RawRule {
        name: None,
        users: vec![user.name.clone()],
        keys: strings(keys),
        keks: strings(keks),
        allow: strings(classes),
        ..RawRule::default()
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// A directory private to root for the audit file (the daemon insists), and the file.
fn audit_location() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("audit").join("audit.log");
    (dir, file)
}

/// `harpoctl args` as ourselves, with no daemon involved.
fn harpoctl(args: &[&str]) -> common::Ran {
    common::run_as(&bin("harpoctl"), None, args, &[], b"")
}

/// `harpoctl audit verify` over `files`, given in the order a shell glob would list them.
fn verify(files: &[PathBuf]) -> common::Ran {
    let mut names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    names.sort();
    let mut args = vec!["audit", "verify"];
    args.extend(names.iter().map(String::as_str));
    harpoctl(&args)
}

fn lines(path: &Path) -> Vec<Vec<u8>> {
    std::fs::read(path)
        .expect("read")
        .split_inclusive(|b| *b == b'\n')
        .map(<[u8]>::to_vec)
        .collect()
}

fn seq_of(line: &[u8]) -> u64 {
    harpocrates::protocol::audit::chain::decode_line(line).expect("a good record").seq
}

/// A copy of the chain in `files` in a fresh directory; returns it and the copies.
fn copy_chain(files: &[PathBuf]) -> (tempfile::TempDir, Vec<PathBuf>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let copies = files
        .iter()
        .map(|f| {
            let to = dir.path().join(f.file_name().expect("name"));
            std::fs::copy(f, &to).expect("copy");
            to
        })
        .collect();
    (dir, copies)
}

/// `harpoctl audit verify` must fail and name `file`, `line` and `seq`, and say `what`.
fn assert_named(ran: &common::Ran, file: &Path, line: usize, seq: u64, what: &str) {
    let out = format!("{}{}", ran.out(), ran.stderr);
    assert_ne!(ran.code, 0, "tampering ({what}) must fail the verification: {out}");
    let name = file.file_name().and_then(|n| n.to_str()).expect("name");
    let place = format!("{name} line {line} (seq {seq})");
    assert!(out.contains(&place), "the output should name {place:?} ({what}): {out}");
    assert!(out.contains(what), "the output should say {what:?}: {out}");
}

/// Root's share of the long run: per round a batch of 41 encryptions (one of a missing
/// key), 20 concurrent encryptions, a key made and destroyed, 10 envelope round trips,
/// and every tenth round a KEK rotation and a rewrap. Returns how many encryptions and
/// key changes it made.
async fn root_load(c: &Client, rounds: std::ops::Range<u32>) -> (u64, u64) {
    let mut encrypts = 0u64;
    let mut changes = 0u64;
    let mut sealed = Vec::new();
    for round in rounds {
        let mut batch = c.batch();
        for i in 0..40 {
            batch = batch.encrypt(&format!("mix-{}", i % 3), b"batched", None);
        }
        let answers = batch.encrypt("ghost", b"missing", None).send().await.expect("batch");
        assert_eq!(answers.len(), 41);
        assert!(answers[..40].iter().all(Result::is_ok));
        assert!(matches!(answers[40], Err(Error::KeyNotFound(_))), "{:?}", answers[40]);
        encrypts += 41;
        // Concurrent calls: pipelined and auto-batched by the client.
        let aads: Vec<[u8; 1]> = (0..20u8).map(|i| [i]).collect();
        let singles = aads.iter().map(|aad| c.encrypt("mix-1", b"single", Some(aad)));
        for r in futures::future::join_all(singles).await {
            r.expect("encrypt");
            encrypts += 1;
        }
        let label = format!("tmp-{round}");
        c.generate_key(&label, 128).await.expect("generate");
        c.destroy_key(&label).await.expect("destroy");
        changes += 2;
        let rows: Vec<String> = (0..10).map(|i| format!("env {round} {i}")).collect();
        let envelopes =
            rows.iter().map(|row| c.encrypt_with_context("kr", b"ctx", row.as_bytes(), None));
        for ct in futures::future::join_all(envelopes).await {
            let ct = ct.expect("envelope encrypt");
            let pt = c.decrypt_with_context(b"ctx", &ct, None).await.expect("decrypt");
            assert!(pt.expose().starts_with(b"env "));
            sealed.push(ct);
        }
        if round % 10 == 9 {
            for step in [RotationStep::Prepare, RotationStep::Validate, RotationStep::Commit] {
                c.rotate("kr", step).await.expect("rotation step");
                changes += 1;
            }
            let moved = c.rewrap(b"ctx", &sealed[0], None).await.expect("rewrap");
            assert_ne!(moved, sealed[0]);
        }
    }
    (encrypts, changes)
}

#[test]
fn a_long_mixed_run_rotates_and_verifies_and_every_kind_of_tampering_is_named() {
    let users = common::test_users();
    let dir = common::shared_dir("harpo-audit-run-");
    let (_audit_dir, audit) = audit_location();
    let policy: Vec<RawRule> =
        users.iter().map(|(u1, _)| rule(u1, &["t1-*"], &["k1"], &["use"])).collect();
    let audit_settings = || RawAudit { max_file_bytes: Some(65_536), ..file_audit(&audit) };
    let daemon = in_process(dir.path(), audit_settings(), policy.clone());
    let socket = daemon.socket_path().to_owned();
    let rt = runtime();
    let c = rt.block_on(Client::connect(&socket)).expect("connect");
    rt.block_on(async {
        for key in ["t1-a", "mix-0", "mix-1", "mix-2"] {
            c.generate_key(key, 256).await.expect("generate");
        }
        for kek in ["k1", "kr"] {
            c.generate_kek(kek).await.expect("kek");
        }
    });

    // harpotest1, beside root's load: some allowed, some refused.
    let caller = users.clone().map(|(u1, _)| {
        let exe = common::runnable_by_everyone(&bin("harpoctl"), dir.path());
        let socket = socket.to_str().expect("utf-8").to_owned();
        std::thread::spawn(move || {
            let mut refused = 0;
            for round in 0..4 {
                let run = |args: &[&str], stdin: &[u8]| {
                    let mut full = vec!["--socket", socket.as_str()];
                    full.extend_from_slice(args);
                    common::run_as(&exe, Some(&u1), &full, &[], stdin)
                };
                let r = run(&["encrypt", "t1-a", "--base64"], format!("row {round}").as_bytes());
                assert_eq!(r.code, 0, "{}", r.stderr);
                let r = run(&["envelope", "encrypt", "k1", "--context", "c"], b"x");
                assert_eq!(r.code, 0, "{}", r.stderr);
                for denied in [&["encrypt", "mix-0"][..], &["kek", "rotate", "prepare", "k1"]] {
                    let r = run(denied, b"x");
                    assert_eq!(r.code, EXIT_DENIED, "{denied:?}: {}", r.stderr);
                    refused += 1;
                }
            }
            (u1, refused)
        })
    });

    // Root: a few thousand mixed operations, with batches, key and KEK changes.
    let (mut encrypts, mut changes) = rt.block_on(root_load(&c, 0..30));
    let (user_refusals, u1) = match caller {
        Some(t) => {
            let (u1, refused) = t.join().expect("harpotest1's thread");
            (refused, Some(u1))
        }
        None => (0, None),
    };
    drop(c);
    daemon.stop();
    // The chain carries on across a restart of the daemon.
    let daemon = in_process(dir.path(), audit_settings(), policy);
    let c = rt.block_on(Client::connect(daemon.socket_path())).expect("connect again");
    let (more_encrypts, more_changes) = rt.block_on(root_load(&c, 30..40));
    encrypts += more_encrypts;
    changes += more_changes;
    drop(c);
    daemon.stop();

    // The chain: rotated many times, every file within its limit, whole.
    let files = common::audit_chain_files(&audit);
    assert!(files.len() >= 8, "a small max_file_bytes rotates often: {files:?}");
    for f in &files {
        let len = std::fs::metadata(f).expect("stat").len();
        assert!(len <= 65_536, "{} is {len} bytes, past max_file_bytes", f.display());
    }
    let ran = verify(&files);
    assert_eq!(ran.code, 0, "the daemon's own chain must verify: {}{}", ran.out(), ran.stderr);
    assert!(ran.out().starts_with("OK"), "{}", ran.out());
    assert!(ran.out().contains(&format!("in {} files", files.len())), "{}", ran.out());
    let restarts: usize = files
        .iter()
        .map(|f| std::fs::read_to_string(f).expect("read").matches("\"kind\":\"restart\"").count())
        .sum();
    assert_eq!(restarts, 1, "one restart record, where the second daemon took over");

    // Every operation is in it, once.
    let events = common::audit_events(&audit);
    let done = |e: &&AuditEvent| e.uid == 0 && e.phase == AuditPhase::Done;
    let root_encrypts = events.iter().filter(done).filter(|e| e.op == "encrypt").count() as u64;
    assert_eq!(root_encrypts, encrypts, "one record per encryption, batched or not");
    let intents = events.iter().filter(|e| e.uid == 0 && e.phase == AuditPhase::Intent);
    let intent_ops: Vec<&str> = intents.map(|e| e.op.as_str()).collect();
    // The setup's 4 keys and 2 KEKs, then the run's key and rotation changes.
    assert_eq!(intent_ops.len() as u64, changes + 6, "an intent for every key change");
    assert!(intent_ops.contains(&"rotation") && intent_ops.contains(&"destroy_key"));
    let batched = events.iter().filter(done).filter(|e| e.element == Some(40)).count();
    assert_eq!(batched, 40, "the 41st element of each batch, under its index");
    if let Some(u1) = &u1 {
        let denied =
            events.iter().filter(|e| e.uid == u1.uid && e.result == "permission_denied").count();
        assert_eq!(denied, user_refusals, "each of harpotest1's refusals");
        let allowed = events.iter().filter(|e| e.uid == u1.uid && e.result == "ok").count();
        assert_eq!(allowed, 8, "harpotest1's 4 encryptions and 4 envelope encryptions");
    }

    // Tampering with copies: each kind is caught, and its place named.
    let mid = files.len() / 2;
    let middle = &files[mid];
    let at = 5;
    let original = lines(middle);
    assert!(original.len() > at + 2, "{} holds a few records", middle.display());
    let seq = seq_of(&original[at]);

    let (_d, copies) = copy_chain(&files);
    let mut l = original.clone();
    let byte = l[at].len() / 2;
    l[at][byte] ^= 0x01;
    std::fs::write(&copies[mid], l.concat()).expect("write");
    assert_named(&verify(&copies), &copies[mid], at + 1, seq, "record changed");

    let (_d, copies) = copy_chain(&files);
    let mut l = original.clone();
    l.remove(at);
    std::fs::write(&copies[mid], l.concat()).expect("write");
    assert_named(&verify(&copies), &copies[mid], at + 1, seq, "records missing");

    let (_d, copies) = copy_chain(&files);
    let mut l = original.clone();
    l.swap(at, at + 1);
    std::fs::write(&copies[mid], l.concat()).expect("write");
    assert_named(&verify(&copies), &copies[mid], at + 1, seq, "out of order");

    let (_d, copies) = copy_chain(&files);
    let last = copies.last().expect("active file");
    let l = lines(last);
    let last_seq = seq_of(l.last().expect("a record"));
    let bytes = std::fs::read(last).expect("read");
    let cut = l.last().expect("a record").len() / 2;
    std::fs::write(last, &bytes[..bytes.len() - cut]).expect("truncate");
    assert_named(&verify(&copies), last, l.len(), last_seq, "truncated");

    let (_d, mut copies) = copy_chain(&files);
    let removed = copies.remove(mid);
    let first_missing = seq_of(&lines(&removed)[0]);
    std::fs::remove_file(&removed).expect("remove");
    assert_named(&verify(&copies), &copies[mid], 1, first_missing, "records missing");
}

/// A tmpfs mounted for the test, unmounted (lazily, so an open file cannot stop it)
/// however the test ends.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the file system under `path` with one file until not a byte more fits.
fn fill(path: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).expect("filler");
    let zeros = vec![0u8; 65_536];
    for chunk in [65_536, 4096, 512, 64, 1] {
        loop {
            match f.write(&zeros[..chunk]) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("filling {}: {e}", path.display()),
            }
        }
    }
    // SAFETY: statvfs is plain integers, for which all zeros is a valid value.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let c = std::ffi::CString::new(path.parent().expect("mount").as_os_str().as_encoded_bytes())
        .expect("path");
    // SAFETY: a valid C string and a live, writable statvfs.
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0, "statvfs");
    assert_eq!(st.f_bavail, 0, "the tmpfs is full");
}

#[test]
fn a_full_audit_file_system_refuses_key_changes_and_counts_lost_records() {
    if !common::is_root() {
        return common::skip("mounting a tmpfs needs root");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mnt = dir.path().join("tmpfs");
    std::fs::create_dir(&mnt).expect("mkdir");
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=512k,mode=0700", "tmpfs"])
        .arg(&mnt)
        .output()
        .expect("run mount");
    if !mounted.status.success() {
        return common::skip(&format!(
            "cannot mount a tmpfs (needs CAP_SYS_ADMIN): {}",
            String::from_utf8_lossy(&mounted.stderr)
        ));
    }
    let _mount = Mount(mnt.clone());
    let (a_dir, b_dir) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir(&a_dir).expect("mkdir");
    std::fs::create_dir(&b_dir).expect("mkdir");
    let (a_audit, b_audit) = (mnt.join("a").join("audit.log"), mnt.join("b").join("audit.log"));
    let a = in_process(&a_dir, file_audit(&a_audit), Vec::new());
    let b = in_process(
        &b_dir,
        RawAudit { fail_closed: Some(true), ..file_audit(&b_audit) },
        Vec::new(),
    );
    let rt = runtime();
    let (ca, cb) = rt.block_on(async {
        let ca = Client::connect(a.socket_path()).await.expect("connect a");
        let cb = Client::connect(b.socket_path()).await.expect("connect b");
        ca.generate_key("e", 256).await.expect("generate");
        cb.generate_key("e", 256).await.expect("generate");
        (ca, cb)
    });
    assert_eq!(rt.block_on(ca.metrics()).expect("metrics").audit_failed, 0);

    fill(&mnt.join("filler"));
    rt.block_on(async {
        // Key changes: the few that still fit in the audit file's last page run; then one
        // is refused, and its key is not created.
        let mut created = Vec::new();
        let mut refused = None;
        for i in 0..64 {
            let label = format!("full-{i:02}-{}", "g".repeat(100));
            match ca.generate_key(&label, 256).await {
                Ok(_) => created.push(label),
                Err(Error::AuditUnavailable(_)) => {
                    refused = Some(label);
                    break;
                }
                Err(e) => panic!("generate_key on a full audit disk: {e:?}"),
            }
        }
        let refused = refused.expect("a key change is refused once its intent cannot be written");
        let keys = ca.list_keys().await.expect("list");
        assert!(
            keys.iter().all(|k| k.handle.as_str() != refused),
            "the refused key must not exist"
        );
        for label in &created {
            assert!(keys.iter().any(|k| k.handle.as_str() == label), "{label} was created");
        }
    });

    // harpoctl says so with exit code 69 (an operator has to fix the audit storage).
    let socket = a.socket_path().to_str().expect("utf-8").to_owned();
    let mut refused = None;
    for i in 0..64 {
        let label = format!("cli-{i:02}-{}", "g".repeat(100));
        let args = ["--socket", socket.as_str(), "--json", "keys", "generate", label.as_str()];
        let ran = common::run_as(&bin("harpoctl"), None, &args, &[], b"");
        match ran.code {
            0 => continue,
            69 => {
                let e: serde_json::Value =
                    serde_json::from_str(ran.stderr.trim()).expect("json error");
                assert_eq!(e["error"]["code"], "audit_unavailable", "{e}");
                refused = Some(label);
                break;
            }
            code => panic!("harpoctl keys generate on a full audit disk: {code}: {}", ran.stderr),
        }
    }
    let refused = refused.expect("harpoctl's key change is refused too");
    rt.block_on(async {
        let keys = ca.list_keys().await.expect("list");
        assert!(keys.iter().all(|k| k.handle.as_str() != refused), "not created: {refused}");

        // `use` still runs without its record, and the loss is counted.
        let before = ca.metrics().await.expect("metrics").audit_failed;
        assert!(before > 0, "the refused intent is counted as lost");
        let mut grew = false;
        for _ in 0..200 {
            let ct = ca.encrypt("e", b"still works", None).await.expect("encrypt runs");
            let pt = ca.decrypt("e", &ct, None).await.expect("decrypt runs");
            assert_eq!(pt.expose(), b"still works");
            if ca.metrics().await.expect("metrics").audit_failed > before {
                grew = true;
                break;
            }
        }
        assert!(grew, "records lost to the full disk are counted in audit_failed");

        // fail_closed: the answer is withheld once its record cannot be written.
        let mut withheld = false;
        for _ in 0..200 {
            match cb.encrypt("e", b"needs its record", None).await {
                Ok(_) => {}
                Err(Error::AuditUnavailable(_)) => {
                    withheld = true;
                    break;
                }
                Err(e) => panic!("encrypt with fail_closed on a full audit disk: {e:?}"),
            }
        }
        assert!(withheld, "fail_closed withholds answers whose record cannot be written");
    });

    // With room again, everything works, and the files hold no partial record.
    std::fs::remove_file(mnt.join("filler")).expect("remove filler");
    rt.block_on(async {
        ca.generate_key("after", 256).await.expect("generate with room again");
        cb.encrypt("e", b"with room", None).await.expect("fail_closed encrypt with room again");
    });
    drop((ca, cb));
    a.stop();
    b.stop();
    for audit in [&a_audit, &b_audit] {
        let ran = verify(&common::audit_chain_files(audit));
        assert_eq!(ran.code, 0, "{}: {}{}", audit.display(), ran.out(), ran.stderr);
        assert!(ran.out().starts_with("OK"), "{}", ran.out());
    }
    let events = common::audit_events(&a_audit);
    for phase in [AuditPhase::Intent, AuditPhase::Done] {
        assert!(
            events.iter().any(|e| e.key.as_deref() == Some("after") && e.phase == phase),
            "the key made with room again is recorded ({phase:?})"
        );
    }
}

/// Standard base64 with padding, as harpoctl prints it.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The forms in which `secret` could leak: raw, hex (both cases), base64, and the
/// decimal list `{:?}` prints for bytes.
fn leak_forms(secret: &[u8]) -> Vec<Vec<u8>> {
    let b64 = base64(secret);
    let mut forms = vec![
        secret.to_vec(),
        hex(secret).into_bytes(),
        hex(secret).to_uppercase().into_bytes(),
        b64.trim_end_matches('=').as_bytes().to_vec(),
    ];
    let decimal = format!("{:?}", &secret[..secret.len().min(12)]);
    forms.push(decimal.trim_end_matches(']').as_bytes().to_vec());
    forms
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn no_sink_ever_holds_a_pin_a_password_a_plaintext_or_a_data_key() {
    const PASSWORD: &[u8] = b"backup-password-CANARY-91d3e7";
    const PLAINTEXT: &[u8] = b"plaintext-CANARY-7e1f0c2b-do-not-log";
    const ENVELOPED: &[u8] = b"enveloped-CANARY-55aa10f3-do-not-log";
    let (_audit_dir, audit) = audit_location();
    let d = Daemon::start_shared(
        "",
        &format!("[audit]\nfile = {audit:?}\njournal = \"all\"\nmax_file_bytes = 65536\n"),
    );
    let rt = runtime();
    let mut secrets: Vec<(&str, Vec<u8>)> = vec![
        ("the PIN", common::PIN.as_bytes().to_vec()),
        ("the backup password", PASSWORD.to_vec()),
        ("a plaintext", PLAINTEXT.to_vec()),
        ("an envelope plaintext", ENVELOPED.to_vec()),
    ];
    rt.block_on(async {
        let c = Client::connect(&d.socket).await.expect("connect");
        let attributes = KeyAttributes { extractable: true, ..KeyAttributes::aes(256) };
        c.generate_key_with_attributes("sec", attributes).await.expect("generate");
        let ct = c.encrypt("sec", PLAINTEXT, Some(b"aad")).await.expect("encrypt");
        assert_eq!(c.decrypt("sec", &ct, Some(b"aad")).await.expect("decrypt").expose(), PLAINTEXT);
        let wrong = c.decrypt("sec", &ct, Some(b"other aad")).await;
        assert!(matches!(wrong, Err(Error::IntegrityCheckFailed(_))), "{wrong:?}");

        c.generate_kek("sk").await.expect("kek");
        let sealed = c.encrypt_with_context("sk", b"ctx", ENVELOPED, None).await.expect("seal");
        let opened = c.decrypt_with_context(b"ctx", &sealed, None).await.expect("open");
        assert_eq!(opened.expose(), ENVELOPED);
        c.prepare_rotation("sk").await.expect("prepare");
        c.validate_rotation("sk").await.expect("validate");
        c.commit_rotation("sk").await.expect("commit");
        c.rewrap(b"ctx", &sealed, None).await.expect("rewrap");

        let blob = c.backup_key("sec", PASSWORD).await.expect("backup");
        c.restore_key("sec-copy", &blob, PASSWORD).await.expect("restore");
        let bad = c.restore_key("sec-bad", &blob, b"not-the-CANARY-password").await;
        assert!(bad.is_err(), "a wrong backup password is refused");

        let derived = c.derive_data_key("sk", b"ctx", 32).await.expect("derive");
        let generated = c.generate_data_key("sk").await.expect("generate data key");
        let wrapped = generated.wrapped.clone().expect("wrapped");
        let unwrapped = c.unwrap_data_key(&wrapped).await.expect("unwrap");
        assert_eq!(unwrapped.dek.expose(), generated.dek.expose());
        let random = c.generate_random(32).await.expect("random");
        secrets.push(("a derived data key", derived.dek.expose().to_vec()));
        secrets.push(("a generated data key", generated.dek.expose().to_vec()));
        secrets.push(("random bytes", random.expose().to_vec()));
    });
    let log = d.stop_and_collect_output();
    let mut trail = Vec::new();
    for f in common::audit_chain_files(&audit) {
        trail.extend(std::fs::read(f).expect("audit file"));
    }

    // The sinks were on, and got these operations...
    let trail_text = String::from_utf8_lossy(&trail);
    for op in ["backup_key", "restore_key", "derive_data_key", "unwrap_data_key", "rewrap"] {
        assert!(trail_text.contains(&format!("\"op\":\"{op}\"")), "{op} in the audit file");
        assert!(log.contains(op), "{op} journaled to stderr (journal = \"all\"): {log}");
    }
    assert!(log.contains("DEBUG"), "the daemon logged at debug level");
    // ... and none of the secrets, in any form.
    for (what, secret) in &secrets {
        for form in leak_forms(secret) {
            let shown = String::from_utf8_lossy(&form).into_owned();
            assert!(!contains(&trail, &form), "{what} ({shown:?}) is in the audit file");
            assert!(!contains(log.as_bytes(), &form), "{what} ({shown:?}) is in the daemon's log");
        }
    }
}

#[test]
fn a_live_stream_shows_root_what_others_do_and_refuses_callers_without_admin() {
    const TEST: &str = "a_live_stream_shows_root_what_others_do_and_refuses_callers_without_admin";
    if let Some(socket) = common::child_argument() {
        // The child: harpotest1 asks for the stream.
        let rt = runtime();
        let first = rt.block_on(async {
            let c = Client::connect(&socket).await.expect("connect");
            let mut events = c.audit_events().await.expect("the stream opens");
            tokio::time::timeout(Duration::from_secs(10), events.next()).await
        });
        let report = match first {
            Err(_) => json!({ "first": "nothing within 10 s" }),
            Ok(None) => json!({ "first": "end of stream" }),
            Ok(Some(Ok(e))) => json!({ "first": "event", "op": e.op }),
            Ok(Some(Err(e))) => json!({
                "first": "error",
                "code": e.code().map(|c| c.name()),
                "message": e.to_string(),
            }),
        };
        common::child_report(&report);
        return;
    }
    let users = common::test_users();
    let dir = common::shared_dir("harpo-audit-live-");
    let (_audit_dir, audit) = audit_location();
    let policy = users.iter().map(|(u1, _)| rule(u1, &["t1-*"], &[], &["use"])).collect();
    let daemon = in_process(dir.path(), file_audit(&audit), policy);
    let socket = daemon.socket_path().to_owned();
    let rt = runtime();
    let watcher = rt.block_on(Client::connect(&socket)).expect("connect");
    let mut stream = rt.block_on(watcher.audit_events()).expect("stream");
    let mut next = |what: &str| {
        rt.block_on(async { tokio::time::timeout(Duration::from_secs(10), stream.next()).await })
            .unwrap_or_else(|_| panic!("no audit event within 10 s, waiting for {what}"))
            .unwrap_or_else(|| panic!("the stream ended, waiting for {what}"))
            .unwrap_or_else(|e| panic!("the stream failed, waiting for {what}: {e}"))
    };
    // The subscription is audited too: its own record says the stream is live.
    let first = next("the subscription");
    assert_eq!((first.op.as_str(), first.uid, first.result.as_str()), ("subscribe_audit", 0, "ok"));

    // Another connection's work shows up, with who did it.
    let worker = rt.block_on(Client::connect(&socket)).expect("connect");
    rt.block_on(async {
        worker.generate_key("live-k", 256).await.expect("generate");
        worker.encrypt("live-k", b"x", None).await.expect("encrypt");
        worker.destroy_key("live-k").await.expect("destroy");
    });
    let expected = [
        ("generate_key", AuditPhase::Intent),
        ("generate_key", AuditPhase::Done),
        ("encrypt", AuditPhase::Done),
        ("destroy_key", AuditPhase::Intent),
        ("destroy_key", AuditPhase::Done),
    ];
    let mut seen = Vec::new();
    while seen.len() < expected.len() {
        let e = next("the worker's operations");
        if e.key.as_deref() == Some("live-k") {
            seen.push(e);
        }
    }
    for (e, (op, phase)) in seen.iter().zip(expected) {
        assert_eq!((e.op.as_str(), e.phase, e.uid), (op, phase, 0), "{e:?}");
        assert_eq!(e.result, "ok", "{e:?}");
        assert_ne!(e.conn, first.conn, "done on the worker's connection, not the stream's");
    }

    let Some((u1, _)) = users else { return };
    // harpotest1's refusal, live.
    let exe = common::runnable_by_everyone(&bin("harpoctl"), dir.path());
    let s = socket.to_str().expect("utf-8");
    let ran = common::run_as(&exe, Some(&u1), &["--socket", s, "encrypt", "live-k"], &[], b"x");
    assert_eq!(ran.code, EXIT_DENIED, "{}", ran.stderr);
    let e = loop {
        let e = next("harpotest1's refusal");
        if e.uid == u1.uid {
            break e;
        }
    };
    assert_eq!(
        (e.op.as_str(), e.key.as_deref(), e.result.as_str(), e.gid),
        ("encrypt", Some("live-k"), "permission_denied", u1.gid)
    );

    // harpotest1 has no admin: its stream's first item is the refusal, and root sees it.
    let reports = common::run_self_as(&u1, TEST, s, dir.path());
    assert_eq!(reports[0]["first"], "error", "{reports:?}");
    assert_eq!(reports[0]["code"], "permission_denied", "{reports:?}");
    let message = reports[0]["message"].as_str().unwrap_or_default();
    assert!(message.contains("'subscribe_audit' (admin access)"), "{message}");
    let e = loop {
        let e = next("harpotest1's refused subscription");
        if e.uid == u1.uid {
            break e;
        }
    };
    assert_eq!((e.op.as_str(), e.result.as_str()), ("subscribe_audit", "permission_denied"));
    drop(stream);
    drop((watcher, worker));
    daemon.stop();
}
