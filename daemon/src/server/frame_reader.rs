//! Reading request frames with deadlines and a byte budget.
//!
//! Frames are read by hand rather than through a `FramedRead` so that the daemon decides
//! when memory is committed: the 4-byte length is read first, the frame is charged to the
//! connection's [budget](super::budget) (waiting there is back-pressure, not buffering),
//! and only then is its body read. Once a frame's first byte has arrived, the rest must
//! follow within the frame deadline, so a peer that trickles bytes cannot hold a
//! connection and its buffers for ever.
//!
//! The socket is read into one buffer per connection ([`READ_BUFFER`], many small frames
//! per system call). A frame that fits in it is decoded where it lies, and its bytes are
//! wiped there as soon as it is decoded: a request body is not copied out of the read
//! buffer first, and no memory is allocated for it. Only a frame larger than the buffer
//! gets a buffer of its own (zeroizing), read straight from the socket.

use std::time::Duration;

use harpocrates_protocol::{BodyError, RequestFrame, codec::decode_body};
use tokio::io::AsyncReadExt;
use tokio::net::unix::OwnedReadHalf;
use zeroize::{Zeroize, Zeroizing};

use super::budget::{Charge, ConnectionBudget};

/// The read buffer: bytes read from the socket per system call when frames are small,
/// and the largest frame decoded in place.
const READ_BUFFER: usize = 64 * 1024;

/// The length prefix.
const LEN: usize = 4;

/// Why no frame could be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The peer closed the connection between frames.
    #[error("connection closed")]
    Closed,
    /// The length prefix is over the limit; the stream cannot be resynchronised.
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    TooLarge {
        /// The claimed length.
        len: u64,
        /// The limit.
        max: u32,
    },
    /// A started frame did not complete in time.
    #[error("frame not completed within {0:?}")]
    Deadline(Duration),
    /// The transport failed (including a disconnect in the middle of a frame).
    #[error("transport error: {0}")]
    Io(#[from] std::io::Error),
}

/// A decoded (or undecodable) request, with the bytes it is charged.
pub struct Incoming {
    /// The frame, or why its body did not decode (the stream is still in step).
    pub frame: Result<RequestFrame, BodyError>,
    /// Held until the answer has been written.
    pub charge: Charge,
}

/// Reads request frames from one connection.
pub struct FrameReader {
    read: OwnedReadHalf,
    /// Bytes read but not yet consumed are `buf[start..end]`; consumed bytes are zero.
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    max_frame: u32,
    deadline: Duration,
}

impl Drop for FrameReader {
    fn drop(&mut self) {
        // Unconsumed bytes may be the start of a request that never completed. The rest is
        // zero already (and mostly never touched: wiping all of it would cost every
        // closing connection 64 KiB of writes and page faults).
        self.buf[self.start..self.end].zeroize();
    }
}

impl FrameReader {
    /// A reader refusing frames over `max_frame` and giving each started frame `deadline`.
    pub fn new(read: OwnedReadHalf, max_frame: u32, deadline: Duration) -> Self {
        Self {
            read,
            buf: vec![0u8; READ_BUFFER].into_boxed_slice(),
            start: 0,
            end: 0,
            max_frame,
            deadline,
        }
    }

    /// Waits for the first byte of the next frame; `false` when the peer closed cleanly.
    /// Cancel-safe: nothing is consumed.
    pub async fn wait_for_frame(&mut self) -> std::io::Result<bool> {
        if self.start < self.end {
            return Ok(true);
        }
        (self.start, self.end) = (0, 0);
        let n = self.read.read(&mut self.buf).await?;
        self.end = n;
        Ok(n > 0)
    }

    /// Reads one whole frame: its length (within the deadline), its charge (waiting for
    /// budget as long as it takes), then its body (within a fresh deadline).
    pub async fn read_frame(&mut self, budget: &ConnectionBudget) -> Result<Incoming, ReadError> {
        let deadline = self.deadline;
        match tokio::time::timeout(deadline, self.fill_to(LEN)).await {
            Err(_) => return Err(ReadError::Deadline(deadline)),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Err(ReadError::Closed);
            }
            Ok(r) => r?,
        };
        let prefix = &mut self.buf[self.start..self.start + LEN];
        let len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]);
        prefix.zeroize();
        self.start += LEN;
        if len > self.max_frame {
            return Err(ReadError::TooLarge { len: len.into(), max: self.max_frame });
        }
        let len = len as usize;
        let charge = budget.charge(len + LEN).await.ok_or(ReadError::Closed)?;
        if len <= self.buf.len() {
            match tokio::time::timeout(deadline, self.fill_to(len)).await {
                Err(_) => return Err(ReadError::Deadline(deadline)),
                Ok(r) => r?,
            };
            let body = &mut self.buf[self.start..self.start + len];
            let frame = decode_body(body);
            // The body holds plaintexts and passwords: wipe it where it was read.
            body.zeroize();
            self.start += len;
            return Ok(Incoming { frame, charge });
        }
        // Larger than the read buffer: what has arrived moves to a buffer of the frame's
        // size, the rest is read straight into it.
        let mut body = Zeroizing::new(vec![0u8; len]);
        let have = self.end - self.start;
        body[..have].copy_from_slice(&self.buf[self.start..self.end]);
        self.buf[self.start..self.end].zeroize();
        (self.start, self.end) = (0, 0);
        match tokio::time::timeout(deadline, self.read.read_exact(&mut body[have..])).await {
            Err(_) => return Err(ReadError::Deadline(deadline)),
            Ok(r) => r?,
        };
        Ok(Incoming { frame: decode_body(&body), charge })
    }

    /// Reads until at least `n` (at most the buffer's size) unconsumed bytes are buffered.
    async fn fill_to(&mut self, n: usize) -> std::io::Result<()> {
        debug_assert!(n <= self.buf.len());
        if self.end - self.start >= n {
            return Ok(());
        }
        if self.start + n > self.buf.len() {
            self.compact();
        }
        while self.end - self.start < n {
            let got = self.read.read(&mut self.buf[self.end..]).await?;
            if got == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            self.end += got;
        }
        Ok(())
    }

    /// Moves the unconsumed bytes to the front of the buffer, wiping where they were.
    fn compact(&mut self) {
        let unread = self.end - self.start;
        self.buf.copy_within(self.start..self.end, 0);
        self.buf[unread..self.end].zeroize();
        (self.start, self.end) = (0, unread);
    }
}

#[cfg(test)]
mod tests {
    use harpocrates_protocol::{MessageCodec, Request, ResponseFrame, SecretBytes};
    use tokio::io::AsyncWriteExt;
    use tokio_util::codec::Encoder;

    use super::super::budget::TotalBudget;
    use super::*;

    fn frame(id: u64, payload: usize) -> Vec<u8> {
        let request = if payload == 0 {
            Request::Ping
        } else {
            Request::EnvelopeEncrypt {
                kek: "k".into(),
                context: b"ctx".to_vec(),
                plaintext: SecretBytes::new(vec![id as u8; payload]),
                aad: None,
            }
        };
        let mut buf = tokio_util::bytes::BytesMut::new();
        MessageCodec::<ResponseFrame, RequestFrame>::new(64 << 20)
            .encode(RequestFrame { id, request }, &mut buf)
            .expect("encode");
        buf.to_vec()
    }

    /// Frames of every size, written in pieces that never line up with frame or buffer
    /// boundaries, come out whole and in order.
    #[test]
    fn frames_straddling_the_buffer_and_larger_than_it_are_read_whole() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
        rt.block_on(async {
            let sizes = [0, 4096, 60_000, 4096, READ_BUFFER, 3 * READ_BUFFER + 7, 1, 4096, 0];
            let frames: Vec<Vec<u8>> =
                sizes.iter().enumerate().map(|(i, &n)| frame(i as u64, n)).collect();
            let wire: Vec<u8> = frames.concat();
            let (ours, mut theirs) = tokio::net::UnixStream::pair().expect("pair");
            let writer = tokio::spawn(async move {
                for piece in wire.chunks(5000) {
                    theirs.write_all(piece).await.expect("write");
                    tokio::task::yield_now().await;
                }
            });
            let (read, _write) = ours.into_split();
            let mut reader = FrameReader::new(read, 64 << 20, Duration::from_secs(5));
            let budget = ConnectionBudget::new(1 << 30, 0, TotalBudget::new(1 << 30));
            for (i, &n) in sizes.iter().enumerate() {
                assert!(reader.wait_for_frame().await.expect("wait"), "frame {i}");
                let got = reader.read_frame(&budget).await.expect("frame").frame.expect("decodes");
                assert_eq!(got.id, i as u64);
                match got.request {
                    Request::Ping => assert_eq!(n, 0),
                    Request::EnvelopeEncrypt { plaintext, .. } => {
                        assert_eq!(plaintext.expose(), vec![i as u8; n].as_slice(), "frame {i}");
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
            writer.await.expect("writer");
            assert!(!reader.wait_for_frame().await.expect("eof"), "clean end");
        });
    }

    #[test]
    fn read_bytes_are_wiped_once_decoded() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
        rt.block_on(async {
            let (ours, mut theirs) = tokio::net::UnixStream::pair().expect("pair");
            theirs.write_all(&[frame(1, 4096), frame(2, 0)].concat()).await.expect("write");
            let (read, _write) = ours.into_split();
            let mut reader = FrameReader::new(read, 1 << 20, Duration::from_secs(5));
            let budget = ConnectionBudget::new(1 << 20, 0, TotalBudget::new(1 << 20));
            assert!(reader.wait_for_frame().await.expect("wait"));
            reader.read_frame(&budget).await.expect("frame").frame.expect("decodes");
            let (start, end) = (reader.start, reader.end);
            assert!(end > start, "the second frame is still buffered");
            let outside = reader.buf[..start].iter().chain(&reader.buf[end..]);
            assert!(outside.into_iter().all(|&b| b == 0), "only unconsumed bytes are kept");
        });
    }
}
