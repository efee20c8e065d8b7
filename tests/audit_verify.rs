//! `harpoctl audit verify` and `audit tail --file` against chains the daemon's own writer
//! produced: a good chain passes, and each kind of tampering is caught and named.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::bin;
use harpocrates_daemon::actors::audit::file::AuditFile;
use harpocrates_protocol::audit::chain::decode_line;
use harpocrates_protocol::{AuditEvent, AuditPhase};

fn event(n: u64) -> AuditEvent {
    AuditEvent {
        time: "2026-11-29T04:05:06.123456Z".into(),
        uid: 1000,
        gid: 1000,
        pid: Some(4242),
        exe: Some("/usr/bin/app".into()),
        conn: 1,
        request: n,
        element: None,
        op: "derive_data_key".into(),
        class: "use".into(),
        key: None,
        kek: Some("payments".into()),
        version: Some(2),
        phase: AuditPhase::Done,
        result: "ok".into(),
        latency_us: 40 + n,
    }
}

const MAX: u64 = 4000;

/// A chain of 40 events over several rotated files; returns the writer's head (hex).
fn write_chain(dir: &Path) -> String {
    let path = dir.join("audit.log");
    let mut f = AuditFile::open(&path, MAX).expect("open");
    for burst in 0..8 {
        let events: Vec<AuditEvent> = (burst * 5..burst * 5 + 5).map(event).collect();
        f.append(&events);
        f.commit(burst % 3 == 0).expect("commit");
    }
    f.head().1
}

/// The chain's files, newest first: the order must not matter.
fn files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
        .filter(|n| n.starts_with("audit.log"))
        .collect();
    names.sort();
    names.reverse();
    names
}

fn harpoctl(dir: &Path, args: &[&str]) -> (i32, String) {
    let out = Command::new(bin("harpoctl"))
        .args(args)
        .current_dir(dir)
        .env("HARPOCRATES_SOCKET", dir.join("no-daemon.sock"))
        .output()
        .expect("run harpoctl");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

fn verify(dir: &Path) -> (i32, String) {
    let names = files(dir);
    let mut args = vec!["audit", "verify"];
    args.extend(names.iter().map(String::as_str));
    harpoctl(dir, &args)
}

fn lines(path: &Path) -> Vec<Vec<u8>> {
    std::fs::read(path)
        .expect("read")
        .split_inclusive(|b| *b == b'\n')
        .map(<[u8]>::to_vec)
        .collect()
}

fn seq_of(line: &[u8]) -> u64 {
    decode_line(line).expect("a good line").seq
}

/// A fresh copy of the good chain in its own directory.
fn fresh() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let head = write_chain(dir.path());
    (dir, head)
}

fn rotated(dir: &Path, k: u32) -> PathBuf {
    dir.join(format!("audit.log.{k}"))
}

#[test]
fn a_good_chain_verifies_in_any_file_order() {
    let (dir, head) = fresh();
    assert!(files(dir.path()).len() >= 4, "rotated: {:?}", files(dir.path()));
    let (code, out) = verify(dir.path());
    assert_eq!(code, 0, "{out}");
    let n = files(dir.path()).len();
    // genesis, 40 events, one continue per later file.
    let records = 41 + n - 1;
    assert!(
        out.starts_with(&format!("OK: {records} records in {n} files, chain head {head}")),
        "{out}"
    );

    let (code, out) = {
        let mut args = vec!["--json", "audit", "verify"];
        let names = files(dir.path());
        args.extend(names.iter().map(String::as_str));
        harpoctl(dir.path(), &args)
    };
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
    assert_eq!((v["ok"].as_bool(), v["records"].as_u64()), (Some(true), Some(records as u64)));
    assert_eq!(v["events"], 40);
    assert_eq!(v["head"], head.as_str());
}

#[test]
fn a_changed_byte_is_named_by_file_line_and_seq() {
    let (dir, _) = fresh();
    let path = rotated(dir.path(), 2);
    let mut l = lines(&path);
    let seq = seq_of(&l[2]);
    let at = l[2].len() / 2;
    l[2][at] ^= 0x01;
    std::fs::write(&path, l.concat()).expect("write");
    let (code, out) = verify(dir.path());
    assert_eq!(code, 1, "{out}");
    assert_eq!(
        out.trim(),
        format!("audit.log.2 line 3 (seq {seq}): record changed (hash mismatch)")
    );

    let mut args = vec!["--json", "audit", "verify"];
    let names = files(dir.path());
    args.extend(names.iter().map(String::as_str));
    let (code, out) = harpoctl(dir.path(), &args);
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
    assert_eq!(v["ok"], false);
    assert_eq!((v["file"].as_str(), v["line"].as_u64()), (Some("audit.log.2"), Some(3)));
    assert_eq!((v["seq"].as_u64(), v["fault"].as_str()), (Some(seq), Some("hash_mismatch")));
}

#[test]
fn a_deleted_record_is_missing() {
    let (dir, _) = fresh();
    let path = rotated(dir.path(), 1);
    let mut l = lines(&path);
    let seq = seq_of(&l[3]);
    l.remove(3);
    std::fs::write(&path, l.concat()).expect("write");
    let (code, out) = verify(dir.path());
    assert_eq!(code, 1, "{out}");
    assert!(out.starts_with(&format!("audit.log.1 line 4 (seq {seq}): records missing")), "{out}");
}

#[test]
fn swapped_records_are_out_of_order() {
    let (dir, _) = fresh();
    let path = rotated(dir.path(), 2);
    let mut l = lines(&path);
    let seq = seq_of(&l[2]);
    l.swap(2, 3);
    std::fs::write(&path, l.concat()).expect("write");
    let (code, out) = verify(dir.path());
    assert_eq!(code, 1, "{out}");
    assert!(out.starts_with(&format!("audit.log.2 line 3 (seq {seq}): out of order")), "{out}");
}

#[test]
fn a_truncated_last_line_is_truncated() {
    let (dir, _) = fresh();
    let path = dir.path().join("audit.log");
    let mut bytes = std::fs::read(&path).expect("read");
    let n = lines(&path).len();
    bytes.truncate(bytes.len() - 40);
    std::fs::write(&path, bytes).expect("write");
    let (code, out) = verify(dir.path());
    assert_eq!(code, 1, "{out}");
    assert!(out.starts_with(&format!("audit.log line {n} (seq ")), "{out}");
    assert!(out.contains("truncated"), "{out}");
}

#[test]
fn a_dropped_middle_file_is_missing_records() {
    let (dir, _) = fresh();
    let l = lines(&rotated(dir.path(), 2));
    let expected = seq_of(&l[0]);
    std::fs::remove_file(rotated(dir.path(), 2)).expect("remove");
    let (code, out) = verify(dir.path());
    assert_eq!(code, 1, "{out}");
    assert!(
        out.starts_with(&format!("audit.log.3 line 1 (seq {expected}): records missing")),
        "{out}"
    );
}

#[test]
fn tail_prints_the_last_events_and_follows_across_rotation() {
    let (dir, _) = fresh();
    let (code, out) = harpoctl(dir.path(), &["audit", "tail", "--file", "audit.log", "-n", "3"]);
    assert_eq!(code, 0, "{out}");
    let printed: Vec<&str> = out.lines().collect();
    assert_eq!(printed.len(), 3, "{out}");
    assert!(printed[2].contains("uid=1000 pid=4242 derive_data_key payments@2 ok 79µs"), "{out}");

    // Follow, while the writer rotates underneath.
    let mut child = Command::new(bin("harpoctl"))
        .args(["--json", "audit", "tail", "--file", "audit.log", "--follow", "-n", "1"])
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn harpoctl");
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let first: serde_json::Value =
        serde_json::from_str(&rx.recv_timeout(Duration::from_secs(10)).expect("first"))
            .expect("json");
    assert_eq!(first["request"], 39);

    let path = dir.path().join("audit.log");
    let mut f = AuditFile::open(&path, MAX).expect("reopen");
    let before = files(dir.path()).len();
    for n in 100..130 {
        f.append(&[event(n)]);
        f.commit(false).expect("commit");
    }
    assert!(files(dir.path()).len() > before, "the writer rotated");
    let mut seen = Vec::new();
    while seen.len() < 30 {
        let line = rx.recv_timeout(Duration::from_secs(10)).expect("followed event");
        let v: serde_json::Value = serde_json::from_str(&line).expect("json");
        seen.push(v["request"].as_u64().expect("request"));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(seen, (100..130).collect::<Vec<u64>>());
}
