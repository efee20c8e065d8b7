//! One client connection: handshake, then pipelined requests answered out of order.
//!
//! The reader reads frames (see [`FrameReader`]) and starts one task per request; the
//! writer collects answers and writes everything ready in one flush. Three bounds keep a
//! connection from taking more than its share:
//!
//! * at most `max_in_flight` requests and `max_connection_bytes` of request and answer
//!   data per connection (plus the daemon-wide byte budget): past either, the reader
//!   stops reading, which pushes back on the client through the socket;
//! * a started frame must complete within `frame_timeout`;
//! * a connection with nothing in flight is closed after `idle_timeout`, and so is one
//!   whose client has read nothing of its answers for that long.
//!
//! A connection lives on one [I/O thread](super::io_threads) from accept to close: its
//! reader, its writer and its requests' tasks share that thread, so its state needs no
//! locks and an answer reaches the writer through one channel send on the same thread.
//! A request (a batch too) is one task and one send; a batch's answers leave as one frame.
//!
//! # Copies of a payload
//!
//! How often the bytes of a 4 KiB plaintext are copied between the socket and the AES
//! call, and the ciphertext back (an `EnvelopeEncrypt`; the other operations with a
//! payload go the same way up to the operation itself):
//!
//! 1. kernel → the connection's read buffer ([`FrameReader`], one `read` for as many
//!    pipelined frames as fit in 64 KiB);
//! 2. read buffer → the request's `SecretBytes`: bincode decodes the body where it lies in
//!    the read buffer (then wipes it there); `serde_bytes` copies the borrowed bytes into
//!    their own vector, which the request owns from then on (moved, never copied, to the
//!    session pool or the key manager);
//! 3. plaintext → the envelope's output vector (`EnvelopeKey::seal` in the protocol
//!    crate, sized for header, nonce, ciphertext and tag at once), which AES-GCM then
//!    encrypts in place — that is the AES call. (The token's `Encrypt` instead hands the
//!    plaintext to the module, which writes the ciphertext into our output vector);
//! 4. ciphertext → the `FramedWrite`'s buffer: the codec's encoder writes the frame
//!    straight into the sink's buffer (bincode writes a byte slice with one `put_slice`;
//!    no intermediate vector). The buffer keeps its size between bursts, so growing it
//!    costs copies only in the first large bursts;
//! 5. write buffer → kernel (one `write` per burst of answers).
//!
//! Five copies, three of them in the daemon (2, 3, 4), plus two wiping passes (the body in
//! the read buffer, the `SecretBytes` when dropped). Until the body was decoded in place
//! there was a sixth: the read buffer was copied into a per-frame body vector first. A
//! frame larger than the read buffer still gets a vector of its own: the part that had
//! already arrived is moved into it, the rest is read into it straight from the kernel.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::SinkExt;
use harpocrates_protocol::{
    ErrorCode, FrameError, MessageCodec, PROTOCOL_VERSION, Request, RequestFrame, Response,
    ResponseFrame, WireError,
};
use tokio::net::UnixStream;
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::codec::FramedWrite;
use tokio_util::sync::CancellationToken;

use super::budget::{Charge, ConnectionBudget, TotalBudget};
use super::context::{ConnectionContext, ConnectionLanes, RequestContext};
use super::dispatch::Router;
use super::frame_reader::{FrameReader, Incoming, ReadError};
use super::live::ConnectionLimits;
use crate::peer::Peer;

type Codec = MessageCodec<RequestFrame, ResponseFrame>;

/// An answer on its way out, with the bytes its request was charged.
type Outgoing = (ResponseFrame, Option<Charge>);

/// The part of a connection's budget that never waits for the daemon-wide total, so a
/// newcomer's small requests are read even while greedy clients hold the total.
const ALLOWANCE: usize = 64 * 1024;

/// A connection that moved this much gives freed memory back to the OS when it closes.
const BIG_CONNECTION: usize = 8 << 20;

/// Connections are numbered from 1 for audit records.
static NEXT_CONNECTION: AtomicU64 = AtomicU64::new(1);

/// When the connection was last busy, and how much it has in flight.
#[derive(Clone)]
struct Activity {
    last: Rc<Cell<Instant>>,
    in_flight: Rc<Cell<usize>>,
}

impl Activity {
    fn new() -> Self {
        Self { last: Rc::new(Cell::new(Instant::now())), in_flight: Rc::new(Cell::new(0)) }
    }

    fn begin(&self) {
        self.in_flight.set(self.in_flight.get() + 1);
    }

    fn end(&self) {
        self.in_flight.set(self.in_flight.get() - 1);
        self.last.set(Instant::now());
    }

    /// Resolves once nothing has been in flight for `idle`.
    async fn idle_for(&self, idle: Duration) {
        loop {
            let due = self.last.get() + idle;
            tokio::time::sleep_until(due.into()).await;
            if self.in_flight.get() == 0 && self.last.get() + idle <= Instant::now() {
                return;
            }
            if self.in_flight.get() > 0 {
                // Busy: look again later; `last` moves when the work ends.
                self.last.set(self.last.get().max(Instant::now()));
            }
        }
    }
}

/// Serves one connection until the client leaves, breaks the protocol, idles out, or
/// `shutdown` fires (then in-flight requests are still answered).
pub async fn serve(
    stream: UnixStream,
    router: Rc<Router>,
    limits: ConnectionLimits,
    total: TotalBudget,
    shutdown: CancellationToken,
) {
    // Unreadable credentials make an unknown peer, which the policy grants nothing.
    let peer = Peer::of(&stream).unwrap_or_else(|_| Peer::unknown());
    let conn = Rc::new(ConnectionContext {
        id: NEXT_CONNECTION.fetch_add(1, Ordering::Relaxed),
        peer: Arc::new(peer),
        lanes: ConnectionLanes::default(),
    });
    tracing::debug!(peer = %conn.peer, conn = conn.id, "client connected");
    let metrics = router.metrics().clone();
    metrics.connection_opened();

    let (read, write) = stream.into_split();
    let mut reader = FrameReader::new(read, limits.max_frame, limits.frame_timeout);
    let budget = ConnectionBudget::new(limits.max_connection_bytes, ALLOWANCE, total);
    let (tx, rx) = mpsc::channel::<Outgoing>(limits.max_in_flight + 8);
    let writer = actix::spawn(write_responses(
        {
            let mut sink = FramedWrite::new(write, Codec::new(limits.max_frame));
            sink.set_backpressure_boundary(harpocrates_protocol::WRITE_BUFFER);
            sink
        },
        rx,
        limits.idle_timeout,
    ));

    let backend = router.backend_name();
    if handshake(&mut reader, &budget, &tx, backend, limits, &shutdown).await {
        read_requests(&mut reader, &budget, &tx, router, &conn, limits, &shutdown).await;
    }
    drop(reader);
    drop(tx);
    // The writer ends once every request task has sent its answer.
    let _ = writer.await;
    if budget.charged_total() >= BIG_CONNECTION {
        super::budget::release_freed_memory();
    }
    metrics.connection_closed();
    tracing::debug!(peer = %conn.peer, conn = conn.id, "client disconnected");
}

/// Reads the first frame, which must be a Hello of our version. Answers it either way.
async fn handshake(
    reader: &mut FrameReader,
    budget: &ConnectionBudget,
    tx: &mpsc::Sender<Outgoing>,
    backend: &str,
    limits: ConnectionLimits,
    shutdown: &CancellationToken,
) -> bool {
    // The whole handshake, first byte included, must fit in one frame deadline.
    let first = tokio::select! {
        f = tokio::time::timeout(limits.frame_timeout, async {
            if reader.wait_for_frame().await? {
                reader.read_frame(budget).await
            } else {
                Err(ReadError::Closed)
            }
        }) => f,
        () = shutdown.cancelled() => return false,
    };
    let Incoming { frame, charge } = match first {
        Err(_) => {
            tracing::debug!("no Hello within the frame deadline; closing");
            return false;
        }
        Ok(Err(e)) => {
            fatal(tx, e).await;
            return false;
        }
        Ok(Ok(incoming)) => incoming,
    };
    let (id, request) = match frame {
        Err(body) => {
            let _ = tx.send((undecodable(body.id, &body.to_string()), Some(charge))).await;
            return false;
        }
        Ok(RequestFrame { id, request }) => (id, request),
    };
    let result = match request {
        Request::Hello { version, client_name } if version == PROTOCOL_VERSION => {
            tracing::debug!(client = %client_name.escape_debug(), "hello");
            Ok(Response::Hello {
                version: PROTOCOL_VERSION,
                daemon_version: env!("CARGO_PKG_VERSION").into(),
                backend: backend.into(),
                max_frame: limits.max_frame,
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
    let _ = tx.send((ResponseFrame { id, result }, Some(charge))).await;
    ok
}

async fn read_requests(
    reader: &mut FrameReader,
    budget: &ConnectionBudget,
    tx: &mpsc::Sender<Outgoing>,
    router: Rc<Router>,
    conn: &Rc<ConnectionContext>,
    limits: ConnectionLimits,
    shutdown: &CancellationToken,
) {
    let in_flight = Arc::new(Semaphore::new(limits.max_in_flight));
    let activity = Activity::new();
    loop {
        // The writer gave up on a client that stopped reading: stop reading it too.
        let permit = tokio::select! {
            p = in_flight.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            () = tx.closed() => return,
            () = shutdown.cancelled() => return,
        };
        let started = tokio::select! {
            r = reader.wait_for_frame() => r,
            () = tx.closed() => return,
            () = activity.idle_for(limits.idle_timeout) => {
                tracing::debug!(idle = ?limits.idle_timeout, "closing an idle connection");
                return;
            }
            () = shutdown.cancelled() => return,
        };
        match started {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => return tracing::debug!(error = %e, "connection read failed"),
        }
        let incoming = tokio::select! {
            f = reader.read_frame(budget) => f,
            () = shutdown.cancelled() => return,
        };
        let Incoming { frame, charge } = match incoming {
            Ok(incoming) => incoming,
            Err(e) => return fatal(tx, e).await,
        };
        match frame {
            Err(body) => {
                tracing::debug!(error = %body, "undecodable frame");
                let answer = undecodable(body.id, &body.to_string());
                if tx.send((answer, Some(charge))).await.is_err() {
                    return;
                }
            }
            Ok(RequestFrame { id, request }) => {
                let ctx = RequestContext::now(conn.clone(), id);
                let router = router.clone();
                let tx = tx.clone();
                let activity = activity.clone();
                // Only a stream watches for shutdown; a token clone takes its lock.
                let subscription =
                    matches!(request, Request::SubscribeAudit).then(|| shutdown.clone());
                activity.begin();
                actix::spawn(async move {
                    if let Some(shutdown) = subscription {
                        drop(charge);
                        stream_audit(&router, &ctx, &tx, &shutdown).await;
                    } else {
                        let result = router.handle(request, &ctx).await;
                        let _ = tx.send((ResponseFrame { id, result }, Some(charge))).await;
                    }
                    activity.end();
                    drop(permit);
                });
            }
        }
    }
}

/// Answers a `SubscribeAudit` with one frame per event until the client goes away or
/// the daemon stops. The writer's stall timeout closes a subscriber that stops reading;
/// one that reads slowly misses events (and is told how many) rather than slow anyone.
async fn stream_audit(
    router: &Router,
    ctx: &RequestContext,
    tx: &mpsc::Sender<Outgoing>,
    shutdown: &CancellationToken,
) {
    let id = ctx.id;
    let mut subscription = match router.subscribe(ctx).await {
        Ok(subscription) => subscription,
        Err(e) => {
            let _ = tx.send((ResponseFrame { id, result: Err(e) }, None)).await;
            return;
        }
    };
    loop {
        let event = tokio::select! {
            e = subscription.events.recv() => e,
            () = tx.closed() => return,
            () = shutdown.cancelled() => return,
        };
        let Some(event) = event else { return };
        let frame = ResponseFrame { id, result: Ok(Response::AuditEvent(Box::new(event))) };
        if tx.send((frame, None)).await.is_err() {
            return;
        }
    }
}

/// Answers a frame that ended the connection, when an answer is still possible.
async fn fatal(tx: &mpsc::Sender<Outgoing>, e: ReadError) {
    match e {
        ReadError::TooLarge { .. } => {
            tracing::debug!(error = %e, "closing connection");
            let err = WireError::new(ErrorCode::FrameTooLarge, e.to_string());
            let _ = tx.send((ResponseFrame { id: 0, result: Err(err) }, None)).await;
        }
        ReadError::Deadline(_) => tracing::debug!(error = %e, "closing a stalled connection"),
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

/// Writes answers as they come, flushing once per burst. A request's charge is given
/// back once its answer is in the write buffer (which itself is bounded by
/// [`WRITE_BUFFER`](harpocrates_protocol::WRITE_BUFFER) plus one frame). A peer that
/// reads nothing for `stall` loses the connection: it would otherwise hold its byte
/// budget for ever.
async fn write_responses(
    mut sink: FramedWrite<OwnedWriteHalf, Codec>,
    mut rx: mpsc::Receiver<Outgoing>,
    stall: Duration,
) {
    let mut ready = Vec::with_capacity(64);
    while rx.recv_many(&mut ready, 256).await > 0 {
        for (frame, charge) in ready.drain(..) {
            let id = frame.id;
            let Ok(fed) = tokio::time::timeout(stall, sink.feed(frame)).await else {
                tracing::debug!(stall = ?stall, "the client stopped reading; closing");
                return;
            };
            match fed {
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
            drop(charge);
        }
        match tokio::time::timeout(stall, sink.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return,
            Err(_) => {
                tracing::debug!(stall = ?stall, "the client stopped reading; closing");
                return;
            }
        }
    }
}
