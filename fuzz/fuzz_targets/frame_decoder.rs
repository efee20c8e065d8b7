//! Feeds arbitrary bytes to the daemon's frame + message decoder (and the client's), in
//! arbitrary chunks, as a socket would deliver them. Nothing may panic, every frame
//! decoded must consume input, and a decoded message re-encodes to a fixed point (bytes
//! are compared, not values: metrics carry floats, and NaN != NaN).

#![no_main]

use bytes::BytesMut;
use harpocrates_protocol::{MessageCodec, RequestFrame, ResponseFrame};
use libfuzzer_sys::fuzz_target;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_util::codec::{Decoder, Encoder};

/// Encodes with the opposite end's codec, decodes, encodes again: both encodings agree.
fn reencodes<In: DeserializeOwned + Serialize>(msg: In) {
    let mut first = BytesMut::new();
    if MessageCodec::<(), In>::new(u32::MAX).encode(msg, &mut first).is_err() {
        return; // Re-encoded above the ceiling: the daemon would refuse to send it.
    }
    let mut buf = first.clone();
    let again = MessageCodec::<In, ()>::new(u32::MAX)
        .decode(&mut buf)
        .expect("own frame length")
        .expect("whole frame")
        .expect("own encoding decodes");
    assert!(buf.is_empty());
    let mut second = BytesMut::new();
    MessageCodec::<(), In>::new(u32::MAX).encode(again, &mut second).expect("encodes again");
    assert_eq!(first, second);
}

fn drain<In: DeserializeOwned + Serialize>(data: &[u8], max_frame: u32, chunk: usize) {
    let mut codec = MessageCodec::<In, ()>::new(max_frame);
    let mut buf = BytesMut::new();
    for piece in data.chunks(chunk.max(1)) {
        buf.extend_from_slice(piece);
        loop {
            let before = buf.len();
            match codec.decode(&mut buf) {
                Ok(Some(item)) => {
                    assert!(buf.len() < before, "a frame must consume input");
                    if let Ok(msg) = item {
                        reencodes(msg);
                    }
                }
                Ok(None) => break,
                Err(_) => return, // fatal for the connection, as in the daemon
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&knobs, rest)) = data.split_first() else { return };
    // Small limits reach the too-large path; chunking exercises partial frames.
    let max_frame = 64u32 << (knobs & 0x0f);
    let chunk = 1 + usize::from(knobs >> 4) * 7;
    drain::<RequestFrame>(rest, max_frame, chunk);
    drain::<ResponseFrame>(rest, max_frame, chunk);
});
