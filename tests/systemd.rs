//! The daemon under systemd's service protocols, without systemd as PID 1:
//!
//! * socket activation through `systemd-socket-activate` (Debian's systemd package): the
//!   first connection starts the daemon, clients that connect before READY are served,
//!   the activated socket is never removed, and a wrong socket is refused;
//! * notifications to a datagram socket the test owns: READY, STATUS, WATCHDOG at half
//!   the timeout, RELOADING/READY on SIGHUP, STOPPING on SIGTERM, in that order;
//! * a token whose calls hang stops the watchdog pings (in-process, around a real token).

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::hooked::{Gate, gated_soft_token};
use harpocrates::client::BlockingClient;
use harpocrates_daemon::config::{Args, Settings};
use harpocrates_daemon::server::{self, Service};
use harpocrates_daemon::systemd::notify::Notifier;

/// Notifications as they arrive, each with its arrival time.
struct Notes {
    socket: UnixDatagram,
    seen: Vec<(Instant, String)>,
}

impl Notes {
    fn bind(path: &Path) -> Self {
        let socket = UnixDatagram::bind(path).expect("notify socket");
        socket.set_read_timeout(Some(Duration::from_millis(100))).expect("timeout");
        Self { socket, seen: Vec::new() }
    }

    /// Collects until `done` holds for what was seen, or `limit` passes.
    fn until(&mut self, limit: Duration, what: &str, done: impl Fn(&[(Instant, String)]) -> bool) {
        let deadline = Instant::now() + limit;
        let mut buf = [0u8; 4096];
        while !done(&self.seen) {
            assert!(
                Instant::now() < deadline,
                "no {what} within {limit:?}; seen: {:?}",
                self.texts()
            );
            if let Ok(n) = self.socket.recv(&mut buf) {
                self.seen.push((Instant::now(), String::from_utf8_lossy(&buf[..n]).into_owned()));
            }
        }
    }

    /// Collects everything that arrives for `span`.
    fn collect_for(&mut self, span: Duration) {
        let end = Instant::now() + span;
        self.until(span + Duration::from_secs(1), "time to pass", |_| Instant::now() >= end);
    }

    fn texts(&self) -> Vec<&str> {
        self.seen.iter().map(|(_, t)| t.as_str()).collect()
    }

    /// The life-cycle messages (not the periodic STATUS and WATCHDOG), in order.
    fn lifecycle(&self) -> Vec<String> {
        self.texts()
            .into_iter()
            .filter(|t| !t.starts_with("STATUS=") && *t != "WATCHDOG=1\n")
            .map(|t| {
                // MONOTONIC_USEC carries a clock reading; keep only its name.
                t.lines()
                    .map(|l| if l.starts_with("MONOTONIC_USEC=") { "MONOTONIC_USEC=…" } else { l })
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect()
    }

    fn count(&self, text: &str) -> usize {
        self.seen.iter().filter(|(_, t)| t == text).count()
    }
}

fn has(text: &'static str) -> impl Fn(&[(Instant, String)]) -> bool {
    move |seen| seen.iter().any(|(_, t)| t.lines().any(|l| l == text))
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) on our own child's pid; no memory is involved.
    unsafe { libc::kill(child.id() as i32, sig) };
}

/// A soft-token configuration whose own socket path is `unused.sock`: an activated
/// daemon must not bind it.
fn config(dir: &Path) -> PathBuf {
    common::soft_config(dir, &dir.join("unused.sock"))
}

/// `systemd-socket-activate` listening on `listen` (several for several sockets),
/// running the daemon with NOTIFY_SOCKET pointed at `notify`.
fn activate(dir: &Path, listen: &[&Path], datagram: bool, notify: &Path) -> Child {
    let mut cmd = Command::new("systemd-socket-activate");
    for l in listen {
        cmd.arg("-l").arg(l);
    }
    if datagram {
        cmd.arg("--datagram");
    }
    cmd.arg(format!("--setenv=NOTIFY_SOCKET={}", notify.display()))
        .arg("--setenv=RUST_LOG=info")
        .arg(common::bin("harpocratesd"))
        .arg("--config")
        .arg(config(dir))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("stderr")).expect("stderr file"));
    let child = cmd.spawn().expect("systemd-socket-activate (Debian package systemd)");
    common::wait_for(Duration::from_secs(10), "the activation socket", || {
        listen.iter().all(|l| l.exists()).then_some(())
    });
    child
}

fn have_socket_activate() -> bool {
    let found = Command::new("systemd-socket-activate").arg("--version").output().is_ok();
    if !found {
        common::skip("systemd-socket-activate is not installed (apt-get install systemd)");
    }
    found
}

#[test]
fn the_first_connection_starts_the_daemon_and_early_clients_are_served() {
    if !have_socket_activate() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("activated.sock");
    let mut notes = Notes::bind(&dir.path().join("notify"));
    let mut daemon = activate(dir.path(), &[&socket], false, &dir.path().join("notify"));
    assert!(notes.seen.is_empty(), "nothing runs before the first connection");

    // Eight clients connect at once, before the daemon exists: the first connection
    // starts it, and every one of them waits in the backlog and is served.
    let connected_before_ready = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (socket, early) = (socket.clone(), connected_before_ready.clone());
            std::thread::spawn(move || {
                let client = BlockingClient::connect(&socket).expect("connect");
                early.fetch_add(1, Ordering::SeqCst);
                client.ping().expect("ping");
                client.generate_random(16).expect("random").expose().len()
            })
        })
        .collect();
    notes.until(Duration::from_secs(20), "READY=1", has("READY=1"));
    for c in clients {
        assert_eq!(c.join().expect("client thread"), 16);
    }
    assert_eq!(connected_before_ready.load(Ordering::SeqCst), 8);
    assert!(!dir.path().join("unused.sock").exists(), "the configured path is not bound");

    signal(&daemon, libc::SIGTERM);
    let status = common::wait_timeout(&mut daemon, Duration::from_secs(20));
    let stderr = std::fs::read_to_string(dir.path().join("stderr")).unwrap_or_default();
    assert!(status.success(), "exit {status:?}; stderr:\n{stderr}");
    notes.until(Duration::from_secs(5), "STOPPING=1", has("STOPPING=1"));
    assert!(
        std::fs::symlink_metadata(&socket).is_ok(),
        "the activated socket belongs to systemd and stays; stderr:\n{stderr}"
    );
}

#[test]
fn a_second_socket_or_a_datagram_socket_is_refused_with_a_reason() {
    if !have_socket_activate() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b) = (dir.path().join("a.sock"), dir.path().join("b.sock"));
    let mut two = activate(dir.path(), &[&a, &b], false, &dir.path().join("notify"));
    let _ = std::os::unix::net::UnixStream::connect(&a).expect("connect");
    let status = common::wait_timeout(&mut two, Duration::from_secs(20));
    let stderr = std::fs::read_to_string(dir.path().join("stderr")).unwrap_or_default();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("systemd passed 2 sockets") && stderr.contains("exactly one"),
        "{stderr}"
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().join("d.sock");
    let mut datagram = activate(dir.path(), &[&d], true, &dir.path().join("notify"));
    UnixDatagram::unbound().expect("socket").send_to(b"wake", &d).expect("send");
    let status = common::wait_timeout(&mut datagram, Duration::from_secs(20));
    let stderr = std::fs::read_to_string(dir.path().join("stderr")).unwrap_or_default();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("not a stream socket"), "{stderr}");
}

#[test]
fn notifications_arrive_in_order_with_watchdog_pings_at_half_the_timeout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("d.sock");
    let notify = dir.path().join("notify");
    let mut notes = Notes::bind(&notify);
    let mut daemon = Command::new(common::bin("harpocratesd"))
        .arg("--config")
        .arg(common::soft_config(dir.path(), &socket))
        .env("NOTIFY_SOCKET", &notify)
        // 600 ms: the daemon pings every 300 ms.
        .env("WATCHDOG_USEC", "600000")
        .env_remove("WATCHDOG_PID")
        .env_remove("LISTEN_FDS")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    notes.until(Duration::from_secs(20), "READY=1", has("READY=1"));
    notes.collect_for(Duration::from_millis(2_500));
    let pings: Vec<Instant> =
        notes.seen.iter().filter(|(_, t)| t == "WATCHDOG=1\n").map(|(at, _)| *at).collect();
    assert!(pings.len() >= 5, "about 8 pings in 2.5 s; got {}: {:?}", pings.len(), notes.texts());
    let mut gaps: Vec<Duration> = pings.windows(2).map(|w| w[1] - w[0]).collect();
    gaps.sort();
    let median = gaps[gaps.len() / 2];
    assert!(
        median >= Duration::from_millis(200) && median <= Duration::from_millis(450),
        "pings every {median:?}, expected about 300 ms (half of WATCHDOG_USEC)"
    );
    let status = notes.texts().into_iter().find(|t| t.starts_with("STATUS=")).expect("a STATUS");
    assert!(
        status.starts_with("STATUS=soft token '") && status.contains("(generation 1)"),
        "{status}"
    );
    let client = BlockingClient::connect(&socket).expect("connect");
    client.ping().expect("ping");

    signal(&daemon, libc::SIGHUP);
    notes.until(Duration::from_secs(10), "READY after RELOADING", |seen| {
        seen.iter().filter(|(_, t)| t == "READY=1\n").count() >= 2
    });
    client.ping().expect("the connection survives a reload");
    let pings_before = notes.count("WATCHDOG=1\n");
    notes.collect_for(Duration::from_millis(700));
    assert!(notes.count("WATCHDOG=1\n") > pings_before, "pings go on after a reload");

    signal(&daemon, libc::SIGTERM);
    let exit = common::wait_timeout(&mut daemon, Duration::from_secs(20));
    assert!(exit.success(), "{exit:?}");
    notes.until(Duration::from_secs(5), "STOPPING=1", has("STOPPING=1"));
    assert_eq!(
        notes.lifecycle(),
        ["READY=1", "RELOADING=1 MONOTONIC_USEC=…", "READY=1", "STOPPING=1"],
        "all: {:?}",
        notes.texts()
    );
}

#[test]
fn a_token_whose_calls_hang_stops_the_watchdog_pings() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = config(dir.path());
    let settings =
        Settings::from_args(&Args { config: Some(path), ..Args::default() }).expect("settings");
    let gate = Arc::new(Gate::default());
    let backend = gated_soft_token(&settings, gate.clone());
    let notify = dir.path().join("notify");
    let mut notes = Notes::bind(&notify);
    let service = Service {
        notifier: Notifier::to(&notify, Some(Duration::from_millis(400))),
        ..Service::default()
    };
    let daemon = server::spawn_with(settings, Arc::new(backend), service).expect("daemon");
    notes.until(Duration::from_secs(10), "three pings", |seen| {
        seen.iter().filter(|(_, t)| t == "WATCHDOG=1\n").count() >= 3
    });

    gate.shut();
    // A probe already under way may still answer; then the pings stop.
    notes.collect_for(Duration::from_millis(500));
    let when_hung = notes.count("WATCHDOG=1\n");
    notes.collect_for(Duration::from_millis(1_500));
    assert_eq!(
        notes.count("WATCHDOG=1\n"),
        when_hung,
        "no ping while the token hangs (the timeout is 400 ms; systemd would restart us)"
    );

    gate.open();
    notes.until(Duration::from_secs(5), "pings again", |seen| {
        seen.iter().filter(|(_, t)| t == "WATCHDOG=1\n").count() > when_hung
    });
    daemon.stop();
    notes.until(Duration::from_secs(5), "STOPPING=1", has("STOPPING=1"));
}

#[test]
fn a_stop_lets_requests_in_flight_finish() {
    let dir = tempfile::tempdir().expect("tempdir");
    let settings =
        Settings::from_args(&Args { config: Some(config(dir.path())), ..Args::default() })
            .expect("settings");
    let gate = Arc::new(Gate::default());
    let backend = gated_soft_token(&settings, gate.clone());
    let daemon = server::spawn(settings, Arc::new(backend)).expect("daemon");
    let socket = daemon.socket_path().to_owned();
    let admin = BlockingClient::connect(&socket).expect("connect");
    admin.generate_key("k", 256).expect("key");

    gate.shut();
    let held: Vec<_> = (0..6)
        .map(|_| {
            let client = BlockingClient::connect(&socket).expect("connect");
            std::thread::spawn(move || client.encrypt("k", b"in flight at the stop", None))
        })
        .collect();
    common::wait_for(Duration::from_secs(10), "six requests in the pool", || {
        let pool = admin.metrics().expect("metrics").pool;
        (pool.sessions_busy as u64 + pool.queue_depth >= 2).then_some(())
    });
    drop(admin);
    // SIGTERM does exactly this in the binary (and exits 0: see the notification test).
    let stopping = std::thread::spawn(move || daemon.stop());
    std::thread::sleep(Duration::from_millis(200));
    assert!(!stopping.is_finished(), "the stop waits for the requests in flight");
    gate.open();
    for h in held {
        h.join().expect("client").expect("a request in flight at the stop is answered");
    }
    stopping.join().expect("stopped");
}
