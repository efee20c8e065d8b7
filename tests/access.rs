//! Access control end to end: the real `harpocratesd` running as root, `harpoctl` (or
//! this test binary, re-run in a child role) running as the test users.
//!
//! - For every class (`use`, `export`, `manage`, `rotate`, `admin`) a caller granted it
//!   succeeds and a caller without it is refused with exit code 77 and a message naming
//!   the operation and the key or KEK; every refusal is in the audit file with the
//!   caller's uid.
//! - A refusal for a missing key reads exactly like one for an existing key.
//! - Listings (`keys list`, `kek list`, health's key count) show only what the caller
//!   may see.
//! - A batch is checked element by element.
//! - A bad policy stops the daemon at startup, naming the file, the rule and the reason.
//! - SIGHUP puts a changed policy in force and keeps the old one when the new one is bad.
//!
//! The tests that need two identities run as root and switch child processes to the
//! users named by `HARPOCRATES_TEST_USERS` (default `harpotest1,harpotest2`); without
//! root or those users they say why and pass, unless `CI` is set: then they fail.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Daemon, Ran, TestUser, bin};
use harpocrates::client::{Client, Error};
use harpocrates::protocol::{AuditEvent, Request, Response};
use serde_json::{Value, json};

/// harpoctl's exit code for permission denied.
const EXIT_DENIED: i32 = 77;
/// harpoctl's exit code for a missing key.
const EXIT_NOT_FOUND: i32 = 66;

/// `harpoctl` against one daemon, runnable by every test user.
struct Ctl {
    exe: PathBuf,
    socket: PathBuf,
}

impl Ctl {
    fn new(d: &Daemon) -> Self {
        Self {
            exe: common::runnable_by_everyone(&bin("harpoctl"), d.dir.path()),
            socket: d.socket.clone(),
        }
    }

    /// `harpoctl --socket S args` as `user`, with `stdin`.
    fn run(&self, user: &TestUser, args: &[&str], stdin: &[u8]) -> Ran {
        let socket = self.socket.to_str().expect("utf-8 socket path");
        let mut full = vec!["--socket", socket];
        full.extend_from_slice(args);
        common::run_as(&self.exe, Some(user), &full, &[], stdin)
    }

    /// Runs and expects success.
    fn ok(&self, user: &TestUser, args: &[&str], stdin: &[u8]) -> Ran {
        let ran = self.run(user, args, stdin);
        assert_eq!(ran.code, 0, "{} harpoctl {args:?}: {}", user.name, ran.stderr);
        ran
    }
}

/// A tokio runtime for the root client.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

/// An audit directory private to root (the daemon insists), beside nothing else.
fn audit_location() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("audit").join("audit.log");
    (dir, file)
}

fn audit_table(file: &Path) -> String {
    format!("[audit]\nfile = {file:?}\njournal = \"off\"\n")
}

/// The rules of the main test: harpotest1 uses `t1-*` and KEK `k1`; harpotest2 exports
/// from, manages and rotates `t2-*` and KEK `k2`, and is an admin.
fn class_rules(u1: &TestUser, u2: &TestUser) -> String {
    format!(
        r#"
[[policy]]
name = "t1-use"
users = ["{u1}"]
keys = ["t1-*"]
keks = ["k1"]
allow = ["use"]

[[policy]]
name = "t2-keys"
users = ["{u2}"]
keys = ["t2-*"]
keks = ["k2"]
allow = ["export", "manage", "rotate"]

[[policy]]
name = "t2-admin"
users = ["{u2}"]
allow = ["admin"]
"#,
        u1 = u1.name,
        u2 = u2.name,
    )
}

/// One request a caller is not granted.
struct Refusal<'a> {
    who: &'a TestUser,
    args: &'a [&'a str],
    stdin: &'a [u8],
    op: &'a str,
    class: &'a str,
    key: Option<&'a str>,
    kek: Option<&'a str>,
}

impl Refusal<'_> {
    /// The part of the message that names the operation and its target.
    fn expected_message(&self) -> String {
        let target = match (self.key, self.kek) {
            (Some(k), _) => format!(" on key '{k}'"),
            (None, Some(k)) => format!(" on KEK '{k}'"),
            (None, None) => String::new(),
        };
        format!("permission denied: '{}' ({} access){target}", self.op, self.class)
    }

    fn audited_by(&self, e: &AuditEvent) -> bool {
        e.uid == self.who.uid
            && e.op == self.op
            && e.class == self.class
            && e.key.as_deref() == self.key
            && e.kek.as_deref() == self.kek
            && e.result == "permission_denied"
    }
}

#[test]
fn every_class_is_refused_to_callers_without_it_and_every_refusal_is_audited() {
    let Some((u1, u2)) = common::test_users() else { return };
    let (_audit_dir, audit) = audit_location();
    let tables = format!("{}{}", audit_table(&audit), class_rules(&u1, &u2));
    let d = Daemon::start_shared("socket_mode = \"0666\"", &tables);
    let ctl = Ctl::new(&d);
    let rt = runtime();
    let root = rt.block_on(Client::connect(&d.socket)).expect("root connects");
    rt.block_on(async {
        for key in ["t1-a", "t1-b", "t2-a", "other-a"] {
            root.generate_key(key, 256).await.expect("generate");
        }
        for kek in ["k1", "k2"] {
            root.generate_kek(kek).await.expect("kek");
        }
    });

    // What each caller is granted works.
    let ct = ctl.ok(&u1, &["encrypt", "t1-a", "--base64"], b"for t1 only").stdout;
    let pt = ctl.ok(&u1, &["decrypt", "t1-a", "--base64"], &ct).stdout;
    assert_eq!(pt, b"for t1 only");
    let sealed = ctl.ok(&u1, &["envelope", "encrypt", "k1", "--context", "c", "--base64"], b"env");
    let opened =
        ctl.ok(&u1, &["envelope", "decrypt", "--context", "c", "--base64"], &sealed.stdout);
    assert_eq!(opened.stdout, b"env");
    let derived = ctl.ok(&u2, &["--json", "datakey", "derive", "k2", "--context", "c"], b"");
    let derived: Value = serde_json::from_slice(&derived.stdout).expect("json");
    assert_eq!(derived["kek"], "k2");
    ctl.ok(&u2, &["keys", "generate", "t2-new"], b"");
    ctl.ok(&u2, &["kek", "rotate", "prepare", "k2"], b"");
    ctl.ok(&u2, &["metrics"], b"");

    // Listings show only what the caller may see.
    let listed = ctl.ok(&u1, &["--json", "keys", "list"], b"");
    let listed: Value = serde_json::from_slice(&listed.stdout).expect("json");
    let mut labels: Vec<&str> =
        listed.as_array().expect("array").iter().filter_map(|k| k["label"].as_str()).collect();
    labels.sort_unstable();
    assert_eq!(labels, ["t1-a", "t1-b"], "harpotest1 sees its t1-* keys only");
    let keks = ctl.ok(&u1, &["--json", "kek", "list"], b"");
    let keks: Value = serde_json::from_slice(&keks.stdout).expect("json");
    let names: Vec<&str> =
        keks.as_array().expect("array").iter().filter_map(|k| k["name"].as_str()).collect();
    assert_eq!(names, ["k1"], "harpotest1 sees KEK k1 only");
    let health = ctl.ok(&u2, &["--json", "health"], b"");
    let health: Value = serde_json::from_slice(&health.stdout).expect("json");
    assert_eq!(health["key_count"], 2, "harpotest2 counts t2-a and t2-new only: {health}");

    // For every class, a caller without it is refused, saying what and on which name.
    let refusals = [
        Refusal {
            who: &u2,
            args: &["encrypt", "t1-a"],
            stdin: b"x",
            op: "encrypt",
            class: "use",
            key: Some("t1-a"),
            kek: None,
        },
        Refusal {
            who: &u1,
            args: &["encrypt", "other-a"],
            stdin: b"x",
            op: "encrypt",
            class: "use",
            key: Some("other-a"),
            kek: None,
        },
        Refusal {
            who: &u1,
            args: &["envelope", "encrypt", "k2"],
            stdin: b"x",
            op: "envelope_encrypt",
            class: "use",
            key: None,
            kek: Some("k2"),
        },
        Refusal {
            who: &u1,
            args: &["datakey", "derive", "k1", "--context", "c"],
            stdin: b"",
            op: "derive_data_key",
            class: "export",
            key: None,
            kek: Some("k1"),
        },
        Refusal {
            who: &u1,
            args: &["datakey", "generate", "k1"],
            stdin: b"",
            op: "generate_data_key",
            class: "export",
            key: None,
            kek: Some("k1"),
        },
        Refusal {
            who: &u1,
            args: &["keys", "destroy", "t1-a", "--yes"],
            stdin: b"",
            op: "destroy_key",
            class: "manage",
            key: Some("t1-a"),
            kek: None,
        },
        Refusal {
            who: &u2,
            args: &["keys", "destroy", "t1-b", "--yes"],
            stdin: b"",
            op: "destroy_key",
            class: "manage",
            key: Some("t1-b"),
            kek: None,
        },
        Refusal {
            who: &u1,
            args: &["keys", "generate", "t1-new"],
            stdin: b"",
            op: "generate_key_with_attributes",
            class: "manage",
            key: Some("t1-new"),
            kek: None,
        },
        Refusal {
            who: &u1,
            args: &["kek", "create", "k1-new"],
            stdin: b"",
            op: "generate_kek",
            class: "manage",
            key: None,
            kek: Some("k1-new"),
        },
        Refusal {
            who: &u1,
            args: &["kek", "rotate", "prepare", "k1"],
            stdin: b"",
            op: "rotation",
            class: "rotate",
            key: None,
            kek: Some("k1"),
        },
        Refusal {
            who: &u2,
            args: &["kek", "rotate", "prepare", "k1"],
            stdin: b"",
            op: "rotation",
            class: "rotate",
            key: None,
            kek: Some("k1"),
        },
        Refusal {
            who: &u1,
            args: &["metrics"],
            stdin: b"",
            op: "get_metrics",
            class: "admin",
            key: None,
            kek: None,
        },
        Refusal {
            who: &u1,
            args: &["health"],
            stdin: b"",
            op: "health_check",
            class: "admin",
            key: None,
            kek: None,
        },
    ];
    for r in &refusals {
        let ran = ctl.run(r.who, r.args, r.stdin);
        assert_eq!(ran.code, EXIT_DENIED, "{} {:?}: {}", r.who.name, r.args, ran.stderr);
        assert!(
            ran.stderr.contains(&r.expected_message()),
            "{} {:?} should say {:?}: {}",
            r.who.name,
            r.args,
            r.expected_message(),
            ran.stderr
        );
    }
    for class in ["use", "export", "manage", "rotate", "admin"] {
        assert!(refusals.iter().any(|r| r.class == class), "no refusal tested for {class}");
    }
    for r in &refusals {
        common::wait_for_audit_event(&audit, &format!("{} {:?}", r.who.name, r.args), |e| {
            r.audited_by(e)
        });
    }
    let ok = common::wait_for_audit_event(&audit, "harpotest1's encryption", |e| {
        e.uid == u1.uid && e.op == "encrypt" && e.key.as_deref() == Some("t1-a")
    });
    assert_eq!((ok.result.as_str(), ok.gid), ("ok", u1.gid));
    let raw = std::fs::read_to_string(&audit).expect("audit file");
    assert!(
        raw.lines().any(|l| l.contains(&format!("\"uid\":{}", u1.uid))
            && l.contains("\"op\":\"rotation\"")
            && l.contains("\"result\":\"permission_denied\"")),
        "the refused rotation as it is written: {raw}"
    );

    // Nothing refused happened.
    rt.block_on(async {
        let keys = root.list_keys().await.expect("list");
        let labels: Vec<&str> = keys.iter().map(|k| k.handle.as_str()).collect();
        for present in ["t1-a", "t1-b", "t2-a", "other-a", "t2-new"] {
            assert!(labels.contains(&present), "{present} must still exist: {labels:?}");
        }
        assert!(!labels.contains(&"t1-new"), "{labels:?}");
        let keks = root.list_keks().await.expect("keks");
        let k1 = keks.iter().find(|k| k.name == "k1").expect("k1");
        assert_eq!(k1.pending_version, None, "the refused rotation of k1 did not start");
        let k2 = keks.iter().find(|k| k.name == "k2").expect("k2");
        assert_eq!(k2.pending_version, Some(2), "harpotest2's rotation of k2 did");
        assert!(keks.iter().all(|k| k.name != "k1-new"));
    });
}

#[test]
fn a_refusal_for_a_missing_key_reads_like_one_for_an_existing_key() {
    let Some((u1, u2)) = common::test_users() else { return };
    let (_audit_dir, audit) = audit_location();
    let tables = format!("{}{}", audit_table(&audit), class_rules(&u1, &u2));
    let d = Daemon::start_shared("socket_mode = \"0666\"", &tables);
    let ctl = Ctl::new(&d);
    let rt = runtime();
    let root = rt.block_on(Client::connect(&d.socket)).expect("root connects");
    rt.block_on(root.generate_key("t1-real", 256)).expect("generate");
    // The missing key really is missing.
    let missing = rt.block_on(root.encrypt("t1-ghost", b"x", None));
    assert!(matches!(missing, Err(Error::KeyNotFound(_))), "{missing:?}");

    // harpotest1 may read the backup password, so that harpoctl asks the daemon at all.
    let password = d.dir.path().join("backup-password");
    std::fs::write(&password, "a backup password\n").expect("password file");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&password, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    }
    let password = password.to_str().expect("utf-8");
    // `KEY` stands for the key's name.
    let cases: [(&TestUser, &[&str], &[u8]); 3] = [
        (&u2, &["encrypt", "KEY"], b"x"),
        (&u1, &["keys", "destroy", "KEY", "--yes"], b""),
        (&u1, &["keys", "backup", "KEY", "--password-file", password], b""),
    ];
    for (who, args, stdin) in cases {
        let run = |name: &str, json: bool| {
            let mut a: Vec<&str> = if json { vec!["--json"] } else { Vec::new() };
            a.extend(args.iter().map(|s| if *s == "KEY" { name } else { s }));
            ctl.run(who, &a, stdin)
        };
        let real = run("t1-real", false);
        let ghost = run("t1-ghost", false);
        assert_eq!(real.code, EXIT_DENIED, "{args:?}: {}", real.stderr);
        assert_eq!(ghost.code, real.code, "{args:?}: {}", ghost.stderr);
        assert!(real.stderr.contains("permission denied"), "{}", real.stderr);
        assert_eq!(
            ghost.stderr.replace("t1-ghost", "t1-real"),
            real.stderr,
            "{args:?}: a refusal must not tell a missing key from an existing one"
        );
        let real = run("t1-real", true);
        let ghost = run("t1-ghost", true);
        let real: Value = serde_json::from_str(real.stderr.trim()).expect("json error");
        let ghost: Value = serde_json::from_str(ghost.stderr.trim()).expect("json error");
        assert_eq!(real["error"]["code"], "permission_denied");
        assert_eq!(
            ghost.to_string().replace("t1-ghost", "t1-real"),
            real.to_string(),
            "{args:?}: the same in JSON"
        );
    }
    // A caller with rights on the name gets the usual answer for a missing key.
    let ran = ctl.run(&u1, &["encrypt", "t1-ghost"], b"x");
    assert_eq!(ran.code, EXIT_NOT_FOUND, "{}", ran.stderr);
    // And the audit file records the refusals alike: same op and result, the name asked.
    for key in ["t1-real", "t1-ghost"] {
        common::wait_for_audit_event(&audit, &format!("the refused destroy of {key}"), |e| {
            e.uid == u1.uid
                && e.op == "destroy_key"
                && e.key.as_deref() == Some(key)
                && e.result == "permission_denied"
        });
    }
    assert!(
        rt.block_on(root.list_keys()).expect("list").iter().any(|k| k.handle.as_str() == "t1-real")
    );
}

/// What one batch element came back as, as the child reports it.
fn element_report(answer: &Result<Response, Error>) -> Value {
    match answer {
        Ok(Response::Keys(keys)) => {
            json!({ "ok": true, "keys": keys.iter().map(|k| k.handle.as_str()).collect::<Vec<_>>() })
        }
        Ok(_) => json!({ "ok": true }),
        Err(e) => json!({
            "ok": false,
            "code": e.code().map(|c| c.name()),
            "message": e.to_string(),
        }),
    }
}

#[test]
fn a_batch_with_allowed_and_refused_elements_is_answered_element_by_element() {
    const TEST: &str = "a_batch_with_allowed_and_refused_elements_is_answered_element_by_element";
    if let Some(socket) = common::child_argument() {
        // The child: harpotest1 sends one batch and reports every answer.
        let rt = runtime();
        rt.block_on(async {
            let c = Client::connect(&socket).await.expect("connect");
            let answers = c
                .batch()
                .encrypt("t1-a", b"allowed", None)
                .encrypt("other-a", b"refused", None)
                .generate_random(8)
                .destroy_key("t1-a")
                .encrypt("t1-ghost", b"missing", None)
                .push(Request::ListKeys)
                .push(Request::GetMetrics)
                .send()
                .await
                .expect("the batch as a whole is answered");
            for answer in &answers {
                common::child_report(&element_report(answer));
            }
        });
        return;
    }
    let Some((u1, u2)) = common::test_users() else { return };
    let (_audit_dir, audit) = audit_location();
    let tables = format!("{}{}", audit_table(&audit), class_rules(&u1, &u2));
    let d = Daemon::start_shared("socket_mode = \"0666\"", &tables);
    let rt = runtime();
    let root = rt.block_on(Client::connect(&d.socket)).expect("root connects");
    rt.block_on(async {
        for key in ["t1-a", "t1-b", "other-a"] {
            root.generate_key(key, 256).await.expect("generate");
        }
    });

    let socket = d.socket.to_str().expect("utf-8");
    let reports = common::run_self_as(&u1, TEST, socket, d.dir.path());
    assert_eq!(reports.len(), 7, "one answer per element: {reports:?}");
    let code = |i: usize| reports[i]["code"].as_str().unwrap_or("ok").to_owned();
    let message = |i: usize| reports[i]["message"].as_str().unwrap_or_default().to_owned();
    assert_eq!(reports[0]["ok"], true, "encrypt t1-a is allowed: {}", reports[0]);
    assert_eq!(code(1), "permission_denied");
    assert!(message(1).contains("'encrypt' (use access) on key 'other-a'"), "{}", message(1));
    assert_eq!(reports[2]["ok"], true, "random bytes are use, granted: {}", reports[2]);
    assert_eq!(code(3), "permission_denied");
    assert!(message(3).contains("'destroy_key' (manage access) on key 't1-a'"), "{}", message(3));
    assert_eq!(code(4), "key_not_found", "allowed name, missing key: {}", reports[4]);
    assert_eq!(reports[5]["keys"], json!(["t1-a", "t1-b"]), "the listing is filtered");
    assert_eq!(code(6), "permission_denied", "metrics are admin: {}", reports[6]);

    // Each element has its own audit record, under one request.
    let expected = [
        (0, "encrypt", "ok"),
        (1, "encrypt", "permission_denied"),
        (2, "generate_random", "ok"),
        (3, "destroy_key", "permission_denied"),
        (4, "encrypt", "key_not_found"),
        (5, "list_keys", "ok"),
        (6, "get_metrics", "permission_denied"),
    ];
    let events = common::wait_for(Duration::from_secs(15), "the batch's audit records", || {
        let batch: Vec<AuditEvent> = common::audit_events(&audit)
            .into_iter()
            .filter(|e| e.uid == u1.uid && e.element.is_some())
            .collect();
        (batch.len() >= expected.len()).then_some(batch)
    });
    assert_eq!(events.len(), expected.len(), "{events:#?}");
    for (i, op, result) in expected {
        let e = events
            .iter()
            .find(|e| e.element == Some(i))
            .unwrap_or_else(|| panic!("no record for element {i}: {events:#?}"));
        assert_eq!((e.op.as_str(), e.result.as_str()), (op, result), "element {i}");
        assert_eq!((e.conn, e.request), (events[0].conn, events[0].request), "one request");
    }
    let keys = rt.block_on(root.list_keys()).expect("list");
    assert!(keys.iter().any(|k| k.handle.as_str() == "t1-a"), "the refused destroy did nothing");
}

/// Runs `harpocratesd --config config` and returns how it ended.
fn daemon_refuses(config: &Path) -> Ran {
    let config = config.to_str().expect("utf-8");
    common::run_as(&bin("harpocratesd"), None, &["--config", config], &[], b"")
}

#[test]
fn a_bad_policy_stops_the_daemon_at_startup_naming_the_file_the_rule_and_the_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("d.sock");
    let base = std::fs::read_to_string(common::soft_config(dir.path(), &socket)).expect("config");
    let cases = [
        (
            "unknown-user.toml",
            "[[policy]]\nname = \"ghost\"\nusers = [\"harpo-no-such-user\"]\nkeys = [\"*\"]\nallow = [\"use\"]\n",
            "rule 'ghost' (#1)",
            "unknown user 'harpo-no-such-user'",
        ),
        (
            "bad-class.toml",
            "[[policy]]\nuids = [4242]\nkeys = [\"a-*\"]\nallow = [\"use\"]\n\n\
             [[policy]]\nuids = [4242]\nkeys = [\"b-*\"]\nallow = [\"use\", \"usee\"]\n",
            "rule #2",
            "unknown class 'usee'",
        ),
        (
            "no-targets.toml",
            "[[policy]]\nname = \"vague\"\nuids = [4242]\nallow = [\"export\"]\n",
            "rule 'vague' (#1)",
            "it allows 'export' but names no keys or keks",
        ),
    ];
    for (file, rules, rule, reason) in cases {
        let config = dir.path().join(file);
        std::fs::write(&config, format!("{base}\n{rules}")).expect("config");
        let ran = daemon_refuses(&config);
        assert_ne!(ran.code, 0, "{file}: the daemon must not start: {}", ran.stderr);
        assert_eq!(ran.code, 78, "{file}: a configuration error: {}", ran.stderr);
        for part in [&config.display().to_string(), rule, reason] {
            assert!(
                ran.stderr.contains(part),
                "{file}: stderr should name {part:?}: {}",
                ran.stderr
            );
        }
        assert!(!socket.exists(), "{file}: no socket may be opened");
    }
}

#[test]
fn sighup_puts_a_changed_policy_in_force_and_keeps_the_old_one_when_the_new_one_is_bad() {
    let Some((u1, _)) = common::test_users() else { return };
    let (_audit_dir, audit) = audit_location();
    let base_rule = format!(
        "[[policy]]\nname = \"t1\"\nusers = [\"{}\"]\nkeys = [\"t1-*\"]\nallow = [\"use\"]\n",
        u1.name
    );
    let grant_h = format!(
        "[[policy]]\nname = \"h\"\nusers = [\"{}\"]\nkeys = [\"h-*\"]\nallow = [\"use\"]\n",
        u1.name
    );
    let bad = "[[policy]]\nname = \"broken\"\nusers = [\"harpo-no-such-user\"]\nkeys = [\"h-*\"]\nallow = [\"use\"]\n";
    let audit_t = audit_table(&audit);
    let mut d = Daemon::start_shared("socket_mode = \"0666\"", &format!("{audit_t}{base_rule}"));
    let ctl = Ctl::new(&d);
    let rt = runtime();
    let root = rt.block_on(Client::connect(&d.socket)).expect("root connects");
    rt.block_on(root.generate_key("h-key", 256)).expect("generate");

    let encrypt = || ctl.run(&u1, &["encrypt", "h-key"], b"x");
    let hup = |d: &mut Daemon, log: &str| {
        let before = d.output().matches(log).count();
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        assert_eq!(unsafe { libc::kill(d.pid(), libc::SIGHUP) }, 0, "SIGHUP");
        common::wait_for(Duration::from_secs(15), &format!("the log line {log:?}"), || {
            (d.output().matches(log).count() > before).then_some(())
        });
        assert!(d.is_running(), "SIGHUP must not stop the daemon");
    };
    const RELOADED: &str = "configuration reloaded";
    const REFUSED: &str = "reload refused";

    let ran = encrypt();
    assert_eq!(ran.code, EXIT_DENIED, "not granted yet: {}", ran.stderr);

    // A changed policy grants a new right.
    d.rewrite_tables(&format!("{audit_t}{base_rule}{grant_h}"));
    hup(&mut d, RELOADED);
    let ran = encrypt();
    assert_eq!(ran.code, 0, "granted after the reload: {}", ran.stderr);

    // A bad policy is refused, said why, and the old one stays in force.
    d.rewrite_tables(&format!("{audit_t}{base_rule}{bad}"));
    hup(&mut d, REFUSED);
    let out = d.output();
    let line = out.lines().rfind(|l| l.contains(REFUSED)).expect("the refusal line");
    for part in [
        &d.config_path().display().to_string(),
        "rule 'broken' (#2)",
        "unknown user 'harpo-no-such-user'",
    ] {
        assert!(line.contains(part), "the log should name {part:?}: {line}");
    }
    let ran = encrypt();
    assert_eq!(ran.code, 0, "the old policy (with h-*) is still in force: {}", ran.stderr);

    // A good policy without the grant takes it away again.
    d.rewrite_tables(&format!("{audit_t}{base_rule}"));
    hup(&mut d, RELOADED);
    let ran = encrypt();
    assert_eq!(ran.code, EXIT_DENIED, "revoked by the last reload: {}", ran.stderr);
    let denied = common::audit_events(&audit)
        .into_iter()
        .filter(|e| e.uid == u1.uid && e.op == "encrypt" && e.key.as_deref() == Some("h-key"))
        .count();
    assert!(denied >= 1, "the refusals are audited");
}
