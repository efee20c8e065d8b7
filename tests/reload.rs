//! Reload. A hot swap of the backend, under load: 16 clients, each on one connection
//! for the whole run, encrypt and envelope-encrypt while the configuration is switched
//! from one SoftHSM2 token to another (by `harpoctl admin reload`) and from the soft
//! token to SoftHSM2 (by SIGHUP). No request may fail and no connection may close;
//! afterwards the new token serves (health says so, and a key only it holds works). A
//! configuration that does not validate, or names a token that cannot be opened, is
//! refused and the old one goes on serving. Settings that need no swap apply in place.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{Daemon, PIN, SOFTHSM2_MODULE, SoftHsm, Token};
use harpocrates::client::{BlockingClient, Error};

const KEY: &str = "swap-key";
const KEK: &str = "swap-kek";
const CLIENTS: usize = 16;

/// What one request of the load saw, and when.
type Outcome = (Instant, Result<(), String>);

/// Clients encrypting until told to stop.
struct Load {
    stop: Arc<AtomicBool>,
    clients: Vec<JoinHandle<Vec<Outcome>>>,
}

impl Load {
    fn start(socket: &Path) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let clients = (0..CLIENTS)
            .map(|c| {
                let (socket, stop) = (socket.to_owned(), stop.clone());
                std::thread::spawn(move || {
                    let client = BlockingClient::connect(&socket).expect("connect");
                    let mut seen = Vec::new();
                    let mut i = c;
                    while !stop.load(Ordering::Relaxed) {
                        let result = if i % 2 == 0 {
                            client.encrypt(KEY, &[7u8; 64], None).map(drop)
                        } else {
                            client
                                .encrypt_with_context(KEK, b"tenant-7", &[9u8; 64], None)
                                .map(drop)
                        };
                        seen.push((Instant::now(), result.map_err(|e| e.to_string())));
                        i += 1;
                    }
                    // The same connection still answers: it was never closed.
                    seen.push((Instant::now(), client.ping().map_err(|e| format!("ping: {e}"))));
                    seen
                })
            })
            .collect();
        Self { stop, clients }
    }

    /// Stops the clients; returns every outcome.
    fn finish(self) -> Vec<Outcome> {
        self.stop.store(true, Ordering::Relaxed);
        self.clients.into_iter().flat_map(|c| c.join().expect("client thread")).collect()
    }
}

/// Requests answered before `from`, between `from` and `to`, and after `to`; panics on
/// any failure.
fn phases(outcomes: &[Outcome], from: Instant, to: Instant) -> (usize, usize, usize) {
    let failed: Vec<&String> = outcomes.iter().filter_map(|(_, r)| r.as_ref().err()).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed, e.g. {:?}",
        failed.len(),
        outcomes.len(),
        &failed[..failed.len().min(5)]
    );
    let before = outcomes.iter().filter(|(at, _)| *at < from).count();
    let after = outcomes.iter().filter(|(at, _)| *at > to).count();
    (before, outcomes.len() - before - after, after)
}

fn pkcs11_section(label: &str) -> String {
    format!("library_path = {SOFTHSM2_MODULE:?}\ntoken_label = {label:?}\n")
}

/// Replaces `from` with `to` in the daemon's configuration file.
fn edit_config(d: &Daemon, from: &str, to: &str) {
    let path = d.config_path();
    let text = std::fs::read_to_string(&path).expect("config");
    assert!(text.contains(from), "{from:?} not in:\n{text}");
    std::fs::write(&path, text.replacen(from, to, 1)).expect("config");
}

fn prepare(client: &BlockingClient, extra_key: Option<&str>) {
    client.generate_key(KEY, 256).expect("key");
    client.generate_kek(KEK).expect("kek");
    if let Some(k) = extra_key {
        client.generate_key(k, 256).expect("extra key");
    }
}

fn harpoctl(socket: &Path, args: &[&str]) -> std::process::Output {
    Command::new(common::bin("harpoctl"))
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()
        .expect("harpoctl")
}

/// Refused reloads: bad TOML, then a token that cannot be opened. The old configuration
/// stays in force and serves.
fn broken_reloads_leave_the_old_one_serving(d: &Daemon, client: &BlockingClient) {
    let good = std::fs::read_to_string(d.config_path()).expect("config");
    let generation = client.health_check().expect("health").generation;
    for (broken, says) in [
        (format!("max_sessions = \"many\"\n{good}"), "max_sessions"),
        (good.replace("token-b", "no-such-token"), "no-such-token"),
    ] {
        std::fs::write(d.config_path(), &broken).expect("config");
        let out = harpoctl(&d.socket, &["admin", "reload"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "a broken configuration is refused");
        assert!(stderr.contains("reload refused") && stderr.contains(says), "{stderr}");
        assert_eq!(client.health_check().expect("health").generation, generation);
        client.encrypt(KEY, b"still served", None).expect("the old configuration serves");
    }
    std::fs::write(d.config_path(), good).expect("config");
}

#[test]
fn softhsm2_token_to_another_under_load_loses_no_request() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hsm = SoftHsm::init(&dir.path().join("softhsm"), "token-a");
    // SoftHSM2 reads its tokens when the module is initialised: both exist beforehand.
    hsm.init_token("token-b");
    let conf = hsm.conf.to_string_lossy().into_owned();
    let d =
        Daemon::start_external(PIN, &pkcs11_section("token-a"), "", &[("SOFTHSM2_CONF", &conf)]);
    let client = BlockingClient::connect(&d.socket).expect("connect");
    prepare(&client, None);
    // Idle swaps set up token-b (with a key token-a lacks) and come back.
    edit_config(&d, "\"token-a\"", "\"token-b\"");
    let report = client.reload().expect("reload to token-b");
    assert!(report.swapped && report.generation == 2, "{report:?}");
    prepare(&client, Some("only-b"));
    edit_config(&d, "\"token-b\"", "\"token-a\"");
    assert_eq!(client.reload().expect("reload to token-a").generation, 3);
    let health = client.health_check().expect("health");
    assert_eq!((health.token.label.as_str(), health.generation), ("token-a", 3));
    assert!(matches!(client.encrypt("only-b", b"x", None), Err(Error::KeyNotFound(_))));

    let load = Load::start(&d.socket);
    std::thread::sleep(Duration::from_secs(1));
    edit_config(&d, "\"token-a\"", "\"token-b\"");
    let from = Instant::now();
    let out = harpoctl(&d.socket, &["admin", "reload"]);
    let to = Instant::now();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("generation 4"));
    std::thread::sleep(Duration::from_secs(1));
    let outcomes = load.finish();
    let (before, during, after) = phases(&outcomes, from, to);
    println!(
        "token-a → token-b under load: {before} requests before, {during} during the {:?} swap, {after} after; 0 failed, {CLIENTS} connections open throughout",
        to - from
    );
    assert!(before > 0 && after > 0, "load before and after: {before}, {after}");

    let health = client.health_check().expect("health");
    assert_eq!((health.token.label.as_str(), health.generation), ("token-b", 4));
    client.encrypt("only-b", b"served by token-b", None).expect("the new token serves");
    broken_reloads_leave_the_old_one_serving(&d, &client);
    drop(client);
    let output = d.stop_and_collect_output();
    assert!(output.contains("retired backend generation closed"), "{output}");
}

#[test]
fn soft_token_to_softhsm2_under_load_loses_no_request() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hsm = SoftHsm::init(&dir.path().join("softhsm"), "token-b");
    let conf = hsm.conf.to_string_lossy().into_owned();
    let mut d = Daemon::start_on_env(Token::Soft, "", &[("SOFTHSM2_CONF", &conf)]);
    let client = BlockingClient::connect(&d.socket).expect("connect");
    prepare(&client, None);
    let soft = std::fs::read_to_string(d.config_path()).expect("config");
    let at = soft.find("[soft]").expect("a [soft] section");
    let on_softhsm =
        format!("{}backend = \"pkcs11\"\n[pkcs11]\n{}", &soft[..at], pkcs11_section("token-b"));
    // Idle: put the same key and KEK on token-b, then back to the soft token.
    std::fs::write(d.config_path(), &on_softhsm).expect("config");
    assert_eq!(client.reload().expect("to softhsm").generation, 2);
    prepare(&client, Some("only-b"));
    std::fs::write(d.config_path(), &soft).expect("config");
    assert_eq!(client.reload().expect("back to soft").generation, 3);
    assert_eq!(client.health_check().expect("health").backend, "soft");

    let load = Load::start(&d.socket);
    std::thread::sleep(Duration::from_secs(1));
    std::fs::write(d.config_path(), &on_softhsm).expect("config");
    let from = Instant::now();
    // SIGHUP this time, as `systemctl reload` sends it.
    // SAFETY: kill(2) on our own child's pid; no memory is involved.
    unsafe { libc::kill(d.pid(), libc::SIGHUP) };
    let to = common::wait_for(Duration::from_secs(20), "generation 4", || {
        (client.health_check().expect("health").generation == 4).then(Instant::now)
    });
    std::thread::sleep(Duration::from_secs(1));
    let outcomes = load.finish();
    let (before, during, after) = phases(&outcomes, from, to);
    println!(
        "soft → SoftHSM2 under load: {before} requests before, {during} during the {:?} swap, {after} after; 0 failed, {CLIENTS} connections open throughout",
        to - from
    );
    assert!(before > 0 && after > 0, "load before and after: {before}, {after}");
    let health = client.health_check().expect("health");
    assert_eq!((health.backend.as_str(), health.token.label.as_str()), ("pkcs11", "token-b"));
    client.encrypt("only-b", b"served by token-b", None).expect("the new token serves");
    drop(client);
    let status = d.signal_and_wait(libc::SIGTERM);
    assert!(status.success(), "{status:?}");
}

#[test]
fn limits_apply_in_place_to_new_connections_and_the_rest_waits_for_a_restart() {
    let d = Daemon::start();
    let before = BlockingClient::connect(&d.socket).expect("connect");
    before.generate_key(KEY, 256).expect("key");
    let big = vec![1u8; 8 << 10];
    before.encrypt(KEY, &big, None).expect("8 KiB fits the default frame limit");

    let text = std::fs::read_to_string(d.config_path()).expect("config");
    std::fs::write(d.config_path(), format!("max_frame = 4096\nio_threads = 3\n{text}"))
        .expect("config");
    let report = before.reload().expect("reload");
    assert!(!report.swapped && report.generation == 1, "{report:?}");
    assert!(report.applied.iter().any(|s| s == "max_frame"), "{report:?}");
    assert_eq!(report.need_restart, ["io_threads"], "{report:?}");

    let after = BlockingClient::connect(&d.socket).expect("connect");
    assert!(
        matches!(after.encrypt(KEY, &big, None), Err(Error::FrameTooLarge(_))),
        "a connection made after the reload has the new limit"
    );
    after.encrypt(KEY, &[1u8; 1024], None).expect("within the new limit");
    before.encrypt(KEY, &big, None).expect("an open connection keeps the limits it began with");
    let status = d.stop_and_collect_output();
    assert!(status.contains("configuration reloaded"), "{status}");
}

#[test]
fn requests_in_flight_finish_on_the_old_generation() {
    use common::hooked::{Gate, gated_soft_token};
    use harpocrates_daemon::config::{Args, Settings};

    let dir = tempfile::tempdir().expect("tempdir");
    let config = common::soft_config(dir.path(), &dir.path().join("d.sock"));
    let text = std::fs::read_to_string(&config).expect("config");
    // One session: a second unit of work waits in the actor's mailbox, more in the queue.
    std::fs::write(&config, format!("max_sessions = 1\n{text}")).expect("config");
    let settings = Settings::from_args(&Args { config: Some(config.clone()), ..Args::default() })
        .expect("settings");
    let gate = Arc::new(Gate::default());
    let backend = gated_soft_token(&settings, gate.clone());
    let daemon = harpocrates_daemon::server::spawn(settings, Arc::new(backend)).expect("daemon");
    let socket = daemon.socket_path().to_owned();
    let admin = BlockingClient::connect(&socket).expect("connect");
    admin.generate_key(KEY, 256).expect("key");

    gate.shut();
    let held: Vec<_> = (0..6)
        .map(|_| {
            let socket = socket.clone();
            std::thread::spawn(move || {
                BlockingClient::connect(&socket).expect("connect").encrypt(KEY, b"held", None)
            })
        })
        .collect();
    // Answered on the I/O thread, so it works while the token hangs.
    common::wait_for(Duration::from_secs(10), "work queued behind the hung session", || {
        (admin.metrics().expect("metrics").pool.queue_depth >= 2).then_some(())
    });
    // A new pool over the same token takes over while six requests are held in the old.
    std::fs::write(&config, format!("max_sessions = 2\n{text}")).expect("config");
    let report = daemon.reload().expect("reload");
    assert!(report.swapped && report.generation == 2, "{report:?}");
    gate.open();
    for h in held {
        h.join().expect("client").expect("a request held across the swap is answered");
    }
    assert_eq!(admin.health_check().expect("health").generation, 2);
    admin.encrypt(KEY, b"new generation", None).expect("served");
    daemon.stop();
}
