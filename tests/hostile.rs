//! Hostile and broken input, as raw bytes on the socket. Each case gets a typed error or
//! a closed connection; the daemon survives and other clients never notice.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use common::{Daemon, frame};
use harpocrates::client::{BlockingClient, Error};
use harpocrates::protocol::{
    ErrorCode, PROTOCOL_VERSION, Request, Response, ResponseFrame, WireError, codec::decode_body,
};

fn raw(d: &Daemon) -> UnixStream {
    let s = UnixStream::connect(&d.socket).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    s
}

fn hello() -> Vec<u8> {
    frame(1, Request::Hello { version: PROTOCOL_VERSION, client_name: "raw".into() })
}

/// Reads one response frame, or None when the daemon closed the connection.
fn read_frame(s: &mut UnixStream) -> Option<ResponseFrame> {
    let mut len = [0u8; 4];
    if s.read_exact(&mut len).is_err() {
        return None;
    }
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut body).expect("whole body");
    Some(decode_body(&body).expect("daemon frames decode"))
}

fn expect_error(s: &mut UnixStream, id: u64, code: ErrorCode) -> WireError {
    let f = read_frame(s).expect("an answer");
    assert_eq!(f.id, id, "{f:?}");
    match f.result {
        Err(e) if e.code == code => e,
        other => panic!("expected {code:?}, got {other:?}"),
    }
}

fn expect_closed(s: &mut UnixStream) {
    let mut byte = [0u8; 1];
    assert_eq!(s.read(&mut byte).expect("clean EOF"), 0, "connection should be closed");
}

fn greeted(d: &Daemon) -> UnixStream {
    let mut s = raw(d);
    s.write_all(&hello()).expect("hello");
    assert!(matches!(
        read_frame(&mut s),
        Some(ResponseFrame { id: 1, result: Ok(Response::Hello { .. }) })
    ));
    s
}

/// A well-behaved client that must keep working through every attack.
fn bystander_works(c: &BlockingClient) {
    let ct = c.encrypt("k", b"still fine", None).expect("bystander encrypt");
    assert_eq!(c.decrypt("k", &ct, None).expect("bystander decrypt").expose(), b"still fine");
}

#[test]
fn hostile_input_never_hurts_the_daemon_or_other_clients() {
    let mut d = Daemon::start_with("max_frame = 65536");
    let bystander = BlockingClient::connect(&d.socket).expect("connect");
    bystander.generate_key("k", 256).expect("keygen");

    // Wrong protocol version: typed refusal, then close.
    let mut s = raw(&d);
    s.write_all(&frame(9, Request::Hello { version: 99, client_name: "future".into() }))
        .expect("write");
    let e = expect_error(&mut s, 9, ErrorCode::UnsupportedVersion);
    assert!(e.message.contains("99"), "{e:?}");
    expect_closed(&mut s);
    bystander_works(&bystander);

    // A request before Hello.
    let mut s = raw(&d);
    s.write_all(&frame(3, Request::ListKeys)).expect("write");
    expect_error(&mut s, 3, ErrorCode::InvalidRequest);
    expect_closed(&mut s);

    // Oversized length prefix: FrameTooLarge (id 0), then close; nothing allocated for it.
    let mut s = greeted(&d);
    s.write_all(&u32::MAX.to_be_bytes()).expect("write");
    let e = expect_error(&mut s, 0, ErrorCode::FrameTooLarge);
    assert!(e.message.contains("65536"), "{e:?}");
    expect_closed(&mut s);
    bystander_works(&bystander);

    // Garbage body with a readable id: typed error for that id; the connection lives on.
    let mut s = greeted(&d);
    s.write_all(&[0, 0, 0, 4, 42, 0xff, 0xff, 0xff]).expect("write");
    expect_error(&mut s, 42, ErrorCode::InvalidRequest);
    s.write_all(&frame(43, Request::Ping)).expect("write");
    assert!(matches!(
        read_frame(&mut s),
        Some(ResponseFrame { id: 43, result: Ok(Response::Pong) })
    ));
    // Garbage with no readable id (varint marker with nothing after it): id 0.
    s.write_all(&[0, 0, 0, 1, 0xfd]).expect("write");
    expect_error(&mut s, 0, ErrorCode::InvalidRequest);
    // An empty body.
    s.write_all(&[0, 0, 0, 0]).expect("write");
    expect_error(&mut s, 0, ErrorCode::InvalidRequest);
    // A valid request followed by trailing junk inside the frame.
    let mut f = frame(44, Request::Ping);
    f.push(0);
    let len = (f.len() - 4) as u32;
    f[..4].copy_from_slice(&len.to_be_bytes());
    s.write_all(&f).expect("write");
    expect_error(&mut s, 44, ErrorCode::InvalidRequest);
    // A forged inner length (a plaintext "of 2^40 bytes").
    s.write_all(&[0, 0, 0, 13, 45, 7, 1, b'k', 0xfd, 0, 0, 0, 0, 0, 1, 0, 0]).expect("write");
    expect_error(&mut s, 45, ErrorCode::InvalidRequest);
    drop(s);
    bystander_works(&bystander);

    // Truncated frame, then the client vanishes mid-frame.
    let mut s = greeted(&d);
    let f =
        frame(50, Request::Encrypt { key: "k".into(), plaintext: vec![1; 1000].into(), aad: None });
    s.write_all(&f[..f.len() / 2]).expect("write");
    drop(s);
    // Length prefix cut in half.
    let mut s = greeted(&d);
    s.write_all(&[0, 0]).expect("write");
    drop(s);
    // Disconnect before the answer to a request in flight.
    let mut s = greeted(&d);
    s.write_all(&frame(51, Request::GenerateRandom { len: 1 << 20 })).expect("write");
    drop(s);
    bystander_works(&bystander);

    // Out-of-range arguments and a key that does not exist: typed errors.
    let mut s = greeted(&d);
    s.write_all(&frame(60, Request::GenerateRandom { len: u32::MAX })).expect("write");
    expect_error(&mut s, 60, ErrorCode::InvalidRequest);
    s.write_all(&frame(
        61,
        Request::Decrypt { key: "ghost".into(), ciphertext: vec![1; 40], aad: None },
    ))
    .expect("write");
    expect_error(&mut s, 61, ErrorCode::KeyNotFound);
    s.write_all(&frame(62, Request::Hello { version: 1, client_name: "again".into() }))
        .expect("write");
    expect_error(&mut s, 62, ErrorCode::InvalidRequest);

    // An answer that would exceed the frame limit is refused with a typed error.
    s.write_all(&frame(63, Request::GenerateRandom { len: 100_000 })).expect("write");
    expect_error(&mut s, 63, ErrorCode::FrameTooLarge);
    s.write_all(&frame(64, Request::Ping)).expect("write");
    assert!(matches!(
        read_frame(&mut s),
        Some(ResponseFrame { id: 64, result: Ok(Response::Pong) })
    ));

    // A connection that never says anything (the daemon drops it after a 10 s handshake
    // timeout) does not block anyone meanwhile.
    let _silent = raw(&d);
    bystander_works(&bystander);

    // Random garbage from many connections at once.
    let mut seed = 0x9e3779b97f4a7c15u64;
    for _ in 0..50 {
        let mut s = raw(&d);
        let mut junk = vec![0u8; 300];
        for b in &mut junk {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            *b = seed as u8;
        }
        let _ = s.write_all(&junk);
    }
    bystander_works(&bystander);
    assert!(d.is_running(), "the daemon survived");
    let health = bystander.health_check().expect("health");
    assert!(health.token_reachable);
}

#[test]
fn pipelined_answers_come_back_out_of_order() {
    let d = Daemon::start();
    let mut s = greeted(&d);
    // A key generation (fsync on the session thread) then a ping (answered at once on
    // the I/O thread), in one write: the ping's answer overtakes.
    let mut both = frame(2, Request::GenerateKey { label: "slow".into(), size_bits: 256 });
    both.extend_from_slice(&frame(3, Request::Ping));
    s.write_all(&both).expect("write");
    let first = read_frame(&mut s).expect("first answer");
    let second = read_frame(&mut s).expect("second answer");
    assert_eq!((first.id, second.id), (3, 2), "ping should overtake the key generation");
    assert!(matches!(second.result, Ok(Response::KeyGenerated(_))));
}

#[test]
fn over_the_connection_limit_a_client_is_told_busy() {
    let d = Daemon::start_with("max_connections = 2");
    let _a = BlockingClient::connect(&d.socket).expect("first");
    let _b = BlockingClient::connect(&d.socket).expect("second");
    let err = BlockingClient::connect(&d.socket).expect_err("third is refused");
    assert!(matches!(err, Error::Busy(ref m) if m.contains("too many connections")), "{err:?}");
}

#[test]
fn secrets_never_reach_the_logs() {
    let d = Daemon::start();
    let c = BlockingClient::connect(&d.socket).expect("connect");
    c.generate_key("k", 256).expect("keygen");
    let secret = b"PLAINTEXT-CANARY-31337";
    let ct = c.encrypt("k", secret, Some(b"AAD-CANARY")).expect("encrypt");
    c.decrypt("k", &ct, Some(b"AAD-CANARY")).expect("decrypt");
    let _ = c.decrypt("k", &ct, Some(b"wrong"));
    drop(c);
    let output = d.stop_and_collect_output();
    assert!(output.contains("ready"), "the log was captured: {output}");
    for canary in ["PLAINTEXT-CANARY", common::PIN] {
        assert!(!output.contains(canary), "{canary} leaked into the daemon output:\n{output}");
    }
}
