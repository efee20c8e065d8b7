//! Feeds arbitrary bytes to the daemon's frame + message decoder (and the client's), in
//! arbitrary chunks, as a socket would deliver them. Nothing may panic, and every frame
//! decoded must consume input.

#![no_main]

use bytes::BytesMut;
use harpocrates_protocol::{MessageCodec, RequestFrame, ResponseFrame};
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;

fn drain<C: Decoder>(codec: &mut C, data: &[u8], chunk: usize) {
    let mut buf = BytesMut::new();
    for piece in data.chunks(chunk.max(1)) {
        buf.extend_from_slice(piece);
        loop {
            let before = buf.len();
            match codec.decode(&mut buf) {
                Ok(Some(_)) => assert!(buf.len() < before, "a frame must consume input"),
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
    drain(&mut MessageCodec::<RequestFrame, ResponseFrame>::new(max_frame), rest, chunk);
    drain(&mut MessageCodec::<ResponseFrame, RequestFrame>::new(max_frame), rest, chunk);
});
