//! `harpoctl`'s command line on its own. (Being an integration test of this package also
//! makes `cargo test --workspace` build the binary the root tests drive.)

use std::process::Command;

#[test]
fn help_documents_commands_and_exit_codes() {
    let out = Command::new(env!("CARGO_BIN_EXE_harpoctl")).arg("--help").output().expect("run");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for word in [
        "keys",
        "encrypt",
        "decrypt",
        "random",
        "health",
        "metrics",
        "ping",
        "--json",
        "Exit codes",
    ] {
        assert!(text.contains(word), "{word} missing:\n{text}");
    }
}

#[test]
fn an_absent_daemon_is_reported_with_the_unavailable_exit_code() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(env!("CARGO_BIN_EXE_harpoctl"))
        .args(["--socket", dir.path().join("none.sock").to_str().expect("utf-8"), "ping"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(69));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is harpocratesd running?"));
}
