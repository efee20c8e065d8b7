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
    std::fs::write(dir.join("pin"), "not-the-pin-42\n").expect("pin");
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
fn pkcs11_config(dir: &Path, module: &str, selector: &str) -> std::path::PathBuf {
    let path = dir.join(format!("p11-{}.toml", dir.read_dir().map(|d| d.count()).unwrap_or(0)));
    std::fs::write(
        &path,
        format!(
            "backend = \"pkcs11\"\nsocket_path = {:?}\npin_file = {:?}\n[pkcs11]\nlibrary_path = {module:?}\n{selector}\n",
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
    std::fs::write(p.join("pin"), common::PIN).expect("pin");

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

    std::fs::write(p.join("pin"), "wrong-pin-9999").expect("pin");
    let cfg = pkcs11_config(p, common::SOFTHSM2_MODULE, "uri = \"pkcs11:token=real-token\"");
    let (code, out) = run_pkcs11(p, &hsm, &cfg);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("wrong PIN for token 'real-token'"), "{out}");
    assert!(!out.contains("wrong-pin-9999"), "the PIN itself must not be printed: {out}");
    one_line(&out);

    std::fs::write(p.join("pin"), common::PIN).expect("pin");
    let (code, out) = Command::new(bin("harpocratesd"))
        .args(["--config", cfg.to_str().expect("utf-8"), "--check-config"])
        .env("SOFTHSM2_CONF", &hsm.conf)
        .output()
        .map(|o| (o.status.code().unwrap_or(-1), String::from_utf8_lossy(&o.stdout).into_owned()))
        .expect("run");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("pkcs11 backend"), "{out}");
}
