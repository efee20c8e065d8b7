use std::path::Path;

use harpocrates_protocol::{OpClass, Target};

use super::*;

const SOURCE: &str = "/etc/harpocrates/harpocratesd.toml";

/// Test callers are never privileged unless a test says so.
fn policy(rules: &[RawRule]) -> Policy {
    Policy::new(rules, Path::new(SOURCE), &[]).expect("policy loads")
}

fn error(rules: &[RawRule]) -> String {
    Policy::new(rules, Path::new(SOURCE), &[]).expect_err("policy refused").to_string()
}

fn user(uid: u32) -> Caller<'static> {
    Caller { uid, gid: 50_000, groups: &[] }
}

fn strings(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn rule(uid: u32, allow: &[&str], keys: &[&str], keks: &[&str]) -> RawRule {
    RawRule {
        uids: vec![uid],
        allow: strings(allow),
        keys: strings(keys),
        keks: strings(keks),
        ..RawRule::default()
    }
}

const TARGETED: [OpClass; 4] = [OpClass::Use, OpClass::Export, OpClass::Manage, OpClass::Rotate];

#[test]
fn each_class_is_granted_alone_and_refused_otherwise() {
    for granted in TARGETED {
        let p = policy(&[rule(1001, &[granted.name()], &["k"], &["k"])]);
        let g = p.grants(&user(1001));
        for class in OpClass::ALL {
            let expected = class == granted || class == OpClass::Public;
            assert_eq!(g.allows(class, Target::Key("k")), expected, "{granted:?}/{class:?} key");
            assert_eq!(g.allows(class, Target::Kek("k")), expected, "{granted:?}/{class:?} kek");
        }
    }
}

#[test]
fn admin_ignores_targets_and_all_grants_every_class() {
    let admin = policy(&[rule(1001, &["admin"], &[], &[])]);
    let g = admin.grants(&user(1001));
    assert!(g.allows(OpClass::Admin, Target::None));
    assert!(TARGETED.iter().all(|c| !g.allows(*c, Target::None)));

    let all = policy(&[rule(1001, &["all"], &["*"], &["*"])]);
    let g = all.grants(&user(1001));
    for class in OpClass::ALL {
        assert!(g.allows(class, Target::Key("any")), "{class:?}");
        assert!(g.allows(class, Target::Kek("any")), "{class:?}");
    }
}

#[test]
fn public_is_allowed_to_strangers_and_nothing_else_is() {
    let p = policy(&[rule(1001, &["all"], &["*"], &["*"])]);
    let g = p.grants(&user(2002));
    assert!(g.allows(OpClass::Public, Target::None));
    for class in &OpClass::ALL[1..] {
        assert!(!g.allows(*class, Target::None), "{class:?}");
        assert!(!g.allows(*class, Target::Key("x")), "{class:?}");
        assert!(!g.allows(*class, Target::InCiphertext), "{class:?}");
    }
    assert!(!g.unrestricted());
    assert!(!g.sees_key("x") && !g.sees_kek("x"));
}

#[test]
fn targets_none_and_in_ciphertext() {
    let p = policy(&[rule(1001, &["use"], &["k"], &[]), rule(1002, &["export"], &[], &["e"])]);
    let keys_only = p.grants(&user(1001));
    assert!(keys_only.allows(OpClass::Use, Target::None));
    assert!(!keys_only.allows(OpClass::Export, Target::None));
    // No KEK pattern at all: no ciphertext can name a KEK this caller may use.
    assert!(!keys_only.allows(OpClass::Use, Target::InCiphertext));
    let keks = p.grants(&user(1002));
    assert!(keks.allows(OpClass::Export, Target::InCiphertext));
    assert!(!keks.allows(OpClass::Use, Target::InCiphertext));
}

#[test]
fn globs_match_names_and_keys_and_keks_are_separate() {
    let p = policy(&[rule(1001, &["use"], &["orders-*", "exact"], &["pay-?", "[ab]*", "*x"])]);
    let g = p.grants(&user(1001));
    let key = |n| g.allows(OpClass::Use, Target::Key(n));
    let kek = |n| g.allows(OpClass::Use, Target::Kek(n));
    assert!(key("orders-1") && key("orders-") && key("orders-a/b") && key("exact"));
    assert!(!key("orders") && !key("exact2") && !key("xexact") && !key("pay-1"));
    assert!(kek("pay-1") && kek("alpha") && kek("beta") && kek("box"));
    assert!(!kek("pay-12") && !kek("gamma") && !kek("orders-1") && !kek("exact"));
}

#[test]
fn class_and_pattern_must_come_from_the_same_rule() {
    let p = policy(&[rule(1001, &["use"], &[], &["a"]), rule(1001, &["export"], &[], &["b"])]);
    let g = p.grants(&user(1001));
    assert!(g.allows(OpClass::Use, Target::Kek("a")));
    assert!(g.allows(OpClass::Export, Target::Kek("b")));
    assert!(!g.allows(OpClass::Export, Target::Kek("a")));
    assert!(!g.allows(OpClass::Use, Target::Kek("b")));
}

#[test]
fn rules_apply_by_user_uid_group_gid_and_supplementary_group() {
    let daemon_gid = accounts::gid_of("daemon").unwrap().expect("group daemon exists");
    let with = |f: fn(&mut RawRule)| {
        let mut r = rule(0, &["use"], &["k"], &[]);
        r.uids.clear();
        f(&mut r);
        policy(&[r])
    };
    let by_name = with(|r| r.users = strings(&["root"]));
    assert!(by_name.grants(&user(0)).allows(OpClass::Use, Target::Key("k")));
    assert!(!by_name.grants(&user(1)).allows(OpClass::Use, Target::Key("k")));

    let by_group = with(|r| r.groups = strings(&["daemon"]));
    let by_gid = with(|r| r.gids = vec![4242]);
    for (p, gid) in [(&by_group, daemon_gid), (&by_gid, 4242)] {
        let primary = Caller { uid: 3000, gid, groups: &[] };
        // Ids no test group has (daemon is gid 1 on Debian, so avoid the small ones).
        let supplementary = Caller { uid: 3000, gid: 60_000, groups: &[60_001, gid] };
        let neither = Caller { uid: 3000, gid: 60_000, groups: &[60_001] };
        assert!(p.grants(&primary).allows(OpClass::Use, Target::Key("k")));
        assert!(p.grants(&supplementary).allows(OpClass::Use, Target::Key("k")));
        assert!(!p.grants(&neither).allows(OpClass::Use, Target::Key("k")));
    }
}

#[test]
fn privileged_callers_may_do_everything_and_see_everything() {
    let p =
        Policy::new(&[rule(1001, &["use"], &["k"], &[])], Path::new(SOURCE), &[0, 999]).unwrap();
    for uid in [0, 999] {
        let g = p.grants(&user(uid));
        assert!(g.unrestricted());
        assert!(OpClass::ALL.iter().all(|c| g.allows(*c, Target::Kek("anything"))));
        assert!(g.sees_key("anything") && g.sees_kek("anything"));
    }
    assert!(!p.grants(&user(1001)).unrestricted());
    let none = Policy::privileged_only(&[5]);
    assert_eq!(none.rule_count(), 0);
    assert!(none.grants(&user(5)).allows(OpClass::Manage, Target::Key("k")));
    assert!(!none.grants(&user(6)).allows(OpClass::Use, Target::None));
}

#[test]
fn listings_show_only_names_a_targeted_class_covers() {
    let p = policy(&[
        rule(1001, &["rotate"], &[], &["orders*"]),
        rule(1001, &["use"], &["web-*"], &[]),
        rule(1001, &["admin"], &["secret-*"], &["secret-*"]),
    ]);
    let g = p.grants(&user(1001));
    assert!(g.sees_kek("orders") && g.sees_kek("orders-2"));
    assert!(g.sees_key("web-1"));
    // The listing filter is by name only: the same answer whether or not the key exists.
    assert!(!g.sees_key("orders") && !g.sees_kek("web-1"));
    // Admin grants no key rights, so its patterns reveal nothing.
    assert!(!g.sees_key("secret-1") && !g.sees_kek("secret-1"));
}

#[test]
fn errors_name_the_file_the_rule_and_the_reason() {
    let ok = rule(1, &["use"], &["k"], &[]);
    let named = |name: &str, mut r: RawRule| {
        r.name = Some(name.into());
        vec![ok.clone(), r]
    };
    let cases: Vec<(Vec<RawRule>, &str)> = vec![
        (
            named("orders", RawRule { allow: strings(&["use"]), ..RawRule::default() }),
            "rule 'orders' (#2): it names nobody: give users, uids, groups or gids",
        ),
        (vec![ok.clone(), rule(1, &[], &["k"], &[])], "rule #2: it allows nothing"),
        (
            vec![rule(1, &["use", "encrypt"], &["k"], &[])],
            "rule #1: unknown class 'encrypt' in allow (use, export, manage, rotate, admin or all)",
        ),
        (
            vec![rule(1, &["public"], &["k"], &[])],
            "rule #1: 'public' in allow means nothing: public operations are always allowed",
        ),
        (
            named(
                "orders",
                RawRule { users: strings(&["root", "no-such-user-xyz"]), ..ok.clone() },
            ),
            "rule 'orders' (#2): unknown user 'no-such-user-xyz'",
        ),
        (
            vec![RawRule { groups: strings(&["no-such-group-xyz"]), ..ok.clone() }],
            "rule #1: unknown group 'no-such-group-xyz'",
        ),
        (vec![rule(1, &["use"], &["ok", "bad["], &[])], "rule #1: bad pattern 'bad[' in keys: "),
        (vec![rule(1, &["use"], &[], &["[z-a"])], "rule #1: bad pattern '[z-a' in keks: "),
        (
            vec![rule(1, &["admin", "rotate"], &[], &[])],
            "rule #1: it allows 'rotate' but names no keys or keks",
        ),
        (vec![rule(1, &["all"], &[], &[])], "rule #1: it allows 'use' but names no keys or keks"),
        (
            vec![
                named("a", ok.clone()).pop().unwrap(),
                ok.clone(),
                named("a", ok.clone()).pop().unwrap(),
            ],
            "rule 'a' (#3): the name is already used by rule #1",
        ),
    ];
    for (rules, expected) in cases {
        let message = error(&rules);
        let expected = format!("policy in {SOURCE}, {expected}");
        assert!(message.starts_with(&expected), "{message:?} does not start with {expected:?}");
    }
}

#[test]
fn admin_without_patterns_is_valid_and_a_rule_is_read_from_toml() {
    policy(&[rule(1, &["admin"], &[], &[])]);
    #[derive(serde::Deserialize)]
    struct File {
        policy: Vec<RawRule>,
    }
    let text = r#"
        [[policy]]
        name = "orders"
        users = ["root"]
        uids = [1001]
        groups = ["daemon"]
        gids = [1002]
        keys = ["orders-*"]
        keks = ["orders", "pay-?"]
        allow = ["use", "export"]
    "#;
    let file: File = toml::from_str(text).unwrap();
    let p = policy(&file.policy);
    assert!(p.grants(&user(1001)).allows(OpClass::Export, Target::Kek("pay-1")));
    let typo = toml::from_str::<File>("[[policy]]\nuid = [1]\n");
    assert!(typo.err().unwrap().to_string().contains("unknown field `uid`"));
}

#[test]
fn a_store_reload_that_fails_keeps_the_old_policy() {
    let store = PolicyStore::new(policy(&[rule(1001, &["use"], &["old"], &[])]));
    let before = store.current();
    let bad = [rule(1001, &["use"], &[], &[])];
    assert!(store.reload(&bad, Path::new(SOURCE), &[]).is_err());
    assert!(Arc::ptr_eq(&before, &store.current()));

    store.reload(&[rule(1001, &["use"], &["new"], &[])], Path::new(SOURCE), &[]).unwrap();
    let now = store.current();
    assert!(now.grants(&user(1001)).allows(OpClass::Use, Target::Key("new")));
    assert!(!now.grants(&user(1001)).allows(OpClass::Use, Target::Key("old")));
    // A request that took the old policy keeps its answers.
    assert!(before.grants(&user(1001)).allows(OpClass::Use, Target::Key("old")));
    store.replace(Policy::privileged_only(&[]));
    assert_eq!(store.current().rule_count(), 0);
}
