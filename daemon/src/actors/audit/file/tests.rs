use std::fs::OpenOptions;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::process::Command;

use harpocrates_protocol::AuditPhase;
use harpocrates_protocol::audit::chain::{ChainSummary, Fault, Verifier, decode_line};

use super::*;

/// A failure injected at one step of a commit.
#[derive(Debug, Clone, Copy)]
pub(super) enum FailAt {
    /// The write stores this many bytes, then fails (a disk filling up mid-write).
    Write { after: usize },
    /// fdatasync fails.
    Sync,
    /// Renaming the full file aside fails.
    Rename,
    /// Creating the next file fails (after the rename).
    Create,
}

pub(super) fn injected() -> io::Error {
    io::Error::from_raw_os_error(libc::ENOSPC)
}

fn event(n: u64) -> AuditEvent {
    AuditEvent {
        time: "2026-11-29T04:05:06.123456Z".into(),
        uid: 1000,
        gid: 1000,
        pid: Some(4242),
        exe: Some("/usr/bin/app".into()),
        conn: 3,
        request: n,
        element: None,
        op: "encrypt".into(),
        class: "use".into(),
        key: Some("k1".into()),
        kek: None,
        version: None,
        phase: AuditPhase::Done,
        result: "ok".into(),
        latency_us: 12,
    }
}

fn events(range: std::ops::Range<u64>) -> Vec<AuditEvent> {
    range.map(event).collect()
}

/// The rotated files in order, then the active one.
fn chain_files(path: &Path) -> Vec<PathBuf> {
    let dir = path.parent().unwrap();
    let mut files = recover_rotated(path, dir);
    files.sort();
    let mut out: Vec<PathBuf> = files.into_iter().map(|(_, p)| p).collect();
    // After a failed rotation there may be no active file yet.
    if path.exists() {
        out.push(path.to_owned());
    }
    out
}

fn recover_rotated(path: &Path, dir: &Path) -> Vec<(u64, PathBuf)> {
    let name = path.file_name().unwrap().to_str().unwrap();
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let p = e.unwrap().path();
            let k = p.file_name()?.to_str()?.strip_prefix(name)?.strip_prefix('.')?.parse().ok()?;
            Some((k, p))
        })
        .collect()
}

fn verify(path: &Path) -> ChainSummary {
    let mut v = Verifier::new();
    for file in chain_files(path) {
        let bytes = std::fs::read(&file).unwrap();
        v.start_file(file.display().to_string()).unwrap();
        for (i, line) in bytes.split_inclusive(|b| *b == b'\n').enumerate() {
            v.line(i as u64 + 1, line).unwrap_or_else(|e| panic!("{e}"));
        }
    }
    v.finish().unwrap_or_else(|e| panic!("{e}"))
}

fn kinds(path: &Path) -> Vec<String> {
    std::fs::read(path)
        .unwrap()
        .split_inclusive(|b| *b == b'\n')
        .map(|l| decode_line(l).unwrap().body.kind().name().to_owned())
        .collect()
}

#[test]
fn records_survive_reopening_and_the_chain_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let mut f = AuditFile::open(&path, 1 << 20).unwrap();
    f.append(&events(0..10));
    assert!(!f.is_empty() && f.pending_len() > 0);
    f.commit(false).unwrap();
    assert!(f.is_empty());
    let (seq, hash) = f.head();
    assert_eq!(seq, 10, "genesis and 10 events");
    drop(f);

    let mut f = AuditFile::open(&path, 1 << 20).unwrap();
    f.append(&events(10..15));
    f.commit(true).unwrap();
    let summary = verify(&path);
    assert_eq!((summary.records, summary.events, summary.files), (17, 15, 1));
    assert_eq!(f.chain_head(), summary.head);
    let k = kinds(&path);
    assert_eq!((k[0].as_str(), k[11].as_str()), ("genesis", "restart"));
    let restart =
        decode_line(std::fs::read(&path).unwrap().split(|b| *b == b'\n').nth(11).unwrap());
    assert_eq!(restart.unwrap().prev, chain::parse_hash(hash.as_bytes()).unwrap());
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

#[test]
fn rotation_makes_files_that_verify_together() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let max = 2000;
    let mut f = AuditFile::open(&path, max).unwrap();
    for burst in 0..10 {
        f.append(&events(burst * 7..burst * 7 + 7));
        f.commit(burst % 2 == 0).unwrap();
    }
    drop(f);
    let mut f = AuditFile::open(&path, max).unwrap();
    f.append(&events(70..80));
    f.commit(true).unwrap();

    let files = chain_files(&path);
    assert!(files.len() >= 10, "{files:?}");
    for (i, file) in files.iter().enumerate() {
        assert!(std::fs::metadata(file).unwrap().len() <= max, "{}", file.display());
        assert_eq!(kinds(file)[0], if i == 0 { "genesis" } else { "continue" });
    }
    assert_eq!(files[1].file_name().unwrap(), "audit.log.2");
    let summary = verify(&path);
    assert_eq!(summary.events, 80);
    assert_eq!(summary.files, files.len() as u64);

    // Without its active file the chain goes on from the newest rotated file (as after
    // a crash between the rename and the creation of the next file)...
    let archived = dir.path().join("archived");
    std::fs::rename(&path, &archived).unwrap();
    let mut f = AuditFile::open(&path, max).unwrap();
    f.append(&events(80..81));
    f.commit(true).unwrap();
    assert_eq!(kinds(&path), ["continue", "event"]);
    let forked = verify(&path);
    assert!(forked.events < 81);
    // ... so the removed file's records are not in it: they fork off at the same point.
    let mut v = Verifier::new();
    let mut files = chain_files(&path);
    files.insert(files.len() - 1, archived);
    for file in files {
        v.start_file(file.display().to_string()).unwrap();
        for (i, line) in std::fs::read(&file).unwrap().split_inclusive(|b| *b == b'\n').enumerate()
        {
            if v.line(i as u64 + 1, line).is_err() {
                break;
            }
        }
    }
    assert_eq!(v.finish().unwrap_err().fault.name(), "out_of_order");
}

#[test]
fn a_torn_last_line_is_cut_off_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let mut f = AuditFile::open(&path, 1 << 20).unwrap();
    f.append(&events(0..3));
    f.commit(true).unwrap();
    drop(f);
    let mut raw = OpenOptions::new().append(true).open(&path).unwrap();
    let torn = b"{\"seq\":4,\"prev\":\"00";
    raw.write_all(torn).unwrap();
    drop(raw);
    let f = AuditFile::open(&path, 1 << 20).unwrap();
    drop(f);
    let last = std::fs::read(&path).unwrap();
    let last = last.split_inclusive(|b| *b == b'\n').next_back().unwrap();
    match decode_line(last).unwrap().body {
        RecordBody::Restart { torn_bytes, .. } => assert_eq!(torn_bytes, torn.len() as u64),
        other => panic!("{other:?}"),
    }
    assert_eq!(verify(&path).records, 5);
}

#[test]
fn an_empty_active_file_left_by_a_crash_mid_rotation_is_started_properly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let mut f = AuditFile::open(&path, 1 << 20).unwrap();
    f.append(&events(0..2));
    f.commit(true).unwrap();
    drop(f);
    std::fs::rename(&path, dir.path().join("audit.log.1")).unwrap();
    let empty = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path).unwrap();
    drop(empty);
    drop(AuditFile::open(&path, 1 << 20).unwrap());
    assert_eq!(kinds(&path), ["continue", "restart"]);
    assert_eq!(verify(&path).files, 2);

    // And a brand-new empty file: a new chain.
    let path = dir.path().join("other.log");
    let empty = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path).unwrap();
    drop(empty);
    drop(AuditFile::open(&path, 1 << 20).unwrap());
    assert_eq!(kinds(&path), ["genesis", "restart"]);
}

/// After a failure at `at`, the file still verifies, holds exactly what was committed,
/// and the next commit carries the chain on.
fn fail_and_recover(at: FailAt, max: u64) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let mut f = AuditFile::open(&path, max).unwrap();
    f.append(&events(0..5));
    f.commit(true).unwrap();
    let committed = verify(&path);

    f.fail = Some(at);
    f.append(&events(100..120));
    assert!(f.commit(true).is_err(), "{at:?}");
    assert!(f.is_empty(), "the failed records are discarded");
    f.fail = None;
    let after_failure = verify(&path);
    // A rotation that got as far as the rename keeps what reached the old file.
    assert!(after_failure.records >= committed.records, "{at:?}");
    assert_eq!(f.chain_head(), after_failure.head, "{at:?}");

    f.append(&events(200..203));
    f.commit(false).unwrap();
    let summary = verify(&path);
    assert_eq!(summary.events, after_failure.events + 3, "{at:?}");
}

#[test]
fn a_failed_commit_leaves_no_partial_record_and_the_chain_continues() {
    for after in [0, 1, 100, 3000] {
        fail_and_recover(FailAt::Write { after }, 1 << 20);
    }
    fail_and_recover(FailAt::Sync, 1 << 20);
    // With a small limit the burst spans a rotation, failing at each of its steps.
    for at in [FailAt::Write { after: 1500 }, FailAt::Sync, FailAt::Rename, FailAt::Create] {
        fail_and_recover(at, 3000);
    }
}

/// The real thing: `RLIMIT_FSIZE` makes the kernel cut a write short and then refuse
/// it (EFBIG), as a full disk would. In a child process, as the limit is per process.
#[test]
fn a_full_disk_leaves_a_verifying_file() {
    const CHILD: &str = "HARPO_AUDIT_FSIZE_CHILD";
    if let Some(path) = std::env::var_os(CHILD) {
        return fsize_child(Path::new(&path));
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let mut f = AuditFile::open(&path, 1 << 20).unwrap();
    f.append(&events(0..3));
    f.commit(true).unwrap();
    drop(f);
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "actors::audit::file::tests::a_full_disk_leaves_a_verifying_file"])
        .args(["--nocapture", "--test-threads=1"])
        .env(CHILD, &path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && text.contains("1 passed"), "{text}");
    // genesis, 3 events, restart, then 2 events after the failed burst of 20.
    let summary = verify(&path);
    assert_eq!((summary.records, summary.events), (7, 5));
}

fn fsize_child(path: &Path) {
    let mut f = AuditFile::open(path, 1 << 20).unwrap();
    let len = std::fs::metadata(path).unwrap().len();
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: plain system calls on valid pointers; SIGXFSZ ignored so an oversized
    // write fails with EFBIG instead of killing the process.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
        assert_eq!(libc::getrlimit(libc::RLIMIT_FSIZE, &mut limit), 0);
        let low = libc::rlimit { rlim_cur: len + 1000, rlim_max: limit.rlim_max };
        assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &low), 0);
    }
    f.append(&events(100..120));
    let e = f.commit(true).unwrap_err();
    assert!(e.to_string().contains("cannot write"), "{e}");
    assert_eq!(std::fs::metadata(path).unwrap().len(), len, "cut back");
    // SAFETY: as above; raising the soft limit back up to the hard one.
    unsafe {
        assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &limit), 0);
    }
    f.append(&events(3..5));
    f.commit(true).unwrap();
}

#[test]
fn unsafe_places_and_broken_chains_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let open_dir = dir.path().join("open");
    std::fs::create_dir(&open_dir).unwrap();
    std::fs::set_permissions(&open_dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let e = AuditFile::open(&open_dir.join("audit.log"), 1 << 20).unwrap_err();
    assert!(matches!(e, AuditFileError::UnsafeDirectory { .. }), "{e}");

    let path = dir.path().join("new/sub/audit.log");
    drop(AuditFile::open(&path, 1 << 20).unwrap());
    let mode = std::fs::metadata(path.parent().unwrap()).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700, "created private");

    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o622)).unwrap();
    let e = AuditFile::open(&path, 1 << 20).unwrap_err();
    assert!(matches!(e, AuditFileError::UnsafeFile { .. }), "{e}");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();

    let link = dir.path().join("link.log");
    std::os::unix::fs::symlink(&path, &link).unwrap();
    let e = AuditFile::open(&link, 1 << 20).unwrap_err();
    assert!(e.to_string().contains("symbolic link"), "{e}");

    // One writer at a time.
    let live = AuditFile::open(&path, 1 << 20).unwrap();
    let e = AuditFile::open(&path, 1 << 20).unwrap_err();
    assert!(e.to_string().contains("another process"), "{e}");
    drop(live);

    // A last record that does not check out is not built upon.
    let mut bytes = std::fs::read(&path).unwrap();
    // A digit of the last record's time: still JSON, still a digit, but not what was
    // hashed. (A flipped hash character could stop being hex, which is another fault.)
    let last = bytes[..bytes.len() - 1].iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    let time = last
        + bytes[last..]
            .windows(8)
            .position(|w| w == b"\"time\":\"")
            .expect("the last record has a time")
        + 8;
    assert!(bytes[time].is_ascii_digit());
    bytes[time] ^= 1;
    std::fs::write(&path, bytes).unwrap();
    let e = AuditFile::open(&path, 1 << 20).unwrap_err();
    assert!(matches!(e, AuditFileError::Corrupt { .. }), "{e}");
    assert_eq!(verify_fault(&path), Fault::HashMismatch);
}

fn verify_fault(path: &Path) -> Fault {
    let mut v = Verifier::new();
    v.start_file("f").unwrap();
    let bytes = std::fs::read(path).unwrap();
    for (i, line) in bytes.split_inclusive(|b| *b == b'\n').enumerate() {
        if let Err(e) = v.line(i as u64 + 1, line) {
            return e.fault;
        }
    }
    v.finish().unwrap_err().fault
}
