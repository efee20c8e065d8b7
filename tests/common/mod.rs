//! Test fixture: the real `harpocratesd` binary on a private soft token and socket in a
//! temporary directory. Readiness comes from the daemon's own sd_notify `READY=1`, so
//! tests never guess with sleeps.

#![allow(dead_code)]

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
