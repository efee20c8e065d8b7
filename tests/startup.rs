//! Start-up failures give one clear line and a meaningful exit status.

mod common;

use std::path::Path;
use std::process::Command;

use common::{Daemon, bin};

fn run(args: &[&str], dir: &Path) -> (i32, String) {
    let out = Command::new(bin("harpocratesd")).args(args).current_dir(dir).output().expect("run");
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.code().unwrap_or(-1), text)
}

fn one_line(out: &str) {
    assert_eq!(out.trim().lines().count(), 1, "one line expected: {out}");
}

#[test]
fn a_second_daemon_on_the_same_state_or_socket_is_refused() {
    let d = Daemon::start();
    let cfg = d.config_path();
    let (code, out) = run(&["--config", cfg.to_str().expect("utf-8")], d.dir.path());
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("in use by another harpocratesd"), "{out}");
    one_line(&out);
}

#[test]
fn a_wrong_pin_says_so_without_printing_it() {
    let mut d = Daemon::start();
    let cfg = d.config_path();
    let dir = d.dir.path().to_owned();
    assert!(d.signal_and_wait(libc::SIGTERM).success());
    common::write_secret(&dir.join("pin"), "not-the-pin-42\n");
    let (code, out) = run(&["--config", cfg.to_str().expect("utf-8")], &dir);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("wrong PIN"), "{out}");
    assert!(!out.contains("not-the-pin-42"), "the PIN itself must not be printed: {out}");
    one_line(&out);
}

#[test]
fn configuration_errors_name_the_file_or_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path();
    std::fs::write(p.join("no-pin.toml"), format!("pin_file = {:?}\n", p.join("absent")))
        .expect("cfg");
    std::fs::write(p.join("typo.toml"), "max_sesions = 3\n").expect("cfg");
    std::fs::write(p.join("range.toml"), "max_sessions = 0\n").expect("cfg");

    let (code, out) = run(&["--config", "no-pin.toml", "--check-config"], p);
    assert_eq!(code, 78, "{out}");
    assert!(out.contains("cannot read the PIN file") && out.contains("absent"), "{out}");
    one_line(&out);

    let (code, out) = run(&["--config", "typo.toml"], p);
    assert_eq!(code, 78, "{out}");
    assert!(out.contains("max_sesions"), "{out}");

    let (code, out) = run(&["--config", "range.toml"], p);
    assert_eq!(code, 78, "{out}");
    assert!(out.contains("`max_sessions`"), "{out}");
    one_line(&out);

    let (code, out) = run(&["--config", "missing.toml"], p);
    assert_eq!(code, 78, "{out}");
    assert!(out.contains("missing.toml"), "{out}");
    one_line(&out);
}

/// A PKCS#11 configuration for `dir`, with the given module, token selector and PIN file.
/// No retries: a token that is not there is reported at once, in one line.
fn pkcs11_config(dir: &Path, module: &str, selector: &str) -> std::path::PathBuf {
    let path = dir.join(format!("p11-{}.toml", dir.read_dir().map(|d| d.count()).unwrap_or(0)));
    std::fs::write(
        &path,
        format!(
            "backend = \"pkcs11\"\nsocket_path = {:?}\npin_file = {:?}\nretry_attempts = 0\n[pkcs11]\nlibrary_path = {module:?}\n{selector}\n",
            dir.join("s.sock"),
            dir.join("pin")
        ),
    )
    .expect("config");
    path
}

fn run_pkcs11(dir: &Path, hsm: &common::SoftHsm, config: &Path) -> (i32, String) {
    let out = Command::new(bin("harpocratesd"))
        .args(["--config", config.to_str().expect("utf-8")])
        .env("SOFTHSM2_CONF", &hsm.conf)
        .current_dir(dir)
        .output()
        .expect("run");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn pkcs11_start_up_failures_each_give_one_clear_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path();
    let hsm = common::SoftHsm::init(&p.join("softhsm"), "real-token");
    common::write_secret(&p.join("pin"), common::PIN);

    let cfg = pkcs11_config(p, "/nonexistent/libvendor.so", "token_label = \"real-token\"");
    let (code, out) = run_pkcs11(p, &hsm, &cfg);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("PKCS#11 module /nonexistent/libvendor.so does not exist"), "{out}");
    one_line(&out);

    let not_a_module = p.join("pin");
    let cfg =
        pkcs11_config(p, not_a_module.to_str().expect("utf-8"), "token_label = \"real-token\"");
    let (code, out) = run_pkcs11(p, &hsm, &cfg);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("cannot load PKCS#11 module"), "{out}");
    one_line(&out);

    let cfg = pkcs11_config(p, common::SOFTHSM2_MODULE, "token_label = \"no-such-token\"");
    let (code, out) = run_pkcs11(p, &hsm, &cfg);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("no token matches token label 'no-such-token'"), "{out}");
    assert!(out.contains("'real-token'"), "lists the tokens present: {out}");
    one_line(&out);

    // SoftHSM2 always offers one free, uninitialised slot; find its number.
    let listing = Command::new("softhsm2-util")
        .arg("--show-slots")
        .env("SOFTHSM2_CONF", &hsm.conf)
        .output()
        .expect("slots");
    let listing = String::from_utf8_lossy(&listing.stdout);
    let free_slot = listing
        .split("\nSlot ")
        .filter(|s| s.contains("Initialized:      no"))
        .find_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .expect("a free slot");
    let cfg = pkcs11_config(p, common::SOFTHSM2_MODULE, &format!("slot_id = {free_slot}"));
    let (code, out) = run_pkcs11(p, &hsm, &cfg);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&format!("the token in slot {free_slot} is not initialised")), "{out}");
    one_line(&out);

    common::write_secret(&p.join("pin"), "wrong-pin-9999");
    let cfg = pkcs11_config(p, common::SOFTHSM2_MODULE, "uri = \"pkcs11:token=real-token\"");
    let (code, out) = run_pkcs11(p, &hsm, &cfg);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("wrong PIN for token 'real-token'"), "{out}");
    assert!(!out.contains("wrong-pin-9999"), "the PIN itself must not be printed: {out}");
    one_line(&out);

    common::write_secret(&p.join("pin"), common::PIN);
    let (code, out) = Command::new(bin("harpocratesd"))
        .args(["--config", cfg.to_str().expect("utf-8"), "--check-config"])
        .env("SOFTHSM2_CONF", &hsm.conf)
        .output()
        .map(|o| (o.status.code().unwrap_or(-1), String::from_utf8_lossy(&o.stdout).into_owned()))
        .expect("run");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("pkcs11 backend"), "{out}");
}

/// The uid of a test user that `.ci/run` creates, or `None` (then the caller skips, except
/// in CI where the users must exist).
fn test_user_uid(name: &str) -> Option<u32> {
    let out = Command::new("id").args(["-u", name]).output().ok()?;
    let uid = String::from_utf8_lossy(&out.stdout).trim().parse().ok();
    if uid.is_none() {
        assert!(std::env::var_os("CI").is_none(), "CI must create the test user {name}");
        eprintln!("skipped: no test user {name} (.ci/run creates it)");
    }
    uid
}

#[test]
fn a_socket_directory_another_user_made_is_refused() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        assert!(std::env::var_os("CI").is_none(), "CI runs the tests as root");
        return eprintln!("skipped: needs root to create another user's directory");
    }
    let Some(other) = test_user_uid("harpotest1") else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path();
    // The attack: another local user creates the socket's directory first, mode 0777.
    let hijack = p.join("run");
    std::fs::create_dir(&hijack).expect("mkdir");
    std::os::unix::fs::chown(&hijack, Some(other), None).expect("chown");
    std::fs::set_permissions(&hijack, std::os::unix::fs::PermissionsExt::from_mode(0o777))
        .expect("chmod");
    let cfg = common::soft_config(p, &hijack.join("harpocrates.sock"));
    let (code, out) = run(&["--config", cfg.to_str().expect("utf-8")], p);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("refusing to use the socket directory"), "{out}");
    assert!(out.contains(&hijack.display().to_string()), "names the directory: {out}");
    one_line(&out);
    assert!(!hijack.join("harpocrates.sock").exists(), "no socket was made in it");

    // Owned by us but writable by everyone is refused too; 0755 is fine.
    std::os::unix::fs::chown(&hijack, Some(0), None).expect("chown");
    let (code, out) = run(&["--config", cfg.to_str().expect("utf-8")], p);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("0777"), "{out}");
}

#[test]
fn a_regular_file_at_the_socket_path_survives() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path();
    let target = p.join("precious.txt");
    std::fs::write(&target, "do not delete").expect("write");
    let cfg = common::soft_config(p, &target);
    let (code, out) = run(&["--config", cfg.to_str().expect("utf-8")], p);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("precious.txt") && out.contains("not a socket"), "{out}");
    one_line(&out);
    assert_eq!(std::fs::read_to_string(&target).expect("still there"), "do not delete");
}

#[test]
fn a_pin_file_others_can_read_is_refused_by_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path();
    let cfg = common::soft_config(p, &p.join("s.sock"));
    std::fs::set_permissions(p.join("pin"), std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .expect("chmod");
    let (code, out) = run(&["--config", cfg.to_str().expect("utf-8"), "--check-config"], p);
    assert_eq!(code, 78, "{out}");
    assert!(out.contains("pin") && out.contains("0644") && out.contains("chmod 600"), "{out}");
    assert!(!out.contains(common::PIN), "{out}");
    one_line(&out);
}

#[test]
fn check_config_logs_in_and_refuses_a_wrong_pin() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path();
    let cfg = common::soft_config(p, &p.join("s.sock"));
    // The first start creates the soft token under the right PIN.
    let out = Command::new(bin("harpocratesd"))
        .args(["--config", cfg.to_str().expect("utf-8"), "--check-config"])
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("configuration OK"));
    common::write_secret(&p.join("pin"), "not-the-pin-77");
    let (code, out) = run(&["--config", cfg.to_str().expect("utf-8"), "--check-config"], p);
    assert_ne!(code, 0, "a PIN that cannot log in is not OK: {out}");
    assert!(out.to_lowercase().contains("pin"), "{out}");
    assert!(!out.contains("not-the-pin-77"), "{out}");
    one_line(&out);
}
