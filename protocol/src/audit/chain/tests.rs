use proptest::prelude::*;

use super::*;
use crate::audit::AuditPhase;

fn event(n: u64) -> AuditEvent {
    AuditEvent {
        time: format!("2026-11-29T04:05:{:02}.123456Z", n % 60),
        uid: 1000,
        gid: 1000,
        pid: Some(4242),
        exe: Some("/usr/bin/app \"quoted\"\n".into()),
        conn: 7,
        request: n,
        element: n.is_multiple_of(3).then_some(2),
        op: "encrypt".into(),
        class: "use".into(),
        key: Some(format!("key-{n}")),
        kek: None,
        version: Some(3),
        phase: AuditPhase::Done,
        result: "ok".into(),
        latency_us: 17 + n,
    }
}

const TIME: &str = "2026-11-29T04:05:06.000001Z";

/// A chain of `files` files with `per_file` events each, as (name, bytes).
fn chain(files: u64, per_file: u64) -> (Vec<(String, Vec<u8>)>, ChainHead) {
    let mut head = ChainHead::ORIGIN;
    let mut out = Vec::new();
    let mut n = 0;
    for f in 0..files {
        let mut buf = Vec::new();
        let start = if f == 0 {
            RecordBody::Genesis { time: TIME.into(), nonce: [7; 32] }
        } else {
            RecordBody::Continue { time: TIME.into(), file: f }
        };
        head = encode_into(&mut buf, &head, &start);
        if f == 0 {
            head = encode_into(
                &mut buf,
                &head,
                &RecordBody::Restart { time: TIME.into(), torn_bytes: 3 },
            );
        }
        for _ in 0..per_file {
            n += 1;
            head = encode_event_into(&mut buf, &head, &event(n));
        }
        out.push((format!("audit.log.{}", f + 1), buf));
    }
    (out, head)
}

fn verify(files: &[(String, Vec<u8>)]) -> Result<ChainSummary, ChainError> {
    let mut v = Verifier::new();
    for (name, bytes) in files {
        v.start_file(name.clone())?;
        for (i, line) in bytes.split_inclusive(|b| *b == b'\n').enumerate() {
            v.line(i as u64 + 1, line)?;
        }
    }
    v.finish()
}

fn lines(bytes: &[u8]) -> Vec<Vec<u8>> {
    bytes.split_inclusive(|b| *b == b'\n').map(<[u8]>::to_vec).collect()
}

#[test]
fn the_layout_is_the_documented_one() {
    let (line, head) =
        encode(&ChainHead::ORIGIN, &RecordBody::Genesis { time: TIME.into(), nonce: [0xab; 32] });
    let zeros = "0".repeat(64);
    let nonce = "ab".repeat(32);
    let body = format!(
        "{{\"seq\":0,\"prev\":\"{zeros}\",\"kind\":\"genesis\",\"time\":\"{TIME}\",\"nonce\":\"{nonce}\",\"file\":0}}"
    );
    let hash = to_hex(&Sha256::digest(body.as_bytes()));
    let open = &body[..body.len() - 1];
    assert_eq!(line, format!("{open},\"hash\":\"{hash}\"}}\n"));
    assert_eq!(head, ChainHead { next_seq: 1, hash: parse_hash(hash.as_bytes()).unwrap() });
    // The body is the line minus `\n` and its last 75 bytes, plus `}`.
    let l = line.trim_end_matches('\n');
    assert_eq!(format!("{}}}", &l[..l.len() - 75]), body);

    let (line, _) = encode(&head, &RecordBody::Event(event(1)));
    let v: serde_json::Value = serde_json::from_str(&line).expect("JSON");
    let start =
        format!("{{\"seq\":1,\"prev\":\"{}\",\"kind\":\"event\",\"time\":", head.hash_hex());
    assert!(line.starts_with(&start), "{line}");
    assert!(line.contains(",\"latency_us\":18,\"hash\":\""), "{line}");
    assert_eq!(v["kind"], "event");
    assert_eq!(v["uid"], 1000);
    assert_eq!(v["exe"], "/usr/bin/app \"quoted\"\n");
    assert_eq!(v["kek"], serde_json::Value::Null);
}

#[test]
fn event_fields_do_not_collide_with_the_record_members() {
    let v = serde_json::to_value(event(1)).unwrap();
    for reserved in ["seq", "prev", "kind", "hash"] {
        assert!(v.get(reserved).is_none(), "AuditEvent has a field named {reserved}");
    }
}

#[test]
fn records_round_trip() {
    let mut head = ChainHead::ORIGIN;
    let bodies = [
        RecordBody::Genesis { time: TIME.into(), nonce: [1; 32] },
        RecordBody::Event(event(1)),
        RecordBody::Restart { time: TIME.into(), torn_bytes: 99 },
        RecordBody::Continue { time: TIME.into(), file: 1 },
        RecordBody::Event(event(3)),
    ];
    for body in bodies {
        let (line, next) = encode(&head, &body);
        let record = decode_line(line.as_bytes()).expect("decodes");
        assert_eq!(record.seq, head.next_seq);
        assert_eq!(record.prev, head.hash);
        assert_eq!(record.body, body);
        assert_eq!(record.head_after(), next);
        // Without its newline too.
        assert_eq!(decode_line(line.trim_end().as_bytes()), Ok(record));
        head = next;
    }
}

#[test]
fn a_chain_across_files_verifies() {
    let (files, head) = chain(3, 4);
    let summary = verify(&files).expect("verifies");
    assert_eq!(
        summary,
        ChainSummary { records: 1 + 1 + 4 + 2 * (1 + 4), events: 12, files: 3, head }
    );
}

#[test]
fn flipping_any_bit_pattern_of_any_byte_is_detected() {
    let (files, _) = chain(2, 2);
    for f in 0..files.len() {
        for i in 0..files[f].1.len() {
            for mask in [0x01u8, 0x02, 0x20, 0x80] {
                let mut bad = files.clone();
                bad[f].1[i] ^= mask;
                assert!(verify(&bad).is_err(), "file {f} byte {i} ^ {mask:#x} undetected");
            }
        }
    }
}

#[test]
fn a_changed_record_is_named_by_file_line_and_seq() {
    let (mut files, _) = chain(2, 3);
    // Line 2 of the second file: seq (genesis, restart, 3 events) + continue = 6.
    let at = files[1].1.iter().position(|b| *b == b'\n').unwrap() + 30;
    files[1].1[at] ^= 1;
    let e = verify(&files).unwrap_err();
    assert_eq!(
        (e.file.as_str(), e.line, e.seq, &e.fault),
        ("audit.log.2", 2, 6, &Fault::HashMismatch)
    );
    assert_eq!(e.to_string(), "audit.log.2 line 2 (seq 6): record changed (hash mismatch)");
}

#[test]
fn a_deleted_record_is_missing() {
    let (mut files, _) = chain(1, 4);
    let mut l = lines(&files[0].1);
    l.remove(3); // seq 3
    files[0].1 = l.concat();
    let e = verify(&files).unwrap_err();
    assert_eq!((e.line, e.seq, &e.fault), (4, 3, &Fault::MissingRecords { found: 4 }));
}

#[test]
fn swapped_records_are_out_of_order() {
    let (mut files, _) = chain(1, 4);
    let mut l = lines(&files[0].1);
    l.swap(3, 4); // seq 3 and 4
    files[0].1 = l.concat();
    let e = verify(&files).unwrap_err();
    assert_eq!((e.line, e.seq, &e.fault), (4, 3, &Fault::OutOfOrder { found: 4 }));

    // A record repeated further on.
    let (mut files, _) = chain(1, 4);
    let mut l = lines(&files[0].1);
    l.insert(5, l[2].clone());
    files[0].1 = l.concat();
    let e = verify(&files).unwrap_err();
    assert_eq!((e.line, e.seq, &e.fault), (6, 5, &Fault::OutOfOrder { found: 2 }));
}

#[test]
fn a_truncated_last_line_is_truncated() {
    for keep in [1, 40, 200] {
        let (mut files, _) = chain(2, 3);
        let len = files[1].1.len();
        let last_start = files[1].1[..len - 1].iter().rposition(|b| *b == b'\n').unwrap() + 1;
        files[1].1.truncate(last_start + keep);
        let e = verify(&files).unwrap_err();
        assert_eq!((e.file.as_str(), e.line, &e.fault), ("audit.log.2", 4, &Fault::Truncated));
    }
    // Only the newline lost.
    let (mut files, _) = chain(1, 1);
    files[0].1.pop();
    assert_eq!(verify(&files).unwrap_err().fault, Fault::Truncated);
    // A last line that is not a record (a crash can leave zeros).
    let (mut files, _) = chain(1, 1);
    files[0].1.extend_from_slice(b"\0\0\0\0\n");
    assert_eq!(verify(&files).unwrap_err().fault, Fault::Truncated);
    // The same garbage in the middle is a changed record.
    let (mut files, _) = chain(1, 2);
    let mut l = lines(&files[0].1);
    l.insert(2, b"garbage\n".to_vec());
    files[0].1 = l.concat();
    let e = verify(&files).unwrap_err();
    assert_eq!((e.line, e.seq, e.fault.name()), (3, 2, "not_a_record"));
}

#[test]
fn a_dropped_middle_file_is_missing_records() {
    let (mut files, _) = chain(3, 3);
    files.remove(1);
    let e = verify(&files).unwrap_err();
    assert_eq!((e.file.as_str(), e.line, e.seq), ("audit.log.3", 1, 5));
    assert_eq!(e.fault, Fault::MissingRecords { found: 9 });
    // Without the first file, the chain has no start.
    let (mut files, _) = chain(3, 3);
    files.remove(0);
    let e = verify(&files).unwrap_err();
    assert_eq!(e.fault, Fault::NotChainStart { found: RecordKind::Continue });
    // Files given in the wrong order.
    let (mut files, _) = chain(3, 3);
    files.swap(1, 2);
    assert_eq!(verify(&files).unwrap_err().fault.name(), "missing_records");
}

#[test]
fn relinked_and_misplaced_records_are_caught() {
    // A rewritten record with a recomputed hash breaks the next record's link.
    let (mut files, _) = chain(1, 3);
    let mut l = lines(&files[0].1);
    let r = decode_line(&l[2]).unwrap();
    let mut forged = event(99);
    forged.result = "permission_denied".into();
    let (line, _) =
        encode(&ChainHead { next_seq: r.seq, hash: r.prev }, &RecordBody::Event(forged));
    l[2] = line.into_bytes();
    files[0].1 = l.concat();
    let e = verify(&files).unwrap_err();
    assert_eq!((e.line, e.seq, &e.fault), (4, 3, &Fault::BrokenLink));

    // A file that starts with an event.
    let (mut files, _) = chain(2, 2);
    let mut l = lines(&files[1].1);
    let continue_line = l.remove(0);
    files[1].1 = l.concat();
    files[0].1.extend_from_slice(&continue_line);
    let e = verify(&files).unwrap_err();
    assert_eq!(
        (e.file.as_str(), e.line, &e.fault),
        ("audit.log.1", 5, &Fault::Misplaced { kind: RecordKind::Continue })
    );

    // A wrong file number, correctly hashed and linked.
    let mut head = ChainHead::ORIGIN;
    let mut a = Vec::new();
    head = encode_into(&mut a, &head, &RecordBody::Genesis { time: TIME.into(), nonce: [0; 32] });
    let mut b = Vec::new();
    encode_into(&mut b, &head, &RecordBody::Continue { time: TIME.into(), file: 2 });
    let e = verify(&[("a".into(), a), ("b".into(), b)]).unwrap_err();
    assert_eq!(e.fault, Fault::FileNumber { expected: 1, found: 2 });
}

#[test]
fn empty_input_and_empty_files_do_not_verify() {
    assert_eq!(Verifier::new().finish().unwrap_err().fault, Fault::NoRecords);
    assert_eq!(Verifier::new().finish().unwrap_err().to_string(), "no audit records");
    let (mut files, _) = chain(2, 1);
    files[1].1.clear();
    let e = verify(&files).unwrap_err();
    assert_eq!((e.file.as_str(), e.line, &e.fault), ("audit.log.2", 0, &Fault::EmptyFile));
}

#[test]
fn errors_stick() {
    let mut v = Verifier::new();
    v.start_file("x").unwrap();
    let first = v.line(1, b"nope").unwrap_err();
    assert_eq!(v.line(2, b"more\n").unwrap_err(), first);
    assert_eq!(v.finish().unwrap_err(), first);
}

#[test]
fn malformed_lines_never_panic_and_never_quote_their_input() {
    let (files, _) = chain(1, 1);
    let good = lines(&files[0].1).pop().unwrap();
    let cases: Vec<Vec<u8>> = vec![
        vec![],
        b"\n".to_vec(),
        b"{}\n".to_vec(),
        vec![b'x'; 200],
        good[..good.len() - 10].to_vec(),
        good.iter().map(|b| if *b == b'"' { b'\'' } else { *b }).collect(),
        b"{\"seq\":18446744073709551616,\"prev\":\"".to_vec(),
    ];
    for case in cases {
        if let Err(LineError::Malformed(detail)) = decode_line(&case) {
            assert!(!detail.contains('\u{1b}'));
        }
    }
    // A correctly hashed line whose members are wrong: an escape must not show up.
    let mut head = ChainHead::ORIGIN;
    let mut buf = Vec::new();
    head = encode_into(
        &mut buf,
        &head,
        &RecordBody::Restart { time: "\u{1b}[31m".into(), torn_bytes: 0 },
    );
    let body =
        String::from_utf8(buf).unwrap().replace("\"torn_bytes\":0", "\"torn_bytes\":\"\u{1b}[2J\"");
    let open = &body[..body.len() - 76];
    let hash = to_hex(&Sha256::digest(format!("{open}}}").as_bytes()));
    let forged = format!("{open},\"hash\":\"{hash}\"}}\n");
    match decode_line(forged.as_bytes()) {
        Err(LineError::Malformed(detail)) => assert!(!detail.contains('\u{1b}'), "{detail}"),
        other => panic!("{other:?}"),
    }
    let _ = head;
}

fn arb_event() -> impl Strategy<Value = AuditEvent> {
    (
        any::<String>(),
        any::<(u32, u32, Option<i32>, Option<String>, u64, u64, Option<u32>)>(),
        (any::<String>(), any::<Option<String>>(), any::<Option<String>>(), any::<Option<u32>>()),
        (any::<bool>(), any::<String>(), any::<u64>()),
    )
        .prop_map(
            |(
                time,
                (uid, gid, pid, exe, conn, request, element),
                (op, key, kek, version),
                (intent, result, latency_us),
            )| {
                AuditEvent {
                    time,
                    uid,
                    gid,
                    pid,
                    exe,
                    conn,
                    request,
                    element,
                    class: op.chars().rev().collect(),
                    op,
                    key,
                    kek,
                    version,
                    phase: if intent { AuditPhase::Intent } else { AuditPhase::Done },
                    result,
                    latency_us,
                }
            },
        )
}

proptest! {
    #[test]
    fn any_event_round_trips_and_chains(events in proptest::collection::vec(arb_event(), 1..8), seq in any::<u64>()) {
        let mut buf = Vec::new();
        let start = ChainHead { next_seq: seq, hash: [9; 32] };
        let mut head = start;
        for e in &events {
            head = encode_event_into(&mut buf, &head, e);
        }
        let mut head = start;
        for (line, e) in buf.split_inclusive(|b| *b == b'\n').zip(&events) {
            let r = decode_line(line).expect("decodes");
            prop_assert_eq!((r.seq, r.prev), (head.next_seq, head.hash));
            prop_assert_eq!(&r.body, &RecordBody::Event(e.clone()));
            head = r.head_after();
        }
        prop_assert_eq!(buf.iter().filter(|b| **b == b'\n').count(), events.len());
    }

    #[test]
    fn time_strings_escape_like_serde_json(time in any::<String>()) {
        let mut buf = Vec::new();
        push_json_str(&mut buf, &time);
        prop_assert_eq!(buf, serde_json::to_vec(&time).unwrap());
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_verifier(data in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = decode_line(&data);
        let mut v = Verifier::new();
        let _ = v.start_file("f");
        for (i, line) in data.split_inclusive(|b| *b == b'\n').enumerate() {
            let _ = v.line(i as u64 + 1, line);
        }
        let _ = v.finish();
    }
}

/// `cargo test --release -p harpocrates-protocol encode_throughput -- --ignored --nocapture`:
/// the daemon's hot path must keep well ahead of ~300k records/s.
#[test]
#[ignore = "a throughput measurement, meaningful only in release builds"]
fn encode_throughput() {
    let e = event(12345);
    let mut buf = Vec::with_capacity(1 << 20);
    let mut head = ChainHead::ORIGIN;
    let n: u32 = 1_000_000;
    let started = std::time::Instant::now();
    for _ in 0..n {
        if buf.len() > (1 << 20) - 1024 {
            buf.clear();
        }
        head = encode_event_into(&mut buf, &head, &e);
    }
    let rate = f64::from(n) / started.elapsed().as_secs_f64();
    println!(
        "{rate:.0} records/s ({} bytes each)",
        buf.iter().position(|b| *b == b'\n').unwrap_or(0) + 1
    );
    assert_eq!(head.next_seq, u64::from(n));
}
