//! harpoctl against the real daemon: the README example, JSON output, exit codes, and the
//! `--dev` flow where neither side is told the socket path.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use common::{Daemon, bin};

fn harpoctl(socket: &Path, args: &[&str], stdin: &[u8]) -> (i32, Vec<u8>, String) {
    let mut child = Command::new(bin("harpoctl"))
        .args(args)
        .env("HARPOCRATES_SOCKET", socket)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn harpoctl");
    child.stdin.take().expect("stdin").write_all(stdin).expect("write stdin");
    let out = child.wait_with_output().expect("harpoctl output");
    (out.status.code().unwrap_or(-1), out.stdout, String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn the_readme_example_round_trips_through_a_shell_pipe() {
    let d = Daemon::start();
    let dir = bin("harpoctl").parent().expect("bin dir").to_owned();
    let out = Command::new("sh")
        .arg("-c")
        .arg("harpoctl keys generate demo && echo hi | harpoctl encrypt demo | harpoctl decrypt demo")
        .env("PATH", format!("{}:{}", dir.display(), std::env::var("PATH").unwrap_or_default()))
        .env("HARPOCRATES_SOCKET", &d.socket)
        .output()
        .expect("sh");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("created demo"), "{stdout}");
    assert!(stdout.ends_with("\nhi\n"), "{stdout}");
}

#[test]
fn json_output_and_exit_codes_follow_the_error_kind() {
    let d = Daemon::start();
    let s = &d.socket;
    let (code, out, err) =
        harpoctl(s, &["--json", "keys", "generate", "k1", "--size", "128", "--extractable"], b"");
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_slice(&out).expect("json");
    assert_eq!(v["label"], "k1");
    assert_eq!(v["size_bits"], 128);
    assert_eq!(v["extractable"], true);

    let (code, out, _) = harpoctl(s, &["--json", "keys", "list"], b"");
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_slice(&out).expect("json");
    assert_eq!(v.as_array().map(Vec::len), Some(1));
    assert_eq!(v[0]["extractable"], true);

    let (code, _, err) = harpoctl(s, &["keys", "generate", "k1"], b"");
    assert_eq!(code, 73, "key exists: {err}");
    let (code, _, err) = harpoctl(s, &["--json", "encrypt", "ghost"], b"x");
    assert_eq!(code, 66, "key not found: {err}");
    let e: serde_json::Value = serde_json::from_str(err.trim()).expect("json error");
    assert_eq!(e["error"]["code"], "key_not_found");

    let (code, ct, _) = harpoctl(s, &["encrypt", "k1", "--base64", "--aad", "ctx"], b"payload");
    assert_eq!(code, 0);
    let (code, pt, _) = harpoctl(s, &["decrypt", "k1", "--base64", "--aad", "ctx"], &ct);
    assert_eq!((code, pt.as_slice()), (0, &b"payload"[..]));
    let (code, _, _) = harpoctl(s, &["decrypt", "k1", "--base64", "--aad", "other"], &ct);
    assert_eq!(code, 65, "integrity failure");
    let (code, _, _) = harpoctl(s, &["decrypt", "k1", "--base64"], b"!!!not base64");
    assert_eq!(code, 2);

    let (code, out, _) = harpoctl(s, &["random", "16"], b"");
    assert_eq!(code, 0);
    assert_eq!(String::from_utf8_lossy(&out).trim().len(), 32, "16 bytes as hex");
    let (code, _, _) = harpoctl(s, &["random", "99999999"], b"");
    assert_eq!(code, 64, "invalid request");

    // Backup and restore through files and pipes; the password never on the command line.
    let pw = d.dir.path().join("backup-password");
    std::fs::write(&pw, "a long backup password\n").expect("password file");
    let pw = pw.to_str().expect("utf-8");
    let (code, blob, err) =
        harpoctl(s, &["keys", "backup", "k1", "--password-file", pw, "--base64"], b"");
    assert_eq!(code, 0, "{err}");
    let (code, out, err) =
        harpoctl(s, &["keys", "restore", "k1-copy", "--password-file", pw, "--base64"], &blob);
    assert_eq!(code, 0, "{err}");
    assert!(String::from_utf8_lossy(&out).starts_with("created k1-copy"));
    let (code, pt, _) = harpoctl(s, &["decrypt", "k1-copy", "--base64", "--aad", "ctx"], &ct);
    assert_eq!((code, pt.as_slice()), (0, &b"payload"[..]), "the restored key is the same key");
    let (code, _, err) = harpoctl(s, &["keys", "backup", "k1"], b"");
    assert_eq!(code, 2, "no password source: {err}");

    // Key manager: a KEK, envelope ciphertexts in a file, a rotation, a bulk rewrap.
    assert_eq!(harpoctl(s, &["kek", "create", "files"], b"").0, 0);
    let file = d.dir.path().join("cts.b64");
    let mut lines = String::new();
    for i in 0..300 {
        let (code, ct, err) = harpoctl(
            s,
            &["envelope", "encrypt", "files", "--context", "c", "--base64"],
            format!("row {i}").as_bytes(),
        );
        assert_eq!(code, 0, "{err}");
        lines.push_str(&String::from_utf8_lossy(&ct));
    }
    std::fs::write(&file, &lines).expect("write");
    let (code, _, err) = harpoctl(s, &["kek", "rotate", "commit", "files"], b"");
    assert_eq!(code, 78, "commit before prepare is an invalid state: {err}");
    for step in ["prepare", "validate", "commit"] {
        assert_eq!(harpoctl(s, &["kek", "rotate", step, "files"], b"").0, 0, "{step}");
    }
    let (code, _, err) = harpoctl(
        s,
        &["envelope", "rewrap", "--file", file.to_str().expect("utf-8"), "--context", "c"],
        b"",
    );
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("rewrapped 300 ciphertexts"), "{err}");
    let rewritten = std::fs::read_to_string(&file).expect("read");
    assert_ne!(rewritten, lines);
    let first = rewritten.lines().next().expect("a line");
    let (code, pt, _) =
        harpoctl(s, &["envelope", "decrypt", "--context", "c", "--base64"], first.as_bytes());
    assert_eq!((code, pt.as_slice()), (0, &b"row 0"[..]));
    let (code, out, _) = harpoctl(s, &["--json", "kek", "list"], b"");
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_slice(&out).expect("json");
    assert_eq!(v[0]["active_version"], 2);
    let (code, out, _) =
        harpoctl(s, &["--json", "datakey", "derive", "files", "--context", "c"], b"");
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_slice(&out).expect("json");
    assert_eq!(v["dek_hex"].as_str().map(str::len), Some(64));
    assert_eq!(harpoctl(s, &["kek", "retire", "files", "1", "--destroy"], b"").0, 2, "needs --yes");

    let (code, _, err) = harpoctl(s, &["keys", "destroy", "k1"], b"");
    assert_eq!(code, 2, "destroy needs --yes: {err}");
    let (code, _, _) = harpoctl(s, &["keys", "destroy", "k1", "--yes"], b"");
    assert_eq!(code, 0);

    let (code, out, _) = harpoctl(s, &["--json", "health"], b"");
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_slice(&out).expect("json");
    assert_eq!(v["state"], "healthy");
    let (code, out, _) = harpoctl(s, &["--json", "metrics"], b"");
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_slice(&out).expect("json");
    assert!(v["ops_total"].as_u64().is_some_and(|n| n > 5), "{v}");
    let (code, out, _) = harpoctl(s, &["ping"], b"");
    assert_eq!(code, 0);
    assert!(String::from_utf8_lossy(&out).starts_with("pong"));

    let (code, _, err) = harpoctl(&d.dir.path().join("nothing.sock"), &["ping"], b"");
    assert_eq!(code, 69, "daemon unavailable: {err}");
    assert!(err.contains("is harpocratesd running?"), "{err}");
}

#[test]
fn dev_mode_and_harpoctl_meet_on_the_default_socket() {
    let home = tempfile::tempdir().expect("tempdir");
    let runtime = home.path().join("run");
    std::fs::create_dir(&runtime).expect("runtime dir");
    let mut daemon = Command::new(bin("harpocratesd"))
        .arg("--dev")
        .env("HOME", home.path())
        .env("XDG_RUNTIME_DIR", &runtime)
        .env_remove("XDG_STATE_HOME")
        .env("NOTIFY_SOCKET", home.path().join("notify"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn --dev");
    let mut first_line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(daemon.stdout.as_mut().expect("stdout")),
        &mut first_line,
    )
    .expect("ready line");
    let socket = runtime.join("harpocrates/harpocrates.sock");
    assert!(first_line.contains(socket.to_str().expect("utf-8")), "{first_line}");

    let out = Command::new(bin("harpoctl"))
        .args(["keys", "generate", "demo"])
        .env("XDG_RUNTIME_DIR", &runtime)
        .env_remove("HARPOCRATES_SOCKET")
        .output()
        .expect("harpoctl");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let pin = home.path().join(".local/state/harpocrates/dev/dev.pin");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&pin).expect("pin").permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "generated PIN is private");
    let sock_mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&socket).expect("sock").permissions(),
    );
    assert_eq!(sock_mode & 0o777, 0o600, "dev socket is private");

    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    assert!(common::wait_timeout(&mut daemon, std::time::Duration::from_secs(20)).success());
    assert!(!socket.exists());
}

/// `bench --json` lines, one object per op.
fn bench_rows(out: &[u8]) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// The checks every clean bench row passes.
fn assert_clean_row(row: &serde_json::Value, operations: u64) {
    assert_eq!(row["operations"], operations, "{row}");
    assert_eq!(row["errors"], 0, "{row}");
    assert!(row["ops_per_sec"].as_f64().is_some_and(|r| r > 0.0), "{row}");
    let [p50, p99, max] = ["p50_us", "p99_us", "max_us"].map(|k| row[k].as_u64().expect(k));
    assert!(p50 > 0 && p50 <= p99 && p99 <= max, "{row}");
}

#[test]
fn bench_reports_every_op_in_json_and_cleans_up_its_key() {
    let d = Daemon::start();
    let s = &d.socket;
    let args =
        "bench --op ping,encrypt,envelope,local-envelope --size 64 -n 2000 -c 2 -t 16 --json";
    let (code, out, err) = harpoctl(s, &args.split(' ').collect::<Vec<_>>(), b"");
    assert_eq!(code, 0, "{err}");
    let rows = bench_rows(&out);
    let ops: Vec<_> = rows.iter().map(|r| r["op"].as_str().unwrap_or("?")).collect();
    assert_eq!(ops, ["ping", "encrypt", "envelope", "local-envelope"]);
    for row in &rows {
        assert_clean_row(row, 2000);
        assert_eq!(
            (&row["connections"], &row["concurrency"], &row["batch"]),
            (&2.into(), &16.into(), &1.into()),
            "{row}"
        );
    }
    assert_eq!(rows[0]["size"], serde_json::Value::Null, "ping has no payload");
    assert_eq!(rows[1]["size"], 64);

    // The key bench created is gone; the KEK stays (KEKs cannot be destroyed).
    let (_, out, _) = harpoctl(s, &["--json", "keys", "list"], b"");
    assert!(!String::from_utf8_lossy(&out).contains("harpoctl-bench"), "key left behind");
    let (_, out, _) = harpoctl(s, &["--json", "kek", "list"], b"");
    assert!(String::from_utf8_lossy(&out).contains("harpoctl-bench"), "KEK kept");
}

#[test]
fn bench_explicit_batches_count_operations_not_calls() {
    let d = Daemon::start();
    let s = &d.socket;
    assert_eq!(harpoctl(s, &["keys", "generate", "mine"], b"").0, 0);
    // 1000 is not a multiple of 32: the last batch is a short one.
    let args = "bench --op encrypt,decrypt,derive --key mine --batch 32 -n 1000 -t 4 --json";
    let (code, out, err) = harpoctl(s, &args.split(' ').collect::<Vec<_>>(), b"");
    assert_eq!(code, 0, "{err}");
    let rows = bench_rows(&out);
    assert_eq!(rows.len(), 3);
    for row in &rows {
        assert_clean_row(row, 1000);
        assert_eq!(row["batch"], 32, "{row}");
        assert_eq!(row["calls"], 32, "31 full batches and one of 8: {row}");
    }
    let (_, out, _) = harpoctl(s, &["--json", "keys", "list"], b"");
    assert!(String::from_utf8_lossy(&out).contains("\"mine\""), "a key bench found is kept");

    // The table for people.
    let (code, out, err) =
        harpoctl(s, &["bench", "--op", "ping,random", "-n", "300", "-t", "8"], b"");
    assert_eq!(code, 0, "{err}");
    let table = String::from_utf8_lossy(&out);
    eprintln!("{table}");
    let lines: Vec<_> = table.lines().collect();
    assert!(lines[0].starts_with("OP") && lines[0].contains("OPS/S") && lines[0].contains("P99"));
    assert!(lines[1].starts_with("ping") && lines[2].starts_with("random"), "{table}");

    // Failures are the usual ones.
    let (code, _, err) = harpoctl(s, &["bench", "--batch", "0"], b"");
    assert_eq!(code, 2, "usage: {err}");
    let (code, _, err) = harpoctl(&d.dir.path().join("nothing.sock"), &["bench", "-n", "10"], b"");
    assert_eq!(code, 69, "daemon unavailable: {err}");
}
