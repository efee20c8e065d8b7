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
