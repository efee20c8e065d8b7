//! The `harpocratesd` binary's command line. (Being an integration test of this package
//! also makes `cargo test --workspace` build the binary the root tests drive.)

use std::process::Command;

#[test]
fn help_lists_the_flags_and_version_matches_the_crate() {
    let help =
        Command::new(env!("CARGO_BIN_EXE_harpocratesd")).arg("--help").output().expect("run");
    assert!(help.status.success());
    let text = String::from_utf8_lossy(&help.stdout);
    for flag in ["--config", "--dev", "--socket", "--state-dir", "--max-sessions", "--check-config"]
    {
        assert!(text.contains(flag), "{flag} missing from --help:\n{text}");
    }
    let version =
        Command::new(env!("CARGO_BIN_EXE_harpocratesd")).arg("--version").output().expect("run");
    assert!(String::from_utf8_lossy(&version.stdout).contains(env!("CARGO_PKG_VERSION")));
}

#[test]
fn dev_and_config_cannot_be_combined() {
    let out = Command::new(env!("CARGO_BIN_EXE_harpocratesd"))
        .args(["--dev", "--config", "x.toml"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot be used with"));
}
