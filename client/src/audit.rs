//! A live stream of the daemon's audit events (callers granted `admin` only).
//!
//! The stream has a connection of its own, so a slow reader never holds up the calls
//! made through the [`Client`](crate::Client). A reader that falls far behind misses
//! events rather than slow the daemon down; it is told how many with an event whose
//! `op` is `audit_lagged`.

use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::{SinkExt, Stream, StreamExt};
use harpocrates_protocol::{AuditEvent, Request, RequestFrame, Response, ResponseFrame};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio_util::codec::{FramedRead, FramedWrite};

use crate::client::Client;
use crate::connection::{ClientOptions, Codec, handshake, within_connect_timeout};
use crate::error::{Error, Result};

impl Client {
    /// A live stream of the daemon's audit events from now on, on a connection of its
    /// own (callers granted `admin` only; a refusal is the stream's first item).
    ///
    /// ```no_run
    /// # async fn f(client: harpocrates_client::Client) -> harpocrates_client::Result<()> {
    /// use futures::StreamExt;
    /// let mut events = client.audit_events().await?;
    /// while let Some(event) = events.next().await {
    ///     let e = event?;
    ///     println!("{} uid={} {} {:?} {}", e.time, e.uid, e.op, e.key, e.result);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn audit_events(&self) -> Result<AuditStream> {
        AuditStream::open(self.path(), self.options()).await
    }
}

/// The frame id of the subscription (the handshake was 1).
const SUBSCRIPTION_ID: u64 = 2;

/// Audit events as the daemon records them; ends when the daemon closes the stream.
pub struct AuditStream {
    reader: FramedRead<OwnedReadHalf, Codec>,
    // Held so the daemon does not see our side close.
    _writer: FramedWrite<OwnedWriteHalf, Codec>,
    done: bool,
}

impl std::fmt::Debug for AuditStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditStream").field("done", &self.done).finish_non_exhaustive()
    }
}

impl AuditStream {
    /// Connects to `path` and subscribes. A refusal (not `admin`, audit off, too many
    /// streams) comes with the first item, as the daemon answers.
    pub async fn open(path: &Path, options: &ClientOptions) -> Result<Self> {
        within_connect_timeout(path, options, async {
            let (reader, mut writer, _) = handshake(path, options).await?;
            writer
                .send(RequestFrame { id: SUBSCRIPTION_ID, request: Request::SubscribeAudit })
                .await
                .map_err(|e| Error::ConnectionLost(e.to_string()))?;
            Ok(Self { reader, _writer: writer, done: false })
        })
        .await
    }
}

impl Stream for AuditStream {
    type Item = Result<AuditEvent>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        let item = match futures::ready!(self.reader.poll_next_unpin(cx)) {
            None => None,
            Some(Ok(Ok(ResponseFrame { id: SUBSCRIPTION_ID, result }))) => match result {
                Ok(Response::AuditEvent(event)) => return Poll::Ready(Some(Ok(*event))),
                Ok(other) => Some(Err(Error::Protocol(format!(
                    "the audit stream carried {}",
                    crate::error::describe(&other)
                )))),
                Err(e) => Some(Err(e.into())),
            },
            Some(Ok(Ok(ResponseFrame { result: Err(e), .. }))) => Some(Err(e.into())),
            Some(Ok(Ok(ResponseFrame { id, .. }))) => {
                Some(Err(Error::Protocol(format!("an answer for id {id} on the audit stream"))))
            }
            Some(Ok(Err(body))) => Some(Err(Error::Protocol(body.to_string()))),
            Some(Err(e)) => Some(Err(Error::ConnectionLost(e.to_string()))),
        };
        // After an error or the end, the stream is over.
        self.done = true;
        Poll::Ready(item)
    }
}
