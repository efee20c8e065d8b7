//! One client connection: handshake, then pipelined requests answered out of order.
//!
//! The reader decodes frames and starts one task per request; the writer collects
//! answers and writes everything ready in one flush. At most `max_in_flight` requests
//! run per connection: past that the reader stops reading, which pushes back on the
//! client through the socket instead of buffering without bound.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use harpocrates_protocol::{
    ErrorCode, FrameError, MessageCodec, PROTOCOL_VERSION, Request, RequestFrame, Response,
    ResponseFrame, WireError,
};
use tokio::net::UnixStream;
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;

use super::dispatch::Router;
use super::peer::Peer;

/// How long a new connection may take to say Hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

type Codec = MessageCodec<RequestFrame, ResponseFrame>;

/// Per-connection limits.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Largest frame body.
    pub max_frame: u32,
    /// Requests in flight.
    pub max_in_flight: usize,
}

/// Serves one connection until the client leaves, breaks the protocol, or `shutdown`
/// fires (then in-flight requests are still answered).
pub async fn serve(
    stream: UnixStream,
    router: Rc<Router>,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
) {
    let peer = Peer::of(&stream).ok();
    let peer_text = peer.map_or_else(|| "unknown peer".to_owned(), |p| p.to_string());
    tracing::debug!(peer = %peer_text, "client connected");
    let metrics = router.metrics().clone();
    metrics.connection_opened();

    let (read, write) = stream.into_split();
    let mut frames = FramedRead::new(read, Codec::new(limits.max_frame));
    let (tx, rx) = mpsc::channel::<ResponseFrame>(limits.max_in_flight + 8);
    let writer = actix::spawn(write_responses(
        {
            let mut sink = FramedWrite::new(write, Codec::new(limits.max_frame));
            sink.set_backpressure_boundary(harpocrates_protocol::WRITE_BUFFER);
            sink
        },
        rx,
    ));

    if handshake(&mut frames, &tx, router.backend_name(), limits.max_frame, &shutdown).await {
        read_requests(&mut frames, &tx, router, limits, &shutdown).await;
    }
    drop(frames);
    drop(tx);
    // The writer ends once every request task has sent its answer.
    let _ = writer.await;
    metrics.connection_closed();
    tracing::debug!(peer = %peer_text, "client disconnected");
}

/// Reads the first frame, which must be a Hello of our version. Answers it either way.
async fn handshake(
    frames: &mut FramedRead<tokio::net::unix::OwnedReadHalf, Codec>,
    tx: &mpsc::Sender<ResponseFrame>,
    backend: &str,
    max_frame: u32,
    shutdown: &CancellationToken,
) -> bool {
    let first = tokio::select! {
        f = tokio::time::timeout(HELLO_TIMEOUT, frames.next()) => f,
        () = shutdown.cancelled() => return false,
    };
    let (id, request) = match first {
        Err(_) | Ok(None) => return false,
        Ok(Some(Err(e))) => {
            fatal(tx, e).await;
            return false;
        }
        Ok(Some(Ok(Err(body)))) => {
            let _ = tx.send(undecodable(body.id, &body.to_string())).await;
            return false;
        }
        Ok(Some(Ok(Ok(RequestFrame { id, request })))) => (id, request),
    };
    let result = match request {
        Request::Hello { version, client_name } if version == PROTOCOL_VERSION => {
            tracing::debug!(client = %client_name.escape_debug(), "hello");
            Ok(Response::Hello {
                version: PROTOCOL_VERSION,
                daemon_version: env!("CARGO_PKG_VERSION").into(),
                backend: backend.into(),
                max_frame,
            })
        }
        Request::Hello { version, .. } => Err(WireError::new(
            ErrorCode::UnsupportedVersion,
            format!(
                "protocol version {version} is not supported; this daemon speaks {PROTOCOL_VERSION}"
            ),
        )),
        other => Err(WireError::new(
            ErrorCode::InvalidRequest,
            format!("the first request must be Hello, not '{}'", other.op_name()),
        )),
    };
    let ok = result.is_ok();
    let _ = tx.send(ResponseFrame { id, result }).await;
    ok
}

async fn read_requests(
    frames: &mut FramedRead<tokio::net::unix::OwnedReadHalf, Codec>,
    tx: &mpsc::Sender<ResponseFrame>,
    router: Rc<Router>,
    limits: ConnectionLimits,
    shutdown: &CancellationToken,
) {
    let in_flight = Arc::new(Semaphore::new(limits.max_in_flight));
    loop {
        let permit = tokio::select! {
            p = in_flight.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            () = shutdown.cancelled() => return,
        };
        let next = tokio::select! {
            f = frames.next() => f,
            () = shutdown.cancelled() => return,
        };
        match next {
            None => return,
            Some(Err(e)) => return fatal(tx, e).await,
            Some(Ok(Err(body))) => {
                tracing::debug!(error = %body, "undecodable frame");
                if tx.send(undecodable(body.id, &body.to_string())).await.is_err() {
                    return;
                }
            }
            Some(Ok(Ok(RequestFrame { id, request }))) => {
                let router = router.clone();
                let tx = tx.clone();
                actix::spawn(async move {
                    let result = router.handle(request).await;
                    let _ = tx.send(ResponseFrame { id, result }).await;
                    drop(permit);
                });
            }
        }
    }
}

/// Answers a frame that ended the connection, when an answer is still possible.
async fn fatal(tx: &mpsc::Sender<ResponseFrame>, e: FrameError) {
    match e {
        FrameError::TooLarge { .. } => {
            tracing::debug!(error = %e, "closing connection");
            let err = WireError::new(ErrorCode::FrameTooLarge, e.to_string());
            let _ = tx.send(ResponseFrame { id: 0, result: Err(err) }).await;
        }
        other => tracing::debug!(error = %other, "connection read failed"),
    }
}

fn undecodable(id: Option<u64>, reason: &str) -> ResponseFrame {
    ResponseFrame {
        id: id.unwrap_or(0),
        result: Err(WireError::new(
            ErrorCode::InvalidRequest,
            format!("undecodable request: {reason}"),
        )),
    }
}

/// Writes answers as they come, flushing once per burst.
async fn write_responses(
    mut sink: FramedWrite<OwnedWriteHalf, Codec>,
    mut rx: mpsc::Receiver<ResponseFrame>,
) {
    let mut ready = Vec::with_capacity(64);
    while rx.recv_many(&mut ready, 256).await > 0 {
        for frame in ready.drain(..) {
            let id = frame.id;
            match sink.feed(frame).await {
                Ok(()) => {}
                Err(FrameError::TooLarge { len, max }) => {
                    let err = WireError::new(
                        ErrorCode::FrameTooLarge,
                        format!(
                            "the answer is {len} bytes, over the {max}-byte frame limit; split the request"
                        ),
                    );
                    if sink.feed(ResponseFrame { id, result: Err(err) }).await.is_err() {
                        return;
                    }
                }
                Err(_) => return,
            }
        }
        if sink.flush().await.is_err() {
            return;
        }
    }
}
