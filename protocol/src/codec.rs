//! Framing: a `u32` big-endian length, then a bincode body.
//!
//! [`MessageCodec`] is a tokio-util [`Decoder`]/[`Encoder`] pair used by both ends. It
//! separates two kinds of bad input:
//!
//! * a **body** that does not decode ([`BodyError`]) leaves the stream in step — the
//!   length said where the frame ends — so the decoder yields it as an item and the
//!   reader may answer with a typed error and carry on;
//! * a **length** above the limit ([`FrameError::TooLarge`]) cannot be skipped safely, so
//!   it is fatal for the connection. It is refused before anything is allocated for it.

use std::marker::PhantomData;

use bytes::{Buf, BufMut, BytesMut};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_util::codec::{Decoder, Encoder};
use zeroize::Zeroize;

use crate::{DEFAULT_MAX_FRAME, MAX_FRAME_CEILING};

const LEN_PREFIX: usize = 4;

/// How much of a frame's body is reserved up front; the rest grows as bytes arrive, so a
/// peer that only *claims* a large frame costs at most this much. Large enough that a
/// typical batch frame arrives in a few big reads rather than many small ones.
const MAX_EAGER_RESERVE: usize = 1024 * 1024;

/// How much a writer buffers before it must flush: batch frames go out in few large
/// writes (each write wakes the reader).
pub const WRITE_BUFFER: usize = 1024 * 1024;

/// The bincode configuration of every body: varint integers, and an allocation limit so a
/// forged length inside a body can never ask for more than [`MAX_FRAME_CEILING`].
pub fn bincode_config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<{ MAX_FRAME_CEILING as usize }>()
}

/// A frame that ended the connection.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The length prefix (or an outgoing message) exceeds the limit.
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    TooLarge {
        /// The claimed or encoded length.
        len: u64,
        /// The limit in force.
        max: u32,
    },
    /// An outgoing message could not be encoded.
    #[error("message could not be encoded: {0}")]
    Encode(String),
    /// The transport failed.
    #[error("transport error: {0}")]
    Io(#[from] std::io::Error),
}

/// A frame whose body did not decode. The stream is still in step.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("undecodable frame body ({len} bytes): {reason}")]
pub struct BodyError {
    /// The request id, when the body was readable far enough to hold one.
    pub id: Option<u64>,
    /// The body's length.
    pub len: usize,
    /// What the decoder said.
    pub reason: String,
}

/// Encodes `Out` messages and decodes `In` messages, sharing one frame limit.
///
/// The daemon uses `MessageCodec<RequestFrame, ResponseFrame>`, a client the reverse.
pub struct MessageCodec<In, Out> {
    max_frame: u32,
    _types: PhantomData<fn(Out) -> In>,
}

impl<In, Out> MessageCodec<In, Out> {
    /// A codec refusing bodies over `max_frame` bytes (clamped to
    /// [`MAX_FRAME_CEILING`]).
    pub fn new(max_frame: u32) -> Self {
        Self { max_frame: max_frame.min(MAX_FRAME_CEILING), _types: PhantomData }
    }

    /// The limit in force.
    pub fn max_frame(&self) -> u32 {
        self.max_frame
    }
}

impl<In, Out> Default for MessageCodec<In, Out> {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_FRAME)
    }
}

impl<In, Out> std::fmt::Debug for MessageCodec<In, Out> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageCodec").field("max_frame", &self.max_frame).finish()
    }
}

impl<In: DeserializeOwned, Out> Decoder for MessageCodec<In, Out> {
    type Item = Result<In, BodyError>;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Self::Item>, FrameError> {
        if src.len() < LEN_PREFIX {
            return Ok(None);
        }
        let len = u32::from_be_bytes([src[0], src[1], src[2], src[3]]);
        if len > self.max_frame {
            return Err(FrameError::TooLarge { len: len.into(), max: self.max_frame });
        }
        let len = len as usize;
        if src.len() < LEN_PREFIX + len {
            src.reserve((LEN_PREFIX + len - src.len()).min(MAX_EAGER_RESERVE));
            return Ok(None);
        }
        src.advance(LEN_PREFIX);
        let mut body = src.split_to(len);
        let item = decode_body(&body);
        // Bodies carry plaintext and key material: wipe the transport copy.
        body.as_mut().zeroize();
        Ok(Some(item))
    }
}

/// Decodes one body, insisting that it is consumed exactly.
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, BodyError> {
    let fail = |reason: String| BodyError {
        // Every frame starts with its id, so it is often readable even when the rest is not.
        id: bincode::serde::decode_from_slice::<u64, _>(body, bincode_config())
            .ok()
            .map(|(id, _)| id),
        len: body.len(),
        reason,
    };
    match bincode::serde::decode_from_slice::<T, _>(body, bincode_config()) {
        Ok((value, used)) if used == body.len() => Ok(value),
        Ok((_, used)) => Err(fail(format!("{} trailing bytes", body.len() - used))),
        Err(e) => Err(fail(e.to_string())),
    }
}

impl<In, Out: Serialize> Encoder<Out> for MessageCodec<In, Out> {
    type Error = FrameError;

    fn encode(&mut self, item: Out, dst: &mut BytesMut) -> Result<(), FrameError> {
        let start = dst.len();
        dst.put_u32(0);
        let encoded = bincode::serde::encode_into_std_write(
            &item,
            &mut (&mut *dst).writer(),
            bincode_config(),
        );
        let len = match encoded {
            Ok(len) => len,
            Err(e) => {
                dst.truncate(start);
                return Err(FrameError::Encode(e.to_string()));
            }
        };
        if len > self.max_frame as usize {
            dst[start..].zeroize();
            dst.truncate(start);
            return Err(FrameError::TooLarge { len: len as u64, max: self.max_frame });
        }
        dst[start..start + LEN_PREFIX].copy_from_slice(&(len as u32).to_be_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Request, RequestFrame, Response, ResponseFrame};

    type ServerCodec = MessageCodec<RequestFrame, ResponseFrame>;
    type ClientCodec = MessageCodec<ResponseFrame, RequestFrame>;

    #[test]
    fn request_round_trips_through_both_ends() {
        let frame = RequestFrame { id: 7, request: Request::GenerateRandom { len: 32 } };
        let mut buf = BytesMut::new();
        ClientCodec::default().encode(frame.clone(), &mut buf).expect("encode");
        let got = ServerCodec::default().decode(&mut buf).expect("decode").expect("whole frame");
        assert_eq!(got, Ok(frame));
        assert!(buf.is_empty());
    }

    #[test]
    fn partial_frame_waits_for_more_bytes() {
        let mut buf = BytesMut::new();
        ClientCodec::default()
            .encode(RequestFrame { id: 1, request: Request::Ping }, &mut buf)
            .expect("encode");
        let whole = buf.clone();
        let mut codec = ServerCodec::default();
        for cut in 0..whole.len() {
            let mut part = BytesMut::from(&whole[..cut]);
            assert!(codec.decode(&mut part).expect("no error").is_none(), "cut at {cut}");
        }
    }

    #[test]
    fn oversized_length_is_refused_before_allocation() {
        let mut buf = BytesMut::from(&u32::MAX.to_be_bytes()[..]);
        let cap = buf.capacity();
        let err = ServerCodec::new(1024).decode(&mut buf).expect_err("must refuse");
        assert!(
            matches!(err, FrameError::TooLarge { len, max: 1024 } if len == u64::from(u32::MAX))
        );
        assert_eq!(buf.capacity(), cap, "nothing may be reserved for a refused frame");
    }

    #[test]
    fn garbage_body_keeps_the_stream_in_step() {
        let mut buf = BytesMut::new();
        buf.put_u32(3);
        buf.put_slice(&[0x05, 0xff, 0xff]); // id 5, then an impossible variant
        ClientCodec::default()
            .encode(RequestFrame { id: 6, request: Request::Ping }, &mut buf)
            .expect("encode");
        let mut codec = ServerCodec::default();
        let bad = codec.decode(&mut buf).expect("not fatal").expect("a frame");
        let err = bad.expect_err("garbage");
        assert_eq!(err.id, Some(5));
        let good = codec.decode(&mut buf).expect("not fatal").expect("a frame");
        assert_eq!(good, Ok(RequestFrame { id: 6, request: Request::Ping }));
    }

    #[test]
    fn trailing_bytes_are_an_error() {
        let mut body = bincode::serde::encode_to_vec(
            RequestFrame { id: 9, request: Request::Ping },
            bincode_config(),
        )
        .expect("encode");
        body.push(0);
        let err = decode_body::<RequestFrame>(&body).expect_err("trailing byte");
        assert_eq!(err.id, Some(9));
    }

    #[test]
    fn forged_inner_length_does_not_allocate_it() {
        // Encrypt { key: "", plaintext: <claims 2^40 bytes> }: must fail fast, not OOM.
        let mut body = vec![
            1,    // id
            6,    // Request::Encrypt
            0,    // key ""
            0xfd, // plaintext length: a varint u64 follows
        ];
        body.extend_from_slice(&(1u64 << 40).to_le_bytes());
        let err = decode_body::<RequestFrame>(&body).expect_err("forged length");
        assert_eq!(err.id, Some(1));
    }

    #[test]
    fn outgoing_message_over_the_limit_is_refused_and_leaves_no_partial_frame() {
        let frame = ResponseFrame { id: 1, result: Ok(Response::Ciphertext(vec![0; 2048])) };
        let mut buf = BytesMut::from(&b"xx"[..]);
        let err = MessageCodec::<RequestFrame, ResponseFrame>::new(1024)
            .encode(frame, &mut buf)
            .expect_err("too large");
        assert!(matches!(err, FrameError::TooLarge { .. }));
        assert_eq!(&buf[..], b"xx");
    }
}
