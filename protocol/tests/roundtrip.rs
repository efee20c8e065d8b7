//! Property tests: every message survives the codec both ways, and no byte string can make
//! the decoder panic.

use bytes::BytesMut;
use harpocrates_protocol::*;
use proptest::prelude::*;
use tokio_util::codec::{Decoder, Encoder};

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..max)
}

fn attrs() -> impl Strategy<Value = KeyAttributes> {
    (any::<u32>(), any::<[bool; 6]>()).prop_map(|(size_bits, b)| KeyAttributes {
        size_bits,
        extractable: b[0],
        sensitive: b[1],
        encrypt: b[2],
        decrypt: b[3],
        wrap: b[4],
        unwrap: b[5],
    })
}

fn leaf_request() -> impl Strategy<Value = Request> {
    prop_oneof![
        (any::<u32>(), ".{0,20}")
            .prop_map(|(version, client_name)| Request::Hello { version, client_name }),
        Just(Request::Ping),
        any::<u32>().prop_map(|len| Request::GenerateRandom { len }),
        (".{0,20}", any::<u32>())
            .prop_map(|(label, size_bits)| Request::GenerateKey { label, size_bits }),
        (".{0,20}", attrs()).prop_map(|(label, attributes)| {
            Request::GenerateKeyWithAttributes { label, attributes }
        }),
        Just(Request::ListKeys),
        (".{0,20}", bytes(300), prop::option::of(bytes(40))).prop_map(|(k, p, aad)| {
            Request::Encrypt { key: k.into(), plaintext: p.into(), aad }
        }),
        (".{0,20}", bytes(300), prop::option::of(bytes(40)))
            .prop_map(|(k, c, aad)| { Request::Decrypt { key: k.into(), ciphertext: c, aad } }),
        ".{0,20}".prop_map(|k| Request::DestroyKey { key: k.into() }),
        Just(Request::SupportsKeyBackup),
        Just(Request::HealthCheck),
        Just(Request::GetMetrics),
        (".{0,20}", bytes(40))
            .prop_map(|(k, p)| Request::BackupKey { key: k.into(), password: p.into() }),
        (".{0,20}", bytes(200), bytes(40)).prop_map(|(label, backup, p)| {
            Request::RestoreKey { label, backup, password: p.into() }
        }),
        ".{0,20}".prop_map(|name| Request::GenerateKek { name }),
        Just(Request::ListKeks),
        Just(Request::Reload),
        (".{0,20}", bytes(40), any::<u32>())
            .prop_map(|(kek, context, len)| Request::DeriveDataKey { kek, context, len }),
        ".{0,20}".prop_map(|kek| Request::GenerateDataKey { kek }),
        bytes(80).prop_map(|wrapped| Request::UnwrapDataKey { wrapped }),
        (".{0,20}", bytes(40), bytes(200), prop::option::of(bytes(20))).prop_map(
            |(kek, context, p, aad)| Request::EnvelopeEncrypt {
                kek,
                context,
                plaintext: p.into(),
                aad
            }
        ),
        (bytes(40), bytes(200), prop::option::of(bytes(20))).prop_map(
            |(context, ciphertext, aad)| Request::EnvelopeDecrypt { context, ciphertext, aad }
        ),
        (bytes(40), bytes(200), prop::option::of(bytes(20)))
            .prop_map(|(context, ciphertext, aad)| Request::Rewrap { context, ciphertext, aad }),
        (".{0,20}", 0usize..5).prop_map(|(kek, i)| Request::Rotation {
            kek,
            step: [
                RotationStep::Prepare,
                RotationStep::Validate,
                RotationStep::Commit,
                RotationStep::Rollback,
                RotationStep::Status
            ][i],
        }),
        (".{0,20}", any::<u32>(), any::<bool>()).prop_map(|(kek, version, destroy)| {
            Request::RetireKekVersion { kek, version, destroy }
        }),
    ]
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        4 => leaf_request(),
        1 => prop::collection::vec(leaf_request(), 0..8).prop_map(Request::Batch),
    ]
}

fn key_info() -> impl Strategy<Value = KeyInfo> {
    (".{0,20}", attrs(), bytes(16), any::<bool>()).prop_map(|(name, attributes, id, hmac)| {
        KeyInfo {
            handle: name.into(),
            algorithm: if hmac { KeyAlgorithm::GenericSecret } else { KeyAlgorithm::Aes },
            attributes,
            id,
        }
    })
}

fn kek_info() -> impl Strategy<Value = KekInfo> {
    let states = [
        KekVersionState::Active,
        KekVersionState::Pending,
        KekVersionState::DecryptOnly,
        KekVersionState::Retired,
        KekVersionState::Destroyed,
    ];
    (
        ".{0,20}",
        any::<u32>(),
        prop::option::of(any::<u32>()),
        any::<bool>(),
        prop::collection::vec((any::<u32>(), 0usize..5), 0..5),
    )
        .prop_map(move |(name, active_version, pending_version, pending_validated, vs)| {
            KekInfo {
                name,
                active_version,
                pending_version,
                pending_validated,
                versions: vs
                    .into_iter()
                    .map(|(version, i)| KekVersionInfo { version, state: states[i] })
                    .collect(),
            }
        })
}

fn wire_error() -> impl Strategy<Value = WireError> {
    (1u16..20, ".{0,30}").prop_map(|(c, m)| WireError::new(ErrorCode::from_u16(c), m))
}

fn leaf_response() -> impl Strategy<Value = Response> {
    let health = (".{0,10}", any::<bool>(), any::<u32>(), any::<u32>(), any::<u64>()).prop_map(
        |(backend, reachable, active, max, keys)| {
            Response::Health(HealthStatus {
                state: if reachable { HealthState::Healthy } else { HealthState::Unhealthy },
                backend,
                token: TokenInfo::default(),
                token_reachable: reachable,
                active_sessions: active,
                max_sessions: max,
                key_count: keys,
                uptime_secs: keys / 3,
                generation: u64::from(max),
                generation_since: keys / 5,
            })
        },
    );
    let metrics = (any::<u64>(), any::<u64>(), 0.0f64..1e9).prop_map(|(ops, errs, rate)| {
        Response::Metrics(Box::new(MetricsSnapshot {
            uptime_secs: 1,
            ops_total: ops,
            errors_total: errs,
            ops_per_sec: rate,
            avg_latency_us: rate / 7.0,
            error_rate: 0.5,
            connections: 3,
            per_op: vec![OpMetrics {
                op: "encrypt".into(),
                count: ops,
                errors: errs,
                avg_latency_us: rate,
                latency: LatencySummary {
                    sum_ns: ops,
                    window_count: errs,
                    p50_ns: 1,
                    p90_ns: 2,
                    p99_ns: 3,
                    max_ns: u64::MAX,
                },
            }],
            audit_records: ops,
            audit_dropped: errs,
            audit_failed: 1,
            errors_by_code: vec![
                ErrorCount { code: ErrorCode::Busy, count: errs },
                ErrorCount { code: ErrorCode::Unknown(999), count: 1 },
            ],
            pool: PoolGauges {
                sessions_busy: 1,
                sessions_open: 2,
                sessions_max: 3,
                queue_depth: ops,
                queue_capacity: 1024,
            },
            connections_total: ops,
            connections_refused: errs,
            dek_cache_hits: 5,
            dek_cache_misses: 6,
            reloads_ok: 7,
            reloads_failed: 8,
            backend_swaps: 9,
            backend_generation: 10,
        }))
    });
    prop_oneof![
        (any::<u32>(), ".{0,10}", ".{0,10}", any::<u32>()).prop_map(
            |(version, daemon_version, backend, max_frame)| Response::Hello {
                version,
                daemon_version,
                backend,
                max_frame,
            }
        ),
        Just(Response::Pong),
        bytes(64).prop_map(|b| Response::Random(b.into())),
        key_info().prop_map(Response::KeyGenerated),
        prop::collection::vec(key_info(), 0..5).prop_map(Response::Keys),
        bytes(300).prop_map(Response::Ciphertext),
        bytes(300).prop_map(|b| Response::Plaintext(b.into())),
        Just(Response::KeyDestroyed),
        any::<bool>().prop_map(Response::BackupSupported),
        bytes(200).prop_map(Response::KeyBackup),
        kek_info().prop_map(Response::Kek),
        prop::collection::vec(kek_info(), 0..4).prop_map(Response::Keks),
        (bytes(64), ".{0,20}", any::<u32>(), prop::option::of(bytes(80))).prop_map(
            |(dek, name, version, wrapped)| Response::DataKey(DataKey {
                dek: dek.into(),
                kek: KekId { name, version },
                wrapped,
            })
        ),
        health,
        metrics,
    ]
}

fn result() -> impl Strategy<Value = WireResult> {
    prop_oneof![leaf_response().prop_map(Ok), wire_error().prop_map(Err)]
}

fn response() -> impl Strategy<Value = WireResult> {
    prop_oneof![
        4 => result(),
        1 => prop::collection::vec(result(), 0..8).prop_map(|v| Ok(Response::Batch(v))),
    ]
}

proptest! {
    #[test]
    fn every_request_round_trips(id in any::<u64>(), request in request()) {
        let frame = RequestFrame { id, request };
        let mut buf = BytesMut::new();
        MessageCodec::<ResponseFrame, RequestFrame>::default().encode(frame.clone(), &mut buf).unwrap();
        let got = MessageCodec::<RequestFrame, ResponseFrame>::default().decode(&mut buf).unwrap();
        prop_assert_eq!(got, Some(Ok(frame)));
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn every_response_round_trips(id in any::<u64>(), result in response()) {
        let frame = ResponseFrame { id, result };
        let mut buf = BytesMut::new();
        MessageCodec::<RequestFrame, ResponseFrame>::default().encode(frame.clone(), &mut buf).unwrap();
        let got = MessageCodec::<ResponseFrame, RequestFrame>::default().decode(&mut buf).unwrap();
        prop_assert_eq!(got, Some(Ok(frame)));
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_decoder(data in bytes(4096), max in 0u32..8192) {
        let mut buf = BytesMut::from(&data[..]);
        let mut codec = MessageCodec::<RequestFrame, ResponseFrame>::new(max);
        // Drain every frame the bytes hold; each step must either make progress or stop.
        loop {
            let before = buf.len();
            match codec.decode(&mut buf) {
                Ok(Some(_)) => prop_assert!(buf.len() < before),
                Ok(None) | Err(_) => break,
            }
        }
    }

    #[test]
    fn arbitrary_bodies_never_panic_either_side(body in bytes(2048)) {
        let _ = codec::decode_body::<RequestFrame>(&body);
        let _ = codec::decode_body::<ResponseFrame>(&body);
    }

    #[test]
    fn a_mangled_valid_frame_is_an_error_or_a_frame(
        id in any::<u64>(), request in request(), flip in any::<(usize, u8)>()
    ) {
        let body = bincode::serde::encode_to_vec(RequestFrame { id, request }, bincode_config()).unwrap();
        let mut body = body;
        let at = flip.0 % body.len();
        body[at] ^= flip.1 | 1;
        let _ = codec::decode_body::<RequestFrame>(&body);
    }
}
