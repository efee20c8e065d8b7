//! Test fixture: the real `harpocratesd` binary on a private soft token and socket in a
//! temporary directory. Readiness comes from the daemon's own sd_notify `READY=1`, so
//! tests never guess with sleeps.

#![allow(dead_code)]

pub mod hooked;

use std::io::Read;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The PIN every fixture token uses; tests check that it never shows up in output.
pub const PIN: &str = "fixture-pin-7f3a9c";

/// The SoftHSM2 module, as Debian installs it.
pub const SOFTHSM2_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// Label of the fixture's SoftHSM2 token.
pub const TOKEN_LABEL: &str = "harpocrates-test";

/// Which token a fixture daemon serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Token {
    /// The embedded soft token.
    Soft,
    /// A fresh SoftHSM2 token through the PKCS#11 backend.
    SoftHsm,
}

/// A private SoftHSM2 installation: its own configuration and token directory.
pub struct SoftHsm {
    /// `SOFTHSM2_CONF` for every process that should see these tokens.
    pub conf: PathBuf,
}

impl SoftHsm {
    /// Creates the directory layout and initialises one token labelled `label` with
    /// user PIN [`PIN`].
    pub fn init(dir: &Path, label: &str) -> Self {
        assert!(
            Path::new(SOFTHSM2_MODULE).exists(),
            "{SOFTHSM2_MODULE} is missing: install SoftHSM2 (apt-get install softhsm2), as .ci/run does"
        );
        let tokens = dir.join("tokens");
        std::fs::create_dir_all(&tokens).expect("token dir");
        let conf = dir.join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                tokens.display()
            ),
        )
        .expect("softhsm2.conf");
        let hsm = Self { conf };
        hsm.init_token(label);
        hsm
    }

    /// Initialises another token in the first free slot.
    pub fn init_token(&self, label: &str) {
        let out = Command::new("softhsm2-util")
            .args([
                "--init-token",
                "--free",
                "--label",
                label,
                "--pin",
                PIN,
                "--so-pin",
                "fixture-so-pin",
            ])
            .env("SOFTHSM2_CONF", &self.conf)
            .output()
            .expect("softhsm2-util (install softhsm2)");
        assert!(
            out.status.success(),
            "softhsm2-util failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `pkcs11-tool --list-objects --type <kind>` on the fixture token, logged in with [`PIN`].
    pub fn list_objects(&self, kind: &str) -> String {
        self.pkcs11_tool(&[
            "--token-label",
            TOKEN_LABEL,
            "--login",
            "--pin",
            PIN,
            "--list-objects",
            "--type",
            kind,
        ])
    }

    /// Runs OpenSC's `pkcs11-tool` against these tokens.
    pub fn pkcs11_tool(&self, args: &[&str]) -> String {
        let out = Command::new("pkcs11-tool")
            .arg("--module")
            .arg(SOFTHSM2_MODULE)
            .args(args)
            .env("SOFTHSM2_CONF", &self.conf)
            .output()
            .expect("pkcs11-tool (install opensc)");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "pkcs11-tool {args:?} failed: {text}");
        text
    }
}

/// Path of a binary built by this workspace (`cargo test --workspace` builds them).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run the workspace tests (`cargo test --workspace`), which build it",
        path.display()
    );
    path
}

/// A daemon process and the directory it lives in.
pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    /// The SoftHSM2 installation, for `Token::SoftHsm` daemons.
    pub softhsm: Option<SoftHsm>,
    /// A `[pkcs11]` section for a token set up outside the test (see `start_external`).
    external: Option<String>,
    /// Extra environment for the next start (see `set_env`).
    env: Vec<(String, String)>,
    child: Option<Child>,
    extra_config: String,
    /// Everything every run of the daemon printed, drained continuously so a chatty
    /// daemon never blocks on a full pipe.
    output: Arc<Mutex<Vec<u8>>>,
    drains: Vec<std::thread::JoinHandle<()>>,
}

/// One request as raw bytes on the wire: length prefix and bincode body.
pub fn frame(id: u64, request: harpocrates::protocol::Request) -> Vec<u8> {
    let frame = harpocrates::protocol::RequestFrame { id, request };
    let body = bincode::serde::encode_to_vec(frame, harpocrates::protocol::bincode_config())
        .expect("encode");
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}

/// A soft-token configuration file in `dir` (PIN file beside it) whose socket is
/// `socket`, for tests that run `harpocratesd` themselves.
pub fn soft_config(dir: &Path, socket: &Path) -> PathBuf {
    write_secret(&dir.join("pin"), PIN);
    let path = dir.join("soft.toml");
    std::fs::write(
        &path,
        format!(
            "socket_path = {socket:?}\npin_file = {:?}\n[soft]\nstate_dir = {:?}\nkdf_memory_kib = 256\nkdf_iterations = 1\n",
            dir.join("pin"),
            dir.join("state"),
        ),
    )
    .expect("config");
    path
}

/// Writes a secret file (a PIN, a password) readable by its owner only, as the daemon
/// insists.
pub fn write_secret(path: &Path, contents: &str) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(contents.as_bytes()))
        .expect("secret file");
}

impl Daemon {
    /// Starts a daemon on the soft token with the default fixture configuration.
    pub fn start() -> Self {
        Self::start_on(Token::Soft, "")
    }

    /// Starts a soft-token daemon; `extra_config` goes to the top level of its config.
    pub fn start_with(extra_config: &str) -> Self {
        Self::start_on(Token::Soft, extra_config)
    }

    /// Starts a daemon serving `token`; `extra_config` goes to the top level of its
    /// TOML configuration.
    pub fn start_on(token: Token, extra_config: &str) -> Self {
        Self::start_on_env(token, extra_config, &[])
    }

    /// Like [`start_on`](Self::start_on), with extra environment for the daemon.
    pub fn start_on_env(token: Token, extra_config: &str, env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("d.sock");
        write_secret(&dir.path().join("pin"), &format!("{PIN}\n"));
        let softhsm = (token == Token::SoftHsm)
            .then(|| SoftHsm::init(&dir.path().join("softhsm"), TOKEN_LABEL));
        let mut d = Daemon {
            dir,
            socket,
            softhsm,
            external: None,
            env: Vec::new(),
            child: None,
            extra_config: extra_config.to_owned(),
            output: Arc::default(),
            drains: Vec::new(),
        };
        for (k, v) in env {
            d.set_env(k, Some(v));
        }
        d.write_config();
        d.spawn();
        d
    }

    /// Starts a daemon on a PKCS#11 token prepared outside the test (another vendor's
    /// module): `pkcs11_section` is the body of its `[pkcs11]` section.
    pub fn start_external(
        pin: &str,
        pkcs11_section: &str,
        extra_config: &str,
        env: &[(&str, &str)],
    ) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("d.sock");
        write_secret(&dir.path().join("pin"), pin);
        let mut d = Daemon {
            dir,
            socket,
            softhsm: None,
            external: Some(format!("backend = \"pkcs11\"\n[pkcs11]\n{pkcs11_section}\n")),
            env: env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
            child: None,
            extra_config: extra_config.to_owned(),
            output: Arc::default(),
            drains: Vec::new(),
        };
        d.write_config();
        d.spawn();
        d
    }

    /// The daemon's configuration file.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("harpocrates.toml")
    }

    fn write_config(&self) {
        let backend = if let Some(section) = &self.external {
            section.clone()
        } else if self.softhsm.is_some() {
            format!(
                "backend = \"pkcs11\"\n[pkcs11]\nlibrary_path = {SOFTHSM2_MODULE:?}\ntoken_label = {TOKEN_LABEL:?}\n"
            )
        } else {
            "[soft]\nkdf_memory_kib = 256\nkdf_iterations = 1\n".to_owned()
        };
        let text = format!(
            "{extra}\nsocket_path = {socket:?}\npin_file = {pin:?}\nlog_level = \"debug\"\n\
             retry_delay = \"10ms\"\n{backend}",
            extra = self.extra_config,
            socket = self.socket,
            pin = self.dir.path().join("pin"),
        );
        let text = if self.softhsm.is_some() || self.external.is_some() {
            text
        } else {
            format!("{text}state_dir = {:?}\n", self.dir.path().join("state"))
        };
        std::fs::write(self.config_path(), text).expect("config");
    }

    fn spawn(&mut self) {
        let notify_path = self.dir.path().join("notify.sock");
        let _ = std::fs::remove_file(&notify_path);
        let notify = UnixDatagram::bind(&notify_path).expect("notify socket");
        notify.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
        let child = Command::new(bin("harpocratesd"))
            .arg("--config")
            .arg(self.config_path())
            .env("NOTIFY_SOCKET", &notify_path)
            .env_remove("RUST_LOG")
            .env_remove("JOURNAL_STREAM")
            .env(
                "SOFTHSM2_CONF",
                self.softhsm
                    .as_ref()
                    .map_or_else(|| PathBuf::from("/nonexistent"), |h| h.conf.clone()),
            )
            // Explicit settings win over the defaults above.
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn harpocratesd");
        let mut child = child;
        for pipe in [
            child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>),
            child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let sink = self.output.clone();
            self.drains.push(std::thread::spawn(move || drain(pipe, &sink)));
        }
        self.child = Some(child);
        let mut buf = [0u8; 512];
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let n = notify.recv(&mut buf).unwrap_or_else(|e| {
                panic!("daemon never said READY=1 ({e}); output:\n{}", self.output())
            });
            if String::from_utf8_lossy(&buf[..n]).lines().any(|l| l == "READY=1") {
                break;
            }
            assert!(Instant::now() < deadline, "daemon not ready in time");
        }
    }

    /// The daemon's pid.
    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Sends `signal` and waits for the exit.
    pub fn signal_and_wait(&mut self, signal: i32) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        unsafe { libc::kill(child.id() as i32, signal) };
        wait_timeout(&mut child, Duration::from_secs(20))
    }

    /// Sets (or with `None` removes) an environment variable for the next start.
    pub fn set_env(&mut self, key: &str, value: Option<&str>) {
        self.env.retain(|(k, _)| k != key);
        if let Some(v) = value {
            self.env.push((key.to_owned(), v.to_owned()));
        }
    }

    /// Waits for the daemon to exit on its own (e.g. after a crash point) and starts it
    /// again on the same state and socket.
    pub fn wait_and_restart(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let status = wait_timeout(&mut child, Duration::from_secs(20));
        self.spawn();
        status
    }

    /// Graceful stop (SIGTERM) and restart on the same state and socket.
    pub fn restart(&mut self) {
        let status = self.signal_and_wait(libc::SIGTERM);
        assert!(status.success(), "graceful stop failed: {status:?}");
        self.spawn();
    }

    /// Crash (SIGKILL) and restart on the same state and socket.
    pub fn crash_and_restart(&mut self) {
        self.signal_and_wait(libc::SIGKILL);
        self.spawn();
    }

    /// Stops the daemon gracefully and returns everything it printed, over all runs.
    pub fn stop_and_collect_output(mut self) -> String {
        let status = self.signal_and_wait(libc::SIGTERM);
        assert!(status.success(), "graceful stop failed: {status:?}");
        // The pipes close with the process, which ends the drain threads.
        for t in self.drains.drain(..) {
            let _ = t.join();
        }
        self.output()
    }

    /// What the daemon printed so far.
    pub fn output(&self) -> String {
        String::from_utf8_lossy(&self.output.lock().expect("output lock")).into_owned()
    }
}

fn drain(mut pipe: Box<dyn Read + Send>, sink: &Mutex<Vec<u8>>) {
    let mut buf = [0u8; 4096];
    while let Ok(n) = pipe.read(&mut buf) {
        if n == 0 {
            break;
        }
        sink.lock().expect("output lock").extend_from_slice(&buf[..n]);
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Waits for a child with a deadline; kills it if the deadline passes.
pub fn wait_timeout(child: &mut Child, limit: Duration) -> ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("process did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

// ---- Test users, shared directories, child processes as other users, audit files.
// (Used by tests/access.rs and tests/audit.rs.)

/// A local account the tests switch child processes to.
#[derive(Debug, Clone)]
pub struct TestUser {
    /// Its name.
    pub name: String,
    /// Its uid.
    pub uid: u32,
    /// Its primary gid.
    pub gid: u32,
}

/// Passes with a note on a developer's machine, fails in CI.
pub fn skip(reason: &str) {
    if std::env::var_os("CI").is_some_and(|v| !v.is_empty()) {
        panic!("{reason} (CI is set, so this is a failure, not a skip)");
    }
    eprintln!("skipping: {reason}");
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn account_id(flag: &str, name: &str) -> Option<u32> {
    let out = Command::new("id").args([flag, name]).output().ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// The two test users named by `HARPOCRATES_TEST_USERS` (default
/// `harpotest1,harpotest2`), or `None` (after [`skip`]) when this run cannot switch to
/// them.
pub fn test_users() -> Option<(TestUser, TestUser)> {
    if !is_root() {
        skip("switching to the test users needs root");
        return None;
    }
    let names = std::env::var("HARPOCRATES_TEST_USERS")
        .unwrap_or_else(|_| "harpotest1,harpotest2".to_owned());
    let users: Vec<TestUser> = names
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .filter_map(|name| {
            Some(TestUser {
                name: name.to_owned(),
                uid: account_id("-u", name)?,
                gid: account_id("-g", name)?,
            })
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

/// A directory under /tmp (whatever `TMPDIR` says) that every user may enter: mode 0755,
/// owned by us.
pub fn shared_dir(prefix: &str) -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::Builder::new().prefix(prefix).tempdir_in("/tmp").expect("tempdir in /tmp");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    dir
}

/// `exe` itself when every user may run it where it is, else a copy in `dir` (the
/// build's target directory may sit below a directory only its owner can enter).
pub fn runnable_by_everyone(exe: &Path, dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let everyone_may =
        |p: &Path, bit: u32| std::fs::metadata(p).is_ok_and(|m| m.permissions().mode() & bit != 0);
    if everyone_may(exe, 0o001) && exe.ancestors().skip(1).all(|a| everyone_may(a, 0o001)) {
        return exe.to_owned();
    }
    let copy = dir.join(exe.file_name().expect("executable name"));
    if !copy.exists() {
        std::fs::copy(exe, &copy).expect("copy executable");
        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    copy
}

/// What a child process did.
#[derive(Debug)]
pub struct Ran {
    /// Its exit code (-1 when killed by a signal).
    pub code: i32,
    /// Its standard output.
    pub stdout: Vec<u8>,
    /// Its standard error, as text.
    pub stderr: String,
}

impl Ran {
    /// Standard output as text.
    pub fn out(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

/// Runs `exe args` as `user` (or as ourselves with `None`) in `/`, with `env` added and
/// `stdin` fed in; a process still running after 60 s is killed and fails the test.
pub fn run_as(
    exe: &Path,
    user: Option<&TestUser>,
    args: &[&str],
    env: &[(&str, &str)],
    stdin: &[u8],
) -> Ran {
    use std::io::Write;
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(exe);
    cmd.args(args)
        .env_remove("HARPOCRATES_DAEMON_UID")
        .env_remove("HARPOCRATES_SOCKET")
        .env_remove("RUST_LOG")
        .envs(env.iter().copied())
        .current_dir("/")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(u) = user {
        // std drops the supplementary groups, then sets the gid and the uid.
        cmd.uid(u.uid).gid(u.gid);
    }
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("run {}: {e}", exe.display()));
    let input = stdin.to_vec();
    let mut pipe = child.stdin.take().expect("stdin");
    let feeder = std::thread::spawn(move || {
        let _ = pipe.write_all(&input);
    });
    let collect = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    };
    let stdout = collect(child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let stderr = collect(child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{} {args:?} ran for more than 60 s", exe.display());
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let _ = feeder.join();
    Ran {
        code: status.code().unwrap_or(-1),
        stdout: stdout.join().expect("stdout"),
        stderr: String::from_utf8_lossy(&stderr.join().expect("stderr")).into_owned(),
    }
}

/// Polls `probe` every 10 ms until it returns `Some`, failing the test after `limit`.
pub fn wait_for<T>(limit: Duration, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(Instant::now() < deadline, "gave up after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The environment variable that puts a test binary re-run by [`run_self_as`] into its
/// child role; its value is the test's argument (a socket path, say).
pub const CHILD_ENV: &str = "HARPO_TEST_CHILD";

/// Marks the lines a child prints for its parent.
pub const CHILD_MARK: &str = "HARPO-CHILD-RESULT ";

/// In a test that re-runs itself as another user: the argument given by the parent, or
/// `None` in the parent.
pub fn child_argument() -> Option<String> {
    std::env::var(CHILD_ENV).ok()
}

/// Prints a result for the parent of a child test.
pub fn child_report(value: &serde_json::Value) {
    println!("{CHILD_MARK}{value}");
}

/// Runs the test `test` of this test binary as `user`, with [`CHILD_ENV`] set to
/// `argument`, and returns what the child reported with [`child_report`].
pub fn run_self_as(
    user: &TestUser,
    test: &str,
    argument: &str,
    copy_dir: &Path,
) -> Vec<serde_json::Value> {
    let exe = std::env::current_exe().expect("test executable");
    let exe = runnable_by_everyone(&exe, copy_dir);
    let ran = run_as(
        &exe,
        Some(user),
        &[test, "--exact", "--nocapture", "--test-threads=1"],
        &[(CHILD_ENV, argument)],
        b"",
    );
    assert_eq!(ran.code, 0, "child {test} as {} failed: {}\n{}", user.name, ran.out(), ran.stderr);
    let reports: Vec<serde_json::Value> = ran
        .out()
        .lines()
        // With --nocapture the harness's "test name ... " may precede a report on its line.
        .filter_map(|l| l.find(CHILD_MARK).map(|at| &l[at + CHILD_MARK.len()..]))
        .map(|l| serde_json::from_str(l).expect("child report is JSON"))
        .collect();
    assert!(!reports.is_empty(), "child {test} reported nothing: {}", ran.out());
    reports
}

/// The files of the audit chain whose active file is `active`, in chain order: the
/// rotated `<name>.<k>` by `k`, then the active file.
pub fn audit_chain_files(active: &Path) -> Vec<PathBuf> {
    let dir = active.parent().expect("audit dir");
    let name = active.file_name().and_then(|n| n.to_str()).expect("audit file name");
    let mut rotated: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .expect("read audit dir")
        .filter_map(|e| {
            let e = e.ok()?;
            let n = e.file_name().into_string().ok()?;
            let k = n.strip_prefix(name)?.strip_prefix('.')?.parse().ok()?;
            Some((k, e.path()))
        })
        .collect();
    rotated.sort();
    let mut files: Vec<PathBuf> = rotated.into_iter().map(|(_, p)| p).collect();
    if active.exists() {
        files.push(active.to_owned());
    }
    files
}

/// Every event record of the audit chain whose active file is `active`, in order. Lines
/// that are not (yet) whole records are skipped: the chain's integrity is for
/// `harpoctl audit verify` to judge.
pub fn audit_events(active: &Path) -> Vec<harpocrates::protocol::AuditEvent> {
    use harpocrates::protocol::audit::chain::{RecordBody, decode_line};
    let mut events = Vec::new();
    for file in audit_chain_files(active) {
        let bytes = std::fs::read(&file).unwrap_or_default();
        for line in bytes.split_inclusive(|b| *b == b'\n') {
            if let Ok(record) = decode_line(line)
                && let RecordBody::Event(event) = record.body
            {
                events.push(event);
            }
        }
    }
    events
}

/// Waits until the audit chain at `active` holds an event `matches` accepts, and
/// returns it.
pub fn wait_for_audit_event(
    active: &Path,
    what: &str,
    matches: impl Fn(&harpocrates::protocol::AuditEvent) -> bool,
) -> harpocrates::protocol::AuditEvent {
    wait_for(Duration::from_secs(15), &format!("the audit record of {what}"), || {
        audit_events(active).into_iter().find(|e| matches(e))
    })
}

impl Daemon {
    /// Starts a soft-token daemon that every user can reach: its directory is under /tmp
    /// with mode 0755. `top` goes to the top level of its configuration, `tables`
    /// (`[audit]`, `[[policy]]`, ...) after everything else.
    pub fn start_shared(top: &str, tables: &str) -> Self {
        let dir = shared_dir("harpo-daemon-");
        let socket = dir.path().join("d.sock");
        write_secret(&dir.path().join("pin"), &format!("{PIN}\n"));
        let mut d = Daemon {
            dir,
            socket,
            softhsm: None,
            external: None,
            env: Vec::new(),
            child: None,
            extra_config: top.to_owned(),
            output: Arc::default(),
            drains: Vec::new(),
        };
        d.rewrite_tables(tables);
        d.spawn();
        d
    }

    /// Writes the configuration again with `tables` in place of the earlier ones (for
    /// a SIGHUP reload, or the next start).
    pub fn rewrite_tables(&self, tables: &str) {
        use std::io::Write;
        self.write_config();
        let mut file =
            std::fs::OpenOptions::new().append(true).open(self.config_path()).expect("config");
        write!(file, "\n{tables}\n").expect("append tables");
    }
}
