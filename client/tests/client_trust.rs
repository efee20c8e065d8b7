//! The client checks who answers on the socket before sending anything, bounds its waits,
//! and harpoctl turns those failures (and EACCES on the socket) into exit codes.
//!
//! The tests that need two identities run as root and switch child processes to the test
//! users named by `HARPOCRATES_TEST_USERS` (default `harpotest1,harpotest2`): a stand-in
//! daemon (a tiny Python listener that never answers and records how many bytes each
//! connection sent it) runs as the first, `harpoctl` as the second. Without root or those
//! users the tests say why and pass, unless `CI` is set: then they fail.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use harpocrates_client::trust::DAEMON_UID_ENV;
use harpocrates_client::{BlockingClient, Client, ClientOptions, Error};
use harpocrates_protocol::{
    MessageCodec, PROTOCOL_VERSION, Request, RequestFrame, Response, ResponseFrame,
};
use tokio_util::codec::{FramedRead, FramedWrite};

/// Exit code of harpoctl for a timeout (as timeout(1)).
const EXIT_TIMEOUT: i32 = 124;
/// Exit code of harpoctl for permission denied.
const EXIT_DENIED: i32 = 77;

/// A local account the tests switch to.
#[derive(Debug, Clone)]
struct User {
    name: String,
    uid: u32,
    gid: u32,
}

/// Passes with a note on a developer's machine, fails in CI.
fn skip(reason: &str) {
    if std::env::var_os("CI").is_some_and(|v| !v.is_empty()) {
        panic!("{reason} (CI is set, so this is a failure, not a skip)");
    }
    eprintln!("skipping: {reason}");
}

fn id(flag: &str, name: &str) -> Option<u32> {
    let out = Command::new("id").args([flag, name]).output().ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// The two test users, or `None` (after [`skip`]) when this run cannot use them.
fn test_users() -> Option<(User, User)> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        skip("switching to the test users needs root");
        return None;
    }
    let names = std::env::var("HARPOCRATES_TEST_USERS")
        .unwrap_or_else(|_| "harpotest1,harpotest2".to_owned());
    let users: Vec<User> = names
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .filter_map(|name| {
            Some(User { name: name.to_owned(), uid: id("-u", name)?, gid: id("-g", name)? })
        })
        .collect();
    match users.as_slice() {
        [a, b, ..] if a.uid != 0 && b.uid != 0 && a.uid != b.uid => Some((a.clone(), b.clone())),
        _ => {
            skip(&format!(
                "two distinct non-root test users are needed; HARPOCRATES_TEST_USERS={names} \
                 resolved to {users:?} (create them with useradd, as CI does)"
            ));
            None
        }
    }
}

/// A directory every test user can reach (under /tmp, whatever `TMPDIR` says, so that
/// no parent directory is private to root).
fn shared_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("harpo-client-trust-")
        .tempdir_in("/tmp")
        .expect("tempdir in /tmp");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    dir
}

/// A directory in `parent` owned by `user`.
fn user_dir(parent: &Path, user: &User) -> PathBuf {
    let dir = parent.join(&user.name);
    std::fs::create_dir(&dir).expect("mkdir");
    std::os::unix::fs::chown(&dir, Some(user.uid), Some(user.gid)).expect("chown");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    dir
}

/// harpoctl copied where every test user can run it (the build's target directory may
/// sit under a directory only root can enter).
fn harpoctl_for_everyone(dir: &Path) -> PathBuf {
    let copy = dir.join("harpoctl");
    std::fs::copy(env!("CARGO_BIN_EXE_harpoctl"), &copy).expect("copy harpoctl");
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    copy
}

/// Runs `harpoctl args` as `user` (or as ourselves with `None`), with `env` added.
fn harpoctl(
    exe: &Path,
    user: Option<&User>,
    args: &[&str],
    env: &[(&str, &str)],
) -> (Output, Duration) {
    let mut cmd = Command::new(exe);
    cmd.args(args)
        .env_remove(DAEMON_UID_ENV)
        .env_remove("HARPOCRATES_SOCKET")
        .envs(env.iter().copied())
        .current_dir("/")
        .stdin(Stdio::null());
    if let Some(u) = user {
        // std drops the supplementary groups, then sets the gid and the uid.
        cmd.uid(u.uid).gid(u.gid);
    }
    let started = Instant::now();
    let mut child =
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("run harpoctl");
    // A harpoctl that hangs is a failure, not a reason for the test to hang too.
    while child.try_wait().expect("wait for harpoctl").is_none() {
        if started.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            let out = child.wait_with_output().expect("harpoctl output");
            panic!("harpoctl {args:?} hung for 20 s; stderr: {}", stderr(&out));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let took = started.elapsed();
    (child.wait_with_output().expect("harpoctl output"), took)
}

const LISTENER: &str = r#"
import os, socket, sys
path, record, ready = sys.argv[1:4]
os.umask(0)  # a socket anyone may connect to: only the daemon's uid tells it apart
srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
srv.bind(path)
srv.listen(16)
open(ready, "w").close()
while True:
    conn, _ = srv.accept()
    total = 0
    while True:
        data = conn.recv(65536)
        if not data:
            break
        total += len(data)
    conn.close()
    with open(record, "a") as f:
        f.write(f"{total}\n")
"#;

/// A stand-in daemon running as another user: it accepts, never answers, and records the
/// bytes each connection sent once the client hangs up.
struct FakeDaemon {
    child: Child,
    socket: PathBuf,
    record: PathBuf,
}

impl FakeDaemon {
    fn start_as(user: &User, parent: &Path) -> Self {
        let dir = user_dir(parent, user);
        let socket = dir.join("harpocrates.sock");
        let record = dir.join("received");
        let ready = dir.join("ready");
        let python =
            if Path::new("/usr/bin/python3").exists() { "/usr/bin/python3" } else { "python3" };
        let child = Command::new(python)
            .arg("-c")
            .arg(LISTENER)
            .arg(&socket)
            .arg(&record)
            .arg(&ready)
            .current_dir(&dir)
            .uid(user.uid)
            .gid(user.gid)
            .stdin(Stdio::null())
            .spawn()
            .expect("python3 (the stand-in daemon)");
        let mut daemon = Self { child, socket, record };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ready.exists() {
            if let Ok(Some(status)) = daemon.child.try_wait() {
                panic!("the stand-in daemon exited early: {status}");
            }
            assert!(Instant::now() < deadline, "the stand-in daemon never got ready");
            std::thread::sleep(Duration::from_millis(20));
        }
        daemon
    }

    fn socket(&self) -> &str {
        self.socket.to_str().expect("utf-8 path")
    }

    /// Bytes received on each finished connection, waiting until there are `n`.
    fn received(&self, n: usize) -> Vec<u64> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let counts: Vec<u64> = std::fs::File::open(&self.record)
                .map(|f| {
                    BufReader::new(f)
                        .lines()
                        .map_while(Result::ok)
                        .filter_map(|l| l.trim().parse().ok())
                        .collect()
                })
                .unwrap_or_default();
            if counts.len() >= n {
                return counts;
            }
            assert!(
                Instant::now() < deadline,
                "the stand-in daemon recorded {counts:?}, expected {n} connections"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for FakeDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn no_daemon_uid_in_env() {
    assert!(
        std::env::var_os(DAEMON_UID_ENV).is_none(),
        "unset {DAEMON_UID_ENV} to run these tests: it would trust the stand-in daemon"
    );
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn the_client_sends_nothing_to_a_daemon_run_by_an_untrusted_uid() {
    let Some((daemon_user, _)) = test_users() else { return };
    no_daemon_uid_in_env();
    let dir = shared_dir();
    let daemon = FakeDaemon::start_as(&daemon_user, dir.path());
    let uid = daemon_user.uid;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();

    // We run as root here; root trusts uid 0 and itself, not the test user.
    let refused = runtime.block_on(Client::connect(&daemon.socket));
    let Err(Error::PermissionDenied(msg)) = &refused else {
        panic!("expected PermissionDenied, got {refused:?}");
    };
    for part in [daemon.socket(), &format!("uid {uid}"), &format!("{DAEMON_UID_ENV}={uid}")] {
        assert!(msg.contains(part), "{part:?} missing from: {msg}");
    }
    assert_eq!(daemon.received(1), [0], "not one byte may reach an untrusted daemon");

    // The blocking client refuses the same way.
    let refused = BlockingClient::connect(&daemon.socket);
    assert!(matches!(refused, Err(Error::PermissionDenied(_))), "{refused:?}");
    assert_eq!(daemon.received(2), [0, 0]);

    // Trusting that uid lets the connection go ahead: the Hello goes out, and as the
    // stand-in never answers, the handshake runs into the connect timeout.
    let options = ClientOptions {
        trusted_daemon_uid: Some(uid),
        connect_timeout: Some(Duration::from_millis(500)),
        ..ClientOptions::default()
    };
    let started = Instant::now();
    let trusted = runtime.block_on(Client::connect_with(&daemon.socket, options));
    assert!(matches!(&trusted, Err(Error::Timeout(_))), "{trusted:?}");
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    let counts = daemon.received(3);
    assert!(counts[2] > 0, "the trusted connection sent its Hello: {counts:?}");
}

#[test]
fn harpoctl_run_by_one_user_refuses_a_daemon_run_by_another() {
    let Some((daemon_user, caller)) = test_users() else { return };
    let dir = shared_dir();
    let exe = harpoctl_for_everyone(dir.path());
    let daemon = FakeDaemon::start_as(&daemon_user, dir.path());
    let uid = daemon_user.uid.to_string();
    let socket = daemon.socket();

    let (out, _) = harpoctl(&exe, Some(&caller), &["--socket", socket, "ping"], &[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(EXIT_DENIED), "{err}");
    for part in [socket, &format!("uid {uid}"), &format!("{DAEMON_UID_ENV}={uid}")] {
        assert!(err.contains(part), "{part:?} missing from: {err}");
    }
    assert!(err.contains(&format!("uid {} (this user)", caller.uid)), "{err}");
    assert_eq!(daemon.received(1), [0], "not one byte may reach an untrusted daemon");

    let (out, _) = harpoctl(&exe, Some(&caller), &["--json", "--socket", socket, "ping"], &[]);
    let json: serde_json::Value = serde_json::from_str(stderr(&out).trim()).expect("json error");
    assert_eq!(json["error"]["code"], "permission_denied", "{json}");
    assert_eq!(daemon.received(2), [0, 0]);

    // With the daemon's uid trusted through the environment, harpoctl goes ahead (the
    // stand-in never answers, so it then times out).
    let args = ["--socket", socket, "--timeout", "1s", "ping"];
    let (out, _) = harpoctl(&exe, Some(&caller), &args, &[(DAEMON_UID_ENV, &uid)]);
    assert_eq!(out.status.code(), Some(EXIT_TIMEOUT), "{}", stderr(&out));
    let counts = daemon.received(3);
    assert!(counts[2] > 0, "trusted: the Hello went out: {counts:?}");

    // The daemon's own user trusts it without being told.
    let (out, _) = harpoctl(&exe, Some(&daemon_user), &args, &[]);
    assert_eq!(out.status.code(), Some(EXIT_TIMEOUT), "{}", stderr(&out));
    let counts = daemon.received(4);
    assert!(counts[3] > 0, "same user: the Hello went out: {counts:?}");

    // A malformed uid in the environment is reported, not silently ignored.
    let (out, _) = harpoctl(&exe, Some(&caller), &args, &[(DAEMON_UID_ENV, "daemon")]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(EXIT_DENIED), "{err}");
    assert!(err.contains("not a numeric uid"), "{err}");
    assert_eq!(daemon.received(5)[4], 0);
}

#[test]
fn a_socket_this_user_may_not_open_exits_77_not_69() {
    let Some((_, caller)) = test_users() else { return };
    let dir = shared_dir();
    let exe = harpoctl_for_everyone(dir.path());
    // A live socket (so the only obstacle is permission) in a directory only root enters.
    let private = dir.path().join("private");
    std::fs::create_dir(&private).expect("mkdir");
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let socket = private.join("harpocrates.sock");
    let _listener = UnixListener::bind(&socket).expect("bind");

    let (out, _) =
        harpoctl(&exe, Some(&caller), &["--socket", socket.to_str().expect("utf-8"), "ping"], &[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(EXIT_DENIED), "{err}");
    assert!(err.contains(&socket.display().to_string()), "{err}");
    assert!(err.contains("Permission denied"), "{err}");
    assert!(!err.contains("is harpocratesd running?"), "not an absent daemon: {err}");
}

#[test]
fn harpoctl_gives_up_on_a_daemon_that_never_answers_the_handshake() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("silent.sock");
    let listener = UnixListener::bind(&socket).expect("bind");
    // Accepts (as ourselves, so trusted) and holds every connection without a word.
    std::thread::spawn(move || {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept() {
            held.push(stream);
        }
    });
    let s = socket.to_str().expect("utf-8");
    let exe = Path::new(env!("CARGO_BIN_EXE_harpoctl"));

    let (out, took) = harpoctl(exe, None, &["--timeout", "2", "--socket", s, "ping"], &[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(EXIT_TIMEOUT), "{err}");
    assert!(err.contains("timed out"), "{err}");
    assert!(err.contains(s), "{err}");
    assert!(took >= Duration::from_millis(1900) && took < Duration::from_secs(3), "{took:?}");

    let (out, _) =
        harpoctl(exe, None, &["--json", "--timeout", "300ms", "--socket", s, "ping"], &[]);
    let json: serde_json::Value = serde_json::from_str(stderr(&out).trim()).expect("json error");
    assert_eq!(out.status.code(), Some(EXIT_TIMEOUT));
    assert_eq!(json["error"]["code"], "timeout", "{json}");
}

/// A stand-in daemon that completes the handshake and then never answers.
fn mute_after_hello(socket: &Path) {
    let listener = std::os::unix::net::UnixListener::bind(socket).expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::UnixListener::from_std(listener).expect("tokio listener");
            let mut held = Vec::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let (r, w) = stream.into_split();
                let mut reader =
                    FramedRead::new(r, MessageCodec::<RequestFrame, ResponseFrame>::default());
                let mut writer =
                    FramedWrite::new(w, MessageCodec::<RequestFrame, ResponseFrame>::default());
                if let Some(Ok(Ok(RequestFrame { id, request: Request::Hello { .. } }))) =
                    reader.next().await
                {
                    let hello = Response::Hello {
                        version: PROTOCOL_VERSION,
                        daemon_version: "mute".into(),
                        backend: "mute".into(),
                        max_frame: harpocrates_protocol::DEFAULT_MAX_FRAME,
                    };
                    writer.send(ResponseFrame { id, result: Ok(hello) }).await.expect("hello");
                }
                held.push((reader, writer));
            }
        });
    });
}

#[test]
fn harpoctl_gives_up_on_a_request_that_is_never_answered() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("mute.sock");
    mute_after_hello(&socket);
    let s = socket.to_str().expect("utf-8");
    let exe = Path::new(env!("CARGO_BIN_EXE_harpoctl"));
    let (out, took) = harpoctl(exe, None, &["--timeout", "2s", "--socket", s, "ping"], &[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(EXIT_TIMEOUT), "{err}");
    assert!(err.contains("timed out") && err.contains("request_timeout"), "{err}");
    assert!(took >= Duration::from_millis(1900) && took < Duration::from_secs(3), "{took:?}");
}

#[test]
fn a_missing_password_file_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("no-such-password");
    let pw = missing.to_str().expect("utf-8");
    let socket = dir.path().join("none.sock");
    let s = socket.to_str().expect("utf-8");
    let exe = Path::new(env!("CARGO_BIN_EXE_harpoctl"));
    for args in [
        &["--socket", s, "keys", "backup", "k", "--password-file", pw][..],
        &["--socket", s, "keys", "restore", "k", "--password-file", pw][..],
    ] {
        let (out, _) = harpoctl(exe, None, args, &[]);
        let err = stderr(&out);
        assert!(!out.status.success());
        assert!(err.contains(pw) && err.contains("password file"), "{args:?}: {err}");
    }
    // The password itself never shows up in an error.
    std::fs::File::create(&missing).and_then(|mut f| f.write_all(b"s3cret-pw\n")).expect("pw");
    let (out, _) =
        harpoctl(exe, None, &["--socket", s, "keys", "backup", "k", "--password-file", pw], &[]);
    assert_eq!(out.status.code(), Some(69), "{}", stderr(&out));
    assert!(!stderr(&out).contains("s3cret-pw"));
}
