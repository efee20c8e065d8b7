//! One connection to the daemon: a writer task that coalesces concurrent calls into
//! `Batch` frames, and a reader task that routes answers back by request id.
//!
//! Coalescing needs no timer: the writer takes whatever calls are queued the moment it
//! is free. A lone call goes out at once as a single frame; calls that arrive while the
//! writer is busy go out together in the next frame.
//!
//! Before anything is sent, the process answering on the socket must be one the client
//! trusts (see [`crate::trust`]). Connecting plus the handshake is bounded by
//! [`ClientOptions::connect_timeout`], each call by [`ClientOptions::request_timeout`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use harpocrates_protocol::{
    FrameError, MAX_BATCH_LEN, MessageCodec, PROTOCOL_VERSION, Request, RequestFrame, Response,
    ResponseFrame, WireResult,
};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::{FramedRead, FramedWrite};

use crate::error::{Error, Result};
use crate::trust;

pub(crate) type Codec = MessageCodec<ResponseFrame, RequestFrame>;
type Reply = oneshot::Sender<Result<WireResult>>;

/// The default of [`ClientOptions::connect_timeout`]: 5 seconds.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The default of [`ClientOptions::request_timeout`]: 60 seconds, well above the slowest
/// single operation (a password-protected key backup or restore, a rotation step on a
/// network HSM) yet short enough that a stopped or wedged daemon is noticed.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// How a connection behaves.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Largest frame, both ways.
    pub max_frame: u32,
    /// Most calls coalesced into one `Batch` frame; 1 turns auto-batching off (calls are
    /// still pipelined).
    pub max_auto_batch: usize,
    /// Calls queued for the writer before callers wait.
    pub queue_depth: usize,
    /// Name sent in the handshake, for the daemon's logs.
    pub client_name: String,
    /// One more uid whose daemon this client trusts, besides root and its own effective
    /// uid (and the owner of `/run/harpocrates` for the system socket). The environment
    /// variable [`HARPOCRATES_DAEMON_UID`](crate::trust::DAEMON_UID_ENV) adds another.
    /// A daemon answering as any other uid is refused with
    /// [`Error::PermissionDenied`] before a byte is sent. Default: `None`.
    pub trusted_daemon_uid: Option<u32>,
    /// Longest time to connect, check the daemon's credentials and finish the handshake
    /// (for every reconnection too); past it the call fails with [`Error::Timeout`].
    /// `None` waits forever. Default: [`DEFAULT_CONNECT_TIMEOUT`] (5 s).
    pub connect_timeout: Option<Duration>,
    /// Longest wait for the answer to one call (a [`Client`](crate::Client) method, or one
    /// explicit batch), from the moment it is queued; past it that call fails with
    /// [`Error::Timeout`] and the connection stays usable for the other calls (the late
    /// answer is discarded; a call not yet written is never sent). The request may or may
    /// not have been carried out. `None` waits forever. Default:
    /// [`DEFAULT_REQUEST_TIMEOUT`] (60 s).
    pub request_timeout: Option<Duration>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            max_frame: harpocrates_protocol::DEFAULT_MAX_FRAME,
            max_auto_batch: 256,
            queue_depth: 4096,
            client_name: format!("harpocrates-client/{}", env!("CARGO_PKG_VERSION")),
            trusted_daemon_uid: None,
            connect_timeout: Some(DEFAULT_CONNECT_TIMEOUT),
            request_timeout: Some(DEFAULT_REQUEST_TIMEOUT),
        }
    }
}

/// What the daemon said in the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerInfo {
    /// Protocol version in use.
    pub protocol_version: u32,
    /// Daemon software version.
    pub daemon_version: String,
    /// Backend name.
    pub backend: String,
    /// The largest frame the daemon accepts.
    pub max_frame: u32,
}

struct Call {
    request: Request,
    reply: Reply,
}

enum Pending {
    Single(Reply),
    Coalesced(Vec<Reply>),
}

type PendingMap = Arc<Mutex<HashMap<u64, Pending>>>;

/// A live connection. Dropping it closes the connection once queued calls are written.
pub struct Connection {
    calls: mpsc::Sender<Call>,
    alive: Arc<AtomicBool>,
    info: ServerInfo,
    pending: PendingMap,
    path: PathBuf,
    request_timeout: Option<Duration>,
}

impl Connection {
    /// Connects to `path`, checks that the process answering is trusted (see
    /// [`crate::trust`]) and says Hello, all within
    /// [`connect_timeout`](ClientOptions::connect_timeout).
    ///
    /// Fails with [`Error::PermissionDenied`] for an untrusted daemon (nothing is sent to
    /// it), [`Error::Connect`] when the socket cannot be reached, [`Error::Timeout`] when
    /// the time runs out.
    pub async fn open(path: &Path, options: &ClientOptions) -> Result<Self> {
        within_connect_timeout(path, options, Self::open_now(path, options)).await
    }

    async fn open_now(path: &Path, options: &ClientOptions) -> Result<Self> {
        let (reader, mut writer, info) = handshake(path, options).await?;
        // Never send a frame the daemon would refuse: that would cost the connection.
        let limit = options.max_frame.min(info.max_frame);
        *writer.encoder_mut() = Codec::new(limit);
        let pending: PendingMap = Arc::default();
        let alive = Arc::new(AtomicBool::new(true));
        let (calls, rx) = mpsc::channel(options.queue_depth.max(1));
        tokio::spawn(write_calls(
            writer,
            rx,
            pending.clone(),
            alive.clone(),
            options.max_auto_batch,
        ));
        tokio::spawn(read_answers(reader, pending.clone(), alive.clone()));
        Ok(Self {
            calls,
            alive,
            info,
            pending,
            path: path.to_owned(),
            request_timeout: options.request_timeout,
        })
    }

    /// Whether the connection still works.
    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire) && !self.calls.is_closed()
    }

    /// The daemon's handshake answer.
    pub fn info(&self) -> &ServerInfo {
        &self.info
    }

    /// Sends one request and waits for its answer, at most
    /// [`request_timeout`](ClientOptions::request_timeout).
    pub async fn call(&self, request: Request) -> Result<WireResult> {
        let (reply, answer) = oneshot::channel();
        let exchange = async {
            self.calls
                .send(Call { request, reply })
                .await
                .map_err(|_| Error::ConnectionLost("the connection is closed".into()))?;
            answer
                .await
                .map_err(|_| Error::ConnectionLost("closed before the answer arrived".into()))?
        };
        let Some(limit) = self.request_timeout else {
            return exchange.await;
        };
        // A `let` statement, so the timed-out exchange (and its answer receiver) is dropped
        // before the pending calls are swept.
        let outcome = tokio::time::timeout(limit, exchange).await;
        outcome.unwrap_or_else(|_| {
            forget_abandoned(&self.pending);
            Err(Error::Timeout(format!(
                "no answer from the daemon on {} within {} (request_timeout); the request may \
                 or may not have been carried out",
                self.path.display(),
                humantime::format_duration(limit)
            )))
        })
    }

    /// Requests written and still waiting for an answer (for tests).
    #[cfg(test)]
    fn pending_len(&self) -> usize {
        lock(&self.pending).len()
    }
}

/// Refuses, with [`Error::PermissionDenied`], a daemon whose uid this client does not trust.
/// The reading and writing halves of a connection, framed.
pub(crate) type Halves = (
    FramedRead<tokio::net::unix::OwnedReadHalf, Codec>,
    FramedWrite<tokio::net::unix::OwnedWriteHalf, Codec>,
    ServerInfo,
);

/// Connects to `path`, checks who answers, and says Hello (id 1).
pub(crate) async fn handshake(path: &Path, options: &ClientOptions) -> Result<Halves> {
    let stream = UnixStream::connect(path).await.map_err(|e| Error::connect(path, &e))?;
    // Not one byte, the Hello included, before we know who listens.
    check_peer(&stream, path, options)?;
    let (read, write) = stream.into_split();
    let mut reader = FramedRead::new(read, Codec::new(options.max_frame));
    let mut writer = FramedWrite::new(write, Codec::new(options.max_frame));
    writer.set_backpressure_boundary(harpocrates_protocol::WRITE_BUFFER);

    let hello =
        Request::Hello { version: PROTOCOL_VERSION, client_name: options.client_name.clone() };
    // Even if the write fails, read: a daemon that turns us away says why first.
    let sent = writer.send(RequestFrame { id: 1, request: hello }).await;
    let info = match reader.next().await {
        Some(Ok(Ok(ResponseFrame {
            id: 1,
            result: Ok(Response::Hello { version, daemon_version, backend, max_frame }),
        }))) => {
            if version != PROTOCOL_VERSION {
                return Err(Error::UnsupportedVersion(format!(
                    "the daemon answered with protocol version {version}; this client speaks {PROTOCOL_VERSION}"
                )));
            }
            ServerInfo { protocol_version: version, daemon_version, backend, max_frame }
        }
        Some(Ok(Ok(ResponseFrame { result: Err(e), .. }))) => return Err(e.into()),
        Some(Ok(Ok(ResponseFrame { id, result: Ok(other) }))) => {
            return Err(Error::Protocol(format!(
                "the handshake (id 1) was answered with {} for id {id}",
                crate::error::describe(&other)
            )));
        }
        Some(Ok(Err(body))) => return Err(Error::Protocol(body.to_string())),
        Some(Err(e)) => return Err(lost(e)),
        None => {
            sent.map_err(lost)?;
            return Err(Error::ConnectionLost("closed during the handshake".into()));
        }
    };
    Ok((reader, writer, info))
}

/// Runs `work` within the connect timeout of `options`.
pub(crate) async fn within_connect_timeout<T>(
    path: &Path,
    options: &ClientOptions,
    work: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    let Some(limit) = options.connect_timeout else { return work.await };
    tokio::time::timeout(limit, work).await.unwrap_or_else(|_| {
        Err(Error::Timeout(format!(
            "connecting to {} and the handshake took longer than {} (connect_timeout); \
             is harpocratesd stopped or overloaded?",
            path.display(),
            humantime::format_duration(limit)
        )))
    })
}

fn check_peer(stream: &UnixStream, path: &Path, options: &ClientOptions) -> Result<()> {
    let cred = stream.peer_cred().map_err(|e| {
        Error::PermissionDenied(format!(
            "cannot tell who answers on {} (SO_PEERCRED: {e}), so nothing was sent",
            path.display()
        ))
    })?;
    let peer = cred.uid();
    let (policy, notes) = trust::gather(path, options.trusted_daemon_uid);
    match policy.decide(peer) {
        Some(reason) => {
            tracing::debug!(socket = %path.display(), peer_uid = peer, ?reason, "daemon trusted");
            Ok(())
        }
        None => Err(Error::PermissionDenied(trust::refusal(path, peer, &policy, &notes))),
    }
}

/// Drops the pending entries of calls whose callers gave up (timed out): their answers,
/// if they ever come, find no entry and are discarded.
fn forget_abandoned(pending: &PendingMap) {
    lock(pending).retain(|_, waiting| match waiting {
        Pending::Single(reply) => !reply.is_closed(),
        Pending::Coalesced(replies) => replies.iter().any(|r| !r.is_closed()),
    });
}

fn lost(e: FrameError) -> Error {
    Error::ConnectionLost(e.to_string())
}

async fn write_calls(
    mut sink: FramedWrite<OwnedWriteHalf, Codec>,
    mut rx: mpsc::Receiver<Call>,
    pending: PendingMap,
    alive: Arc<AtomicBool>,
    max_auto_batch: usize,
) {
    let max_auto_batch = max_auto_batch.clamp(1, MAX_BATCH_LEN);
    // Coalesced frames stay well under the limit so their answers fit too.
    let budget = sink.encoder().max_frame() as usize / 2;
    let mut next_id: u64 = 2;
    let mut queued = Vec::with_capacity(max_auto_batch);
    while alive.load(Ordering::Acquire) && rx.recv_many(&mut queued, max_auto_batch).await > 0 {
        let mut ok = true;
        let mut chunk: Vec<Call> = Vec::new();
        let mut chunk_size = 0;
        for call in queued.drain(..) {
            if call.reply.is_closed() {
                // Its caller gave up (timed out) before it was written: never send it.
                continue;
            }
            if matches!(
                call.request,
                Request::Batch(_)
                    | Request::ListKeys
                    | Request::ListKeks
                    | Request::HealthCheck
                    | Request::GetMetrics
            ) {
                // Explicit batches travel alone (a Batch may not nest in another), and so do
                // requests whose answers grow without a bound the client can estimate.
                ok &= send_single(&mut sink, &pending, &mut next_id, call).await;
                continue;
            }
            let size = size_hint(&call.request);
            if !chunk.is_empty() && chunk_size + size > budget {
                ok &=
                    send_chunk(&mut sink, &pending, &mut next_id, std::mem::take(&mut chunk)).await;
                chunk_size = 0;
            }
            chunk_size += size;
            chunk.push(call);
        }
        ok &= send_chunk(&mut sink, &pending, &mut next_id, chunk).await;
        if !ok || sink.flush().await.is_err() {
            break;
        }
    }
    alive.store(false, Ordering::Release);
    fail_all(&pending, "the connection closed");
    // Calls still queued are answered by dropping their reply senders.
}

/// An upper bound of the encoded size of a request or of its answer, whichever is larger
/// (bincode adds at most 9 bytes per field), so a coalesced batch and its answer both fit.
fn size_hint(request: &Request) -> usize {
    const FIXED: usize = 64;
    FIXED
        + match request {
            Request::GenerateRandom { len } => *len as usize,
            Request::Encrypt { key, plaintext, aad } => {
                // The answer is the plaintext plus 30 bytes of header, IV and tag.
                key.as_str().len() + plaintext.len() + aad.as_ref().map_or(0, Vec::len) + 30
            }
            Request::Hello { client_name, .. } => client_name.len(),
            Request::GenerateKey { label, .. }
            | Request::GenerateKeyWithAttributes { label, .. } => label.len(),
            Request::Decrypt { key, ciphertext, aad } => {
                key.as_str().len() + ciphertext.len() + aad.as_ref().map_or(0, Vec::len)
            }
            Request::DestroyKey { key } => key.as_str().len(),
            Request::BackupKey { key, password } => key.as_str().len() + password.len() + 4096,
            Request::RestoreKey { label, backup, password } => {
                label.len() + backup.len() + password.len()
            }
            Request::Batch(items) => items.iter().map(size_hint).sum(),
            Request::EnvelopeEncrypt { kek, context, plaintext, aad } => {
                kek.len()
                    + 2 * context.len()
                    + plaintext.len()
                    + aad.as_ref().map_or(0, Vec::len)
                    + 160
            }
            Request::EnvelopeDecrypt { context, ciphertext, aad }
            | Request::Rewrap { context, ciphertext, aad } => {
                context.len() + 2 * ciphertext.len() + aad.as_ref().map_or(0, Vec::len) + 160
            }
            Request::DeriveDataKey { kek, context, .. } => kek.len() + context.len() + 200,
            Request::UnwrapDataKey { wrapped } => wrapped.len() + 200,
            Request::GenerateKek { name: kek }
            | Request::GenerateDataKey { kek }
            | Request::Rotation { kek, .. }
            | Request::RetireKekVersion { kek, .. } => kek.len() + 1024,
            _ => 0,
        }
}

fn take_id(next_id: &mut u64) -> u64 {
    let id = *next_id;
    *next_id = next_id.wrapping_add(1).max(2);
    id
}

/// Writes one call as its own frame. Returns false when the connection is unusable.
async fn send_single(
    sink: &mut FramedWrite<OwnedWriteHalf, Codec>,
    pending: &PendingMap,
    next_id: &mut u64,
    call: Call,
) -> bool {
    let id = take_id(next_id);
    lock(pending).insert(id, Pending::Single(call.reply));
    let sent = sink.feed(RequestFrame { id, request: call.request }).await;
    settle_send(pending, id, sent)
}

/// Writes calls as one `Batch` frame (or a lone call as itself).
async fn send_chunk(
    sink: &mut FramedWrite<OwnedWriteHalf, Codec>,
    pending: &PendingMap,
    next_id: &mut u64,
    mut calls: Vec<Call>,
) -> bool {
    if calls.len() <= 1 {
        return match calls.pop() {
            Some(call) => send_single(sink, pending, next_id, call).await,
            None => true,
        };
    }
    let id = take_id(next_id);
    let (requests, replies): (Vec<Request>, Vec<Reply>) =
        calls.into_iter().map(|c| (c.request, c.reply)).unzip();
    lock(pending).insert(id, Pending::Coalesced(replies));
    let sent = sink.feed(RequestFrame { id, request: Request::Batch(requests) }).await;
    settle_send(pending, id, sent)
}

/// After a write: a frame refused as too large is answered locally; any other write
/// error ends the connection (returns false).
fn settle_send(pending: &PendingMap, id: u64, sent: Result<(), FrameError>) -> bool {
    match sent {
        Ok(()) => true,
        Err(FrameError::TooLarge { len, max }) => {
            let msg = format!("request of {len} bytes exceeds the {max}-byte frame limit");
            let replies = match lock(pending).remove(&id) {
                Some(Pending::Single(r)) => vec![r],
                Some(Pending::Coalesced(rs)) => rs,
                None => Vec::new(),
            };
            for r in replies {
                let _ = r.send(Err(Error::FrameTooLarge(msg.clone())));
            }
            true
        }
        Err(_) => false,
    }
}

async fn read_answers(
    mut stream: FramedRead<OwnedReadHalf, Codec>,
    pending: PendingMap,
    alive: Arc<AtomicBool>,
) {
    let reason = loop {
        let frame = match stream.next().await {
            Some(Ok(Ok(frame))) => frame,
            Some(Ok(Err(body))) => break format!("undecodable answer: {body}"),
            Some(Err(e)) => break e.to_string(),
            None => break "the daemon closed the connection".to_owned(),
        };
        if frame.id == 0 {
            // A connection-level error: the daemon could not tell which request it answers,
            // so no pending call can be matched to it. Fail them all rather than leave one
            // waiting forever; the next call reconnects.
            match frame.result {
                Err(e) => break format!("{}: {}", e.code, e.message),
                Ok(_) => continue,
            }
        }
        let Some(waiting) = lock(&pending).remove(&frame.id) else {
            continue;
        };
        match waiting {
            Pending::Single(reply) => {
                let _ = reply.send(Ok(frame.result));
            }
            Pending::Coalesced(replies) => split_batch_answer(frame.result, replies),
        }
    };
    alive.store(false, Ordering::Release);
    fail_all(&pending, &reason);
}

fn split_batch_answer(result: WireResult, replies: Vec<Reply>) {
    match result {
        Ok(Response::Batch(answers)) if answers.len() == replies.len() => {
            for (answer, reply) in answers.into_iter().zip(replies) {
                let _ = reply.send(Ok(answer));
            }
        }
        Ok(other) => {
            let msg = match &other {
                Response::Batch(answers) => {
                    format!(
                        "batch answered with {} results for {} calls",
                        answers.len(),
                        replies.len()
                    )
                }
                other => format!("batch answered with {}", crate::error::describe(other)),
            };
            for reply in replies {
                let _ = reply.send(Err(Error::Protocol(msg.clone())));
            }
        }
        // The batch as a whole was refused (too large, malformed): each call gets that
        // answer. (Busy is answered per element inside an Ok batch.)
        Err(e) => {
            for reply in replies {
                let _ = reply.send(Ok(Err(e.clone())));
            }
        }
    }
}

fn fail_all(pending: &PendingMap, reason: &str) {
    let drained: Vec<Pending> = lock(pending).drain().map(|(_, p)| p).collect();
    for p in drained {
        let replies = match p {
            Pending::Single(r) => vec![r],
            Pending::Coalesced(rs) => rs,
        };
        for r in replies {
            let _ = r.send(Err(Error::ConnectionLost(reason.to_owned())));
        }
    }
}

fn lock(pending: &PendingMap) -> std::sync::MutexGuard<'_, HashMap<u64, Pending>> {
    pending.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use harpocrates_protocol::Response;
    use tokio::net::UnixListener;

    use super::*;

    type ServerCodec = MessageCodec<RequestFrame, ResponseFrame>;

    fn options(connect: u64, request: u64) -> ClientOptions {
        ClientOptions {
            connect_timeout: Some(Duration::from_millis(connect)),
            request_timeout: Some(Duration::from_millis(request)),
            ..ClientOptions::default()
        }
    }

    fn hello() -> WireResult {
        Ok(Response::Hello {
            version: PROTOCOL_VERSION,
            daemon_version: "fake".into(),
            backend: "fake".into(),
            max_frame: harpocrates_protocol::DEFAULT_MAX_FRAME,
        })
    }

    /// A daemon stand-in (running as us, so trusted) that answers Hello and Ping at once
    /// but holds any other request until the next Ping, answering it right after that
    /// Ping's Pong: so a held request's answer arrives late.
    async fn stalling_daemon(listener: UnixListener) {
        let (stream, _) = listener.accept().await.expect("accept");
        let (r, w) = stream.into_split();
        let mut reader = FramedRead::new(r, ServerCodec::default());
        let mut writer = FramedWrite::new(w, ServerCodec::default());
        let mut held = Vec::new();
        while let Some(Ok(Ok(frame))) = reader.next().await {
            let answers: Vec<(u64, WireResult)> = match frame.request {
                Request::Hello { .. } => vec![(frame.id, hello())],
                Request::Ping => {
                    let mut a = vec![(frame.id, Ok(Response::Pong))];
                    a.extend(held.drain(..).map(|id| (id, Ok(Response::Pong))));
                    a
                }
                _ => {
                    held.push(frame.id);
                    vec![]
                }
            };
            for (id, result) in answers {
                writer.send(ResponseFrame { id, result }).await.expect("answer");
            }
        }
    }

    #[tokio::test]
    async fn a_silent_daemon_fails_the_connect_with_a_timeout() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("silent.sock");
        let listener = UnixListener::bind(&path).expect("bind");
        let started = Instant::now();
        let opened = Connection::open(&path, &options(300, 60_000)).await;
        let Err(Error::Timeout(msg)) = opened else {
            panic!("expected a timeout, got {:?}", opened.map(|_| ()));
        };
        assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
        assert!(msg.contains("connect_timeout") && msg.contains("300ms"), "{msg}");
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        drop(listener);
    }

    #[tokio::test]
    async fn a_timed_out_call_leaves_the_connection_working_for_others() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("stall.sock");
        let listener = UnixListener::bind(&path).expect("bind");
        let daemon = tokio::spawn(stalling_daemon(listener));
        let conn = Connection::open(&path, &options(5_000, 300)).await.expect("open");

        let started = Instant::now();
        let stalled = conn.call(Request::GenerateRandom { len: 1 }).await;
        assert!(
            matches!(&stalled, Err(Error::Timeout(m)) if m.contains("request_timeout")),
            "{stalled:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
        assert_eq!(conn.pending_len(), 0, "the abandoned call is forgotten");

        // The next Ping is answered, and the stalled call's late answer comes right after
        // it: it must be discarded without harm.
        assert_eq!(conn.call(Request::Ping).await.expect("ping"), Ok(Response::Pong));
        assert_eq!(conn.call(Request::Ping).await.expect("ping"), Ok(Response::Pong));
        assert!(conn.is_alive());
        assert_eq!(conn.pending_len(), 0);
        drop(conn);
        daemon.await.expect("fake daemon");
    }

    #[tokio::test]
    async fn without_a_request_timeout_a_call_waits() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("wait.sock");
        let listener = UnixListener::bind(&path).expect("bind");
        tokio::spawn(stalling_daemon(listener));
        let options = ClientOptions { request_timeout: None, ..options(5_000, 1) };
        let conn = Arc::new(Connection::open(&path, &options).await.expect("open"));
        let held = tokio::spawn({
            let conn = conn.clone();
            async move { conn.call(Request::GenerateRandom { len: 1 }).await }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!held.is_finished(), "no limit: still waiting");
        // A Ping releases the held call.
        assert_eq!(conn.call(Request::Ping).await.expect("ping"), Ok(Response::Pong));
        assert_eq!(held.await.expect("join").expect("call"), Ok(Response::Pong));
    }
}
