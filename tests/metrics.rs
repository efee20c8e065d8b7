//! Metrics through the real daemon: what real operations, errors and latencies show up
//! as, `harpoctl metrics` in its three forms, and `--prometheus` read the way Prometheus
//! reads it — by `promtool check metrics` when it is installed (Debian: `prometheus`),
//! and always by the strict parser of the text exposition format below.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Daemon, bin};
use harpocrates::client::{Client, Error};
use harpocrates::protocol::{ErrorCode, KeyAttributes, MetricsSnapshot, Request};

fn harpoctl(socket: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin("harpoctl"))
        .args(args)
        .env("HARPOCRATES_SOCKET", socket)
        .stdin(Stdio::null())
        .output()
        .expect("run harpoctl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn code_count(m: &MetricsSnapshot, code: ErrorCode) -> u64 {
    m.errors_by_code.iter().filter(|e| e.code == code).map(|e| e.count).sum()
}

/// Runs successes and three kinds of failure (invalid_request, key_not_found, busy) and
/// some envelope work through `c`.
async fn workload(c: &Client) {
    c.generate_key("k", 256).await.expect("keygen");
    for i in 0..40u32 {
        c.encrypt("k", &i.to_be_bytes(), None).await.expect("encrypt");
    }
    assert!(matches!(c.generate_key("bad label", 256).await, Err(Error::InvalidRequest(_))));
    assert!(matches!(c.encrypt("missing", b"x", None).await, Err(Error::KeyNotFound(_))));
    // One connection may run 4 password-KDF operations at a time: the fifth element of
    // one batch is refused with Busy before any of them runs.
    let extractable = KeyAttributes { extractable: true, ..KeyAttributes::aes(256) };
    c.generate_key_with_attributes("bk", extractable).await.expect("extractable key");
    let backup =
        || Request::BackupKey { key: "bk".into(), password: b"a long password".as_slice().into() };
    let answers =
        (0..5).fold(c.batch(), |b, _| b.push(backup())).send().await.expect("batch of backups");
    assert!(matches!(answers[4], Err(Error::Busy(_))), "{:?}", answers[4]);
    c.generate_kek("files").await.expect("kek");
    for _ in 0..3 {
        c.encrypt_with_context("files", b"tenant 7", b"data", None).await.expect("envelope");
    }
}

#[tokio::test]
async fn operations_error_codes_and_latencies_are_counted() {
    let d = Daemon::start();
    let c = Client::connect(&d.socket).await.expect("connect");
    workload(&c).await;
    let m = c.metrics().await.expect("metrics");

    let encrypt = m.per_op.iter().find(|o| o.op == "encrypt").expect("encrypt counted");
    assert_eq!((encrypt.count, encrypt.errors), (41, 1), "{encrypt:?}");
    let l = encrypt.latency;
    assert_eq!(l.window_count, 41, "{l:?}");
    assert!(0 < l.p50_ns && l.p50_ns <= l.p90_ns && l.p90_ns <= l.p99_ns, "{l:?}");
    assert!(l.p99_ns <= l.max_ns && l.max_ns <= l.sum_ns, "{l:?}");
    let backups = m.per_op.iter().find(|o| o.op == "backup_key").expect("backups counted");
    assert_eq!((backups.count, backups.errors), (5, 1), "{backups:?}");

    assert_eq!(code_count(&m, ErrorCode::InvalidRequest), 1, "{:?}", m.errors_by_code);
    assert_eq!(code_count(&m, ErrorCode::KeyNotFound), 1, "{:?}", m.errors_by_code);
    assert_eq!(code_count(&m, ErrorCode::Busy), 1, "{:?}", m.errors_by_code);
    assert_eq!(code_count(&m, ErrorCode::IntegrityCheckFailed), 0);
    assert!(m.errors_by_code.len() >= 15, "every known code is listed: {:?}", m.errors_by_code);
    let by_code: u64 = m.errors_by_code.iter().map(|e| e.count).sum();
    assert_eq!(by_code, m.errors_total, "each failed answer has its code counted once");
    let client_ops: u64 = m
        .per_op
        .iter()
        .filter(|o| harpocrates::protocol::Op::ALL.iter().any(|op| op.name() == o.op))
        .map(|o| o.count)
        .sum();
    assert_eq!(client_ops, m.ops_total, "the daemon's own token jobs are not in the totals");

    // The envelope key for one context is derived once, then served from the cache.
    assert!(m.dek_cache_misses >= 1 && m.dek_cache_hits >= 2, "{m:?}");
    assert!(m.per_op.iter().any(|o| o.op == "kek_derive"), "internal jobs are listed");
    assert_eq!((m.connections, m.connections_total, m.connections_refused), (1, 1, 0));
    assert_eq!((m.backend_generation, m.backend_swaps), (1, 0));
    assert_eq!((m.reloads_ok, m.reloads_failed), (0, 0));
}

#[tokio::test]
async fn harpoctl_prints_a_table_json_and_prometheus_text_that_promtool_accepts() {
    let d = Daemon::start();
    let c = Client::connect(&d.socket).await.expect("connect");
    workload(&c).await;

    let (code, table, err) = harpoctl(&d.socket, &["metrics"]);
    assert_eq!(code, 0, "{err}");
    for needle in ["OPERATION", "P99 µs", "encrypt", "ERROR CODE", "invalid_request", "sessions:"]
    {
        assert!(table.contains(needle), "{needle:?} missing from\n{table}");
    }

    let (code, json, err) = harpoctl(&d.socket, &["--json", "metrics"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&json).expect("json");
    assert_eq!(v["errors_by_code"]["busy"], 1, "{v}");
    assert_eq!(v["errors_by_code"]["key_not_found"], 1, "{v}");
    let encrypt = v["per_op"].as_array().expect("per_op").iter().find(|o| o["op"] == "encrypt");
    assert!(encrypt.is_some_and(|o| o["latency"]["p99_ns"].as_u64() > Some(0)), "{v}");

    let (code, _, err) = harpoctl(&d.socket, &["--json", "metrics", "--prometheus"]);
    assert_eq!(code, 2, "--json and --prometheus conflict: {err}");

    let (code, text, err) = harpoctl(&d.socket, &["metrics", "--prometheus"]);
    assert_eq!(code, 0, "{err}");
    let series = parse_exposition(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let value = |s: &str| *series.get(s).unwrap_or_else(|| panic!("no series {s} in\n{text}"));
    assert_eq!(value("harpocrates_operations_total{op=\"encrypt\"}"), 41.0);
    assert_eq!(value("harpocrates_operation_errors_total{op=\"encrypt\"}"), 1.0);
    assert_eq!(value("harpocrates_operations_total{op=\"rewrap\"}"), 0.0, "unused ops at 0");
    assert_eq!(value("harpocrates_errors_total{code=\"invalid_request\"}"), 1.0);
    assert_eq!(value("harpocrates_errors_total{code=\"busy\"}"), 1.0);
    assert_eq!(value("harpocrates_busy_refusals_total{scope=\"request\"}"), 1.0);
    assert_eq!(value("harpocrates_operation_latency_seconds_count{op=\"encrypt\"}"), 41.0);
    let p99 = value("harpocrates_operation_latency_seconds{op=\"encrypt\",quantile=\"0.99\"}");
    assert!(p99 > 0.0 && p99 < 10.0, "p99 in seconds: {p99}");
    assert!(value("harpocrates_uptime_seconds") >= 0.0);
    assert_eq!(value("harpocrates_backend_generation"), 1.0);

    match Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(mut promtool) => {
            promtool.stdin.take().expect("stdin").write_all(text.as_bytes()).expect("write");
            let out = promtool.wait_with_output().expect("promtool");
            assert!(
                out.status.success(),
                "promtool check metrics failed ({}):\n{}{}\n{text}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!(
                "skipping promtool (not installed; Debian package `prometheus`): the output \
                 was checked by this test's exposition-format parser only"
            );
        }
        Err(e) => panic!("cannot run promtool: {e}"),
    }
}

/// The session gauges and the textfile are wired in by the server (`snapshot_with` the
/// serving pool's gauges, and the textfile task).
#[tokio::test]
async fn the_pool_gauges_and_the_textfile_show_the_serving_daemon() {
    let textdir = tempfile::tempdir().expect("tempdir");
    let textfile = textdir.path().join("harpocrates.prom");
    let d = Daemon::start_with(&format!(
        "max_sessions = 3\nqueue_depth = 100\nmetrics = {{ textfile = {textfile:?}, interval = \"1s\" }}"
    ));
    let c = Client::connect(&d.socket).await.expect("connect");
    c.generate_key("k", 256).await.expect("keygen");
    let m = c.metrics().await.expect("metrics");
    let p = m.pool;
    assert_eq!((p.sessions_max, p.queue_capacity), (3, 100), "{p:?}");
    assert!(p.sessions_open >= 1 && p.sessions_busy <= p.sessions_max, "{p:?}");
    assert!(p.queue_depth <= p.queue_capacity, "{p:?}");

    // Written at once, then every second, atomically (no temporary file is left behind).
    let text = common::wait_for(Duration::from_secs(10), "the metrics textfile", || {
        std::fs::read_to_string(&textfile)
            .ok()
            .filter(|t| t.contains("harpocrates_operations_total{op=\"generate_key\"} 1"))
    });
    let series = parse_exposition(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(series.get("harpocrates_sessions_max"), Some(&3.0), "{text}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&textfile).expect("stat").permissions().mode();
    assert_eq!(mode & 0o777, 0o644);
    let names: Vec<_> = std::fs::read_dir(textdir.path())
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["harpocrates.prom"], "only the file itself");
}

/// What one exposition sample line holds.
struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

/// Parses the Prometheus text exposition format (0.0.4) strictly: HELP and TYPE once per
/// family and before its samples, families not interleaved, valid names, labels and
/// values, no series twice, counters non-negative, summaries with quantile labels.
/// Returns every series (`name{labels}` as printed) with its value.
fn parse_exposition(text: &str) -> Result<BTreeMap<String, f64>, String> {
    let mut types: HashMap<String, String> = HashMap::new();
    let mut helps: HashMap<String, ()> = HashMap::new();
    let mut closed: Vec<String> = Vec::new();
    let mut current: Option<String> = None;
    let mut series = BTreeMap::new();
    let mut identities = std::collections::HashSet::new();
    if !text.ends_with('\n') {
        return Err("the text does not end with a newline".into());
    }
    for (n, line) in text.lines().enumerate() {
        let at = |e: String| format!("line {}: {e}: {line:?}", n + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix('#') {
            let mut words = rest.trim_start().splitn(3, ' ');
            match (words.next(), words.next(), words.next()) {
                (Some("HELP"), Some(name), _) => {
                    check_name(name).map_err(at)?;
                    if helps.insert(name.to_owned(), ()).is_some() {
                        return Err(at("a second HELP".into()));
                    }
                }
                (Some("TYPE"), Some(name), Some(kind)) => {
                    check_name(name).map_err(at)?;
                    if !["counter", "gauge", "summary", "histogram", "untyped"].contains(&kind) {
                        return Err(at(format!("unknown type {kind}")));
                    }
                    if types.insert(name.to_owned(), kind.to_owned()).is_some() {
                        return Err(at("a second TYPE".into()));
                    }
                    if series.keys().any(|s: &String| family_of(s, &types) == name) {
                        return Err(at("TYPE after the family's samples".into()));
                    }
                }
                _ => {}
            }
            continue;
        }
        let sample = parse_sample(line).map_err(at)?;
        let family = family_of(&sample.name, &types).to_owned();
        let kind = types.get(&family).ok_or_else(|| at(format!("{family} has no TYPE")))?;
        if !helps.contains_key(&family) {
            return Err(at(format!("{family} has no HELP")));
        }
        if current.as_deref() != Some(family.as_str()) {
            if closed.contains(&family) {
                return Err(at(format!("{family}'s samples are not together")));
            }
            closed.extend(current.replace(family.clone()));
        }
        match kind.as_str() {
            "counter" => {
                if !sample.name.ends_with("_total") {
                    return Err(at("a counter not ending in _total".into()));
                }
                if sample.value.is_nan() || sample.value < 0.0 {
                    return Err(at("a counter below zero or NaN".into()));
                }
            }
            "summary" if sample.name == family => {
                let q = sample.labels.iter().find(|(k, _)| k == "quantile");
                let q = q.ok_or_else(|| at("a summary sample without quantile".into()))?;
                let q: f64 = q.1.parse().map_err(|e| at(format!("quantile: {e}")))?;
                if !(0.0..=1.0).contains(&q) {
                    return Err(at(format!("quantile {q}")));
                }
            }
            _ => {}
        }
        let mut labels = sample.labels.clone();
        labels.sort();
        let key = format!(
            "{}{}",
            sample.name,
            if sample.labels.is_empty() {
                String::new()
            } else {
                let inner: Vec<_> =
                    sample.labels.iter().map(|(k, v)| format!("{k}=\"{}\"", escape(v))).collect();
                format!("{{{}}}", inner.join(","))
            }
        );
        if !identities.insert(format!("{}{labels:?}", sample.name)) {
            return Err(at("a series twice".into()));
        }
        series.insert(key, sample.value);
    }
    Ok(series)
}

/// The family a sample belongs to: its own name, or a summary's or histogram's name
/// without the `_sum`, `_count` or `_bucket` suffix.
fn family_of<'a>(name: &'a str, types: &HashMap<String, String>) -> &'a str {
    for suffix in ["_sum", "_count", "_bucket"] {
        if let Some(base) = name.strip_suffix(suffix)
            && types.get(base).is_some_and(|t| t == "summary" || t == "histogram")
        {
            return base;
        }
    }
    name
}

fn check_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':');
    if first_ok && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
        Ok(())
    } else {
        Err(format!("bad metric name {name:?}"))
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let end = line.find(['{', ' ']).ok_or("no value")?;
    let name = &line[..end];
    check_name(name)?;
    let mut rest = &line[end..];
    let mut labels = Vec::new();
    if let Some(inner) = rest.strip_prefix('{') {
        let mut chars = inner.char_indices().peekable();
        loop {
            // A label name, `=`, a quoted value; then `,` or `}`.
            let start = chars.peek().map(|(i, _)| *i).ok_or("unterminated labels")?;
            if inner[start..].starts_with('}') {
                chars.next();
                break;
            }
            let eq = inner[start..].find('=').ok_or("label without =")? + start;
            let key = &inner[start..eq];
            let mut key_chars = key.chars();
            if !key_chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                || !key_chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
            {
                return Err(format!("bad label name {key:?}"));
            }
            while chars.peek().is_some_and(|(i, _)| *i <= eq) {
                chars.next();
            }
            if chars.next().map(|(_, c)| c) != Some('"') {
                return Err("label value not quoted".into());
            }
            let mut value = String::new();
            loop {
                match chars.next().ok_or("unterminated label value")?.1 {
                    '"' => break,
                    '\\' => match chars.next().ok_or("dangling escape")?.1 {
                        '\\' => value.push('\\'),
                        '"' => value.push('"'),
                        'n' => value.push('\n'),
                        c => return Err(format!("bad escape \\{c}")),
                    },
                    '\n' => return Err("newline in a label value".into()),
                    c => value.push(c),
                }
            }
            if labels.iter().any(|(k, _)| k == key) {
                return Err(format!("label {key} twice"));
            }
            labels.push((key.to_owned(), value));
            match chars.next().ok_or("unterminated labels")?.1 {
                ',' => {}
                '}' => break,
                c => return Err(format!("{c:?} after a label")),
            }
        }
        let consumed = chars.peek().map_or(inner.len(), |(i, _)| *i);
        rest = &inner[consumed..];
    }
    let mut fields = rest.strip_prefix(' ').ok_or("no space before the value")?.split(' ');
    let value = fields.next().ok_or("no value")?;
    let value = match value {
        "NaN" => f64::NAN,
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v if v.chars().all(|c| c.is_ascii_digit() || "+-.eE".contains(c)) => {
            v.parse().map_err(|e| format!("value {v:?}: {e}"))?
        }
        v => return Err(format!("value {v:?}")),
    };
    if let Some(ts) = fields.next() {
        ts.parse::<i64>().map_err(|e| format!("timestamp {ts:?}: {e}"))?;
    }
    if fields.next().is_some() {
        return Err("trailing fields".into());
    }
    Ok(Sample { name: name.to_owned(), labels, value })
}

#[test]
fn the_parser_refuses_what_prometheus_would() {
    let ok = "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"q\\\"\\\\\\n\"} 1\n";
    let series = parse_exposition(ok).expect("valid");
    assert_eq!(series.get("a_total{x=\"q\\\"\\\\\\n\"}"), Some(&1.0));
    let bad = [
        ("a_total 1\n", "no TYPE"),
        ("# TYPE a_total counter\na_total 1\n", "no HELP"),
        ("# HELP a_total A.\n# TYPE a_total counter\na_total -1\n", "below zero"),
        ("# HELP a A.\n# TYPE a counter\na 1\n", "_total"),
        ("# HELP a A.\n# TYPE a gauge\na{x=\"1} 1\n", "unterminated"),
        ("# HELP a A.\n# TYPE a gauge\na{x=\"\\t\"} 1\n", "escape"),
        ("# HELP a A.\n# TYPE a gauge\na 1\na 2\n", "twice"),
        ("# HELP a A.\n# TYPE a gauge\na one\n", "value"),
        (
            "# HELP a A.\n# TYPE a gauge\n# HELP b B.\n# TYPE b gauge\na 1\nb 1\na{x=\"y\"} 1\n",
            "together",
        ),
        ("# HELP s S.\n# TYPE s summary\ns 1\n", "quantile"),
        ("# HELP a A.\n# TYPE a gauge\na 1", "newline"),
    ];
    for (text, why) in bad {
        let e = parse_exposition(text).expect_err(why);
        assert!(e.contains(why), "{why}: {e}");
    }
}
