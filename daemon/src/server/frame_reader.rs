//! Reading request frames with deadlines and a byte budget.
//!
//! Frames are read by hand rather than through a `FramedRead` so that the daemon decides
//! when memory is committed: the 4-byte length is read first, the frame is charged to the
//! connection's [budget](super::budget) (waiting there is back-pressure, not buffering),
//! and only then is its body read. Once a frame's first byte has arrived, the rest must
//! follow within the frame deadline, so a peer that trickles bytes cannot hold a
//! connection and its buffers for ever.

use std::time::Duration;

use harpocrates_protocol::{BodyError, RequestFrame, codec::decode_body};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::net::unix::OwnedReadHalf;
use zeroize::Zeroizing;

use super::budget::{Charge, ConnectionBudget};

/// Bytes read from the socket per system call when frames are small.
const READ_BUFFER: usize = 64 * 1024;

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
    inner: BufReader<OwnedReadHalf>,
    max_frame: u32,
    deadline: Duration,
}

impl FrameReader {
    /// A reader refusing frames over `max_frame` and giving each started frame `deadline`.
    pub fn new(read: OwnedReadHalf, max_frame: u32, deadline: Duration) -> Self {
        Self { inner: BufReader::with_capacity(READ_BUFFER, read), max_frame, deadline }
    }

    /// Waits for the first byte of the next frame; `false` when the peer closed cleanly.
    /// Cancel-safe: nothing is consumed.
    pub async fn wait_for_frame(&mut self) -> std::io::Result<bool> {
        Ok(!self.inner.fill_buf().await?.is_empty())
    }

    /// Reads one whole frame: its length (within the deadline), its charge (waiting for
    /// budget as long as it takes), then its body (within a fresh deadline).
    pub async fn read_frame(&mut self, budget: &ConnectionBudget) -> Result<Incoming, ReadError> {
        let deadline = self.deadline;
        let mut len = [0u8; 4];
        match tokio::time::timeout(deadline, self.inner.read_exact(&mut len)).await {
            Err(_) => return Err(ReadError::Deadline(deadline)),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Err(ReadError::Closed);
            }
            Ok(r) => r?,
        };
        let len = u32::from_be_bytes(len);
        if len > self.max_frame {
            return Err(ReadError::TooLarge { len: len.into(), max: self.max_frame });
        }
        let len = len as usize;
        let charge = budget.charge(len + 4).await.ok_or(ReadError::Closed)?;
        let mut body = Zeroizing::new(vec![0u8; len]);
        match tokio::time::timeout(deadline, self.inner.read_exact(&mut body)).await {
            Err(_) => return Err(ReadError::Deadline(deadline)),
            Ok(r) => r?,
        };
        // The body holds plaintexts and passwords: `Zeroizing` wipes this transport copy.
        Ok(Incoming { frame: decode_body(&body), charge })
    }
}
