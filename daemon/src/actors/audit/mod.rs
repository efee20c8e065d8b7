//! The audit actor's logic: what an audit event holds, which sinks receive it, and how a
//! burst of events is written. [`actor`] is the actix glue (mailbox, group commit,
//! durable waits); [`mod@file`] is the hash-chained file.
//!
//! Events are built on the I/O thread from what the router already holds (the caller's
//! credentials behind an `Arc`, the operation, the names) and turned into text only
//! here, on the audit thread, so recording costs the request path a few pointer copies.

pub mod actor;
pub mod file;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use harpocrates_protocol::{AuditEvent, AuditPhase, ErrorCode, Op};
use tokio::sync::mpsc;

use crate::peer::Peer;
use file::{AuditFile, AuditFileError};

/// Which events go to journald (or stderr).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JournalMode {
    /// None.
    Off,
    /// Key-changing operations (`manage`, `rotate`) and every refusal: the default, so a
    /// busy host's journal is not flooded with `use` records.
    Changes,
    /// Every event.
    All,
}

/// What a `use` operation does when the audit queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backlog {
    /// The caller waits for room (the default): nothing is ever dropped.
    Wait,
    /// The event is dropped, counted in the metrics (`audit_lost`) and logged.
    Count,
}

/// The audit settings, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditSettings {
    /// The hash-chained file, if any.
    pub file: Option<PathBuf>,
    /// The active file is rotated past this size.
    pub max_file_bytes: u64,
    /// Which events are journaled.
    pub journal: JournalMode,
    /// Every class (not only `manage` and `rotate`) waits for its record to be durable
    /// and fails without it.
    pub fail_closed: bool,
    /// What `use` operations do when the queue is full.
    pub backlog: Backlog,
    /// Events queued for the audit actor before `backlog` applies.
    pub queue: usize,
}

impl Default for AuditSettings {
    fn default() -> Self {
        Self {
            file: None,
            max_file_bytes: 64 << 20,
            journal: JournalMode::Changes,
            fail_closed: false,
            backlog: Backlog::Wait,
            queue: 65_536,
        }
    }
}

impl AuditSettings {
    /// Whether any sink records events.
    pub fn enabled(&self) -> bool {
        self.file.is_some() || self.journal != JournalMode::Off
    }
}

/// One operation's record, as the router hands it over.
#[derive(Debug, Clone)]
pub struct Event {
    /// When the request arrived.
    pub at: SystemTime,
    /// Who asked.
    pub caller: Arc<Peer>,
    /// The connection's number.
    pub conn: u64,
    /// The request's frame id.
    pub request: u64,
    /// The index in a batch, for batch elements.
    pub element: Option<u32>,
    /// What was asked.
    pub op: Op,
    /// The token key named.
    pub key: Option<Arc<str>>,
    /// The KEK named.
    pub kek: Option<Arc<str>>,
    /// The KEK version, when known.
    pub version: Option<u32>,
    /// Intent or done.
    pub phase: AuditPhase,
    /// `None` for success.
    pub error: Option<ErrorCode>,
    /// Arrival to answer.
    pub latency: Duration,
}

impl Event {
    /// The record as written and streamed.
    pub fn to_wire(&self) -> AuditEvent {
        AuditEvent {
            time: humantime::format_rfc3339_micros(self.at).to_string(),
            uid: self.caller.uid,
            gid: self.caller.gid,
            pid: self.caller.pid,
            exe: self.caller.exe.clone(),
            conn: self.conn,
            request: self.request,
            element: self.element,
            op: self.op.name().to_owned(),
            class: self.op.class().name().to_owned(),
            key: self.key.as_deref().map(str::to_owned),
            kek: self.kek.as_deref().map(str::to_owned),
            version: self.version,
            phase: self.phase,
            result: self.error.map_or("ok", ErrorCode::name).to_owned(),
            latency_us: u64::try_from(self.latency.as_micros()).unwrap_or(u64::MAX),
        }
    }

    /// Appends the event as the JSON object serde makes of its [`AuditEvent`] (same
    /// members, same order), straight from this struct: the audit file's hot path.
    pub fn write_json(&self, buf: &mut Vec<u8>) {
        use chain::{push_json_str, push_u64};
        use harpocrates_protocol::audit::chain;
        use std::io::Write;
        fn opt_u64(buf: &mut Vec<u8>, v: Option<u64>) {
            match v {
                Some(n) => push_u64(buf, n),
                None => buf.extend_from_slice(b"null"),
            }
        }
        fn opt_str(buf: &mut Vec<u8>, v: Option<&str>) {
            match v {
                Some(s) => push_json_str(buf, s),
                None => buf.extend_from_slice(b"null"),
            }
        }
        buf.extend_from_slice(b"{\"time\":\"");
        // RFC 3339 is plain ASCII: no escaping needed.
        let _ = write!(buf, "{}", humantime::format_rfc3339_micros(self.at));
        buf.extend_from_slice(b"\",\"uid\":");
        push_u64(buf, self.caller.uid.into());
        buf.extend_from_slice(b",\"gid\":");
        push_u64(buf, self.caller.gid.into());
        buf.extend_from_slice(b",\"pid\":");
        match self.caller.pid {
            Some(pid) if pid >= 0 => push_u64(buf, pid.unsigned_abs().into()),
            Some(pid) => {
                let _ = write!(buf, "{pid}");
            }
            None => buf.extend_from_slice(b"null"),
        }
        buf.extend_from_slice(b",\"exe\":");
        opt_str(buf, self.caller.exe.as_deref());
        buf.extend_from_slice(b",\"conn\":");
        push_u64(buf, self.conn);
        buf.extend_from_slice(b",\"request\":");
        push_u64(buf, self.request);
        buf.extend_from_slice(b",\"element\":");
        opt_u64(buf, self.element.map(u64::from));
        buf.extend_from_slice(b",\"op\":\"");
        buf.extend_from_slice(self.op.name().as_bytes());
        buf.extend_from_slice(b"\",\"class\":\"");
        buf.extend_from_slice(self.op.class().name().as_bytes());
        buf.extend_from_slice(b"\",\"key\":");
        opt_str(buf, self.key.as_deref());
        buf.extend_from_slice(b",\"kek\":");
        opt_str(buf, self.kek.as_deref());
        buf.extend_from_slice(b",\"version\":");
        opt_u64(buf, self.version.map(u64::from));
        buf.extend_from_slice(match self.phase {
            AuditPhase::Intent => b",\"phase\":\"intent\",\"result\":\"",
            AuditPhase::Done => b",\"phase\":\"done\",\"result\":\"",
        });
        buf.extend_from_slice(self.error.map_or("ok", ErrorCode::name).as_bytes());
        buf.extend_from_slice(b"\",\"latency_us\":");
        push_u64(buf, u64::try_from(self.latency.as_micros()).unwrap_or(u64::MAX));
        buf.push(b'}');
    }
}

/// Whether `event` goes to the journal under `mode`.
pub fn journal_wants(mode: JournalMode, event: &Event) -> bool {
    match mode {
        JournalMode::Off => false,
        JournalMode::All => true,
        JournalMode::Changes => {
            event.op.class().changes_keys() || event.error == Some(ErrorCode::PermissionDenied)
        }
    }
}

/// A live subscriber and how many events it missed since it last kept up.
struct Subscriber {
    tx: mpsc::Sender<AuditEvent>,
    missed: u64,
}

/// The sinks, fed bursts of events on the audit thread.
pub struct Sinks {
    file: Option<AuditFile>,
    journal: JournalMode,
    subscribers: Vec<Subscriber>,
}

impl Sinks {
    /// Opens the file sink (if configured): a file that cannot be opened stops the
    /// daemon at start rather than leave it running unaudited.
    pub fn open(settings: &AuditSettings) -> Result<Self, AuditFileError> {
        let file = match &settings.file {
            Some(path) => Some(AuditFile::open(path, settings.max_file_bytes)?),
            None => None,
        };
        Ok(Self { file, journal: settings.journal, subscribers: Vec::new() })
    }

    /// Adds a live subscriber.
    pub fn subscribe(&mut self, tx: mpsc::Sender<AuditEvent>) {
        self.subscribers.push(Subscriber { tx, missed: 0 });
    }

    /// Live subscribers.
    pub fn subscribers(&self) -> usize {
        self.subscribers.len()
    }

    /// Takes a burst of events: queued for the file (written by [`commit`](Self::commit)),
    /// journaled and streamed now.
    pub fn accept(&mut self, events: &[Event]) {
        if let Some(file) = &mut self.file {
            for event in events {
                file.append_rendered(|buf| event.write_json(buf));
            }
        }
        let journaled = |e: &Event| journal_wants(self.journal, e);
        if self.subscribers.is_empty() {
            events.iter().filter(|e| journaled(e)).for_each(|e| journal(&e.to_wire()));
            return;
        }
        // Subscribers get every event: render each once for both sinks.
        let wire: Vec<AuditEvent> = events.iter().map(Event::to_wire).collect();
        for (event, record) in events.iter().zip(&wire) {
            if journaled(event) {
                journal(record);
            }
        }
        self.stream(wire);
    }

    fn stream(&mut self, wire: Vec<AuditEvent>) {
        use mpsc::error::TrySendError;
        self.subscribers.retain_mut(|s| {
            for record in &wire {
                if s.missed > 0 {
                    match s.tx.try_send(lagged(record, s.missed)) {
                        Ok(()) => s.missed = 0,
                        Err(TrySendError::Full(_)) => {
                            s.missed += 1;
                            continue;
                        }
                        Err(TrySendError::Closed(_)) => return false,
                    }
                }
                match s.tx.try_send(record.clone()) {
                    Ok(()) => {}
                    // A slow reader misses events rather than slow the daemon down; it is
                    // told how many with the next one it gets.
                    Err(TrySendError::Full(_)) => s.missed += 1,
                    Err(TrySendError::Closed(_)) => return false,
                }
            }
            true
        });
    }

    /// Writes what was accepted since the last commit to the file, with an fdatasync
    /// when `sync`. On failure nothing of it is in the file and the chain is intact.
    pub fn commit(&mut self, sync: bool) -> Result<(), AuditFileError> {
        match &mut self.file {
            Some(file) => file.commit(sync),
            None => Ok(()),
        }
    }

    /// The chain head of the file sink, as hex, for the journal anchor.
    pub fn head(&self) -> Option<(u64, String)> {
        self.file.as_ref().map(AuditFile::head)
    }
}

/// The marker a lagging subscriber gets in place of the events it missed.
fn lagged(next: &AuditEvent, missed: u64) -> AuditEvent {
    AuditEvent {
        op: "audit_lagged".into(),
        class: "admin".into(),
        result: format!("missed {missed} events"),
        key: None,
        kek: None,
        version: None,
        element: None,
        latency_us: 0,
        ..next.clone()
    }
}

/// One event to journald (structured fields `HARPOCRATES_OP=` ...; the layer adds the
/// prefix) or stderr.
fn journal(e: &AuditEvent) {
    tracing::info!(
        target: crate::logging::AUDIT_TARGET,
        op = %e.op,
        class = %e.class,
        key = e.key.as_deref().unwrap_or(""),
        kek = e.kek.as_deref().unwrap_or(""),
        version = e.version.unwrap_or(0),
        phase = ?e.phase,
        result = %e.result,
        uid = e.uid,
        gid = e.gid,
        pid = e.pid.unwrap_or(0),
        exe = e.exe.as_deref().unwrap_or(""),
        conn = e.conn,
        request = e.request,
        latency_us = e.latency_us,
        "audit"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(op: Op, error: Option<ErrorCode>) -> Event {
        Event {
            at: SystemTime::UNIX_EPOCH + Duration::from_micros(1_764_388_800_123_456),
            caller: Arc::new(Peer {
                uid: 1001,
                gid: 1002,
                pid: Some(42),
                groups: vec![],
                exe: Some("/usr/bin/app".into()),
            }),
            conn: 3,
            request: 9,
            element: Some(1),
            op,
            key: None,
            kek: Some("orders".into()),
            version: Some(2),
            phase: AuditPhase::Done,
            error,
            latency: Duration::from_micros(17),
        }
    }

    #[test]
    fn the_wire_record_carries_who_what_and_how_it_ended() {
        let w = event(Op::EnvelopeEncrypt, None).to_wire();
        assert_eq!(w.time, "2025-11-29T04:00:00.123456Z");
        assert_eq!((w.uid, w.gid, w.pid), (1001, 1002, Some(42)));
        assert_eq!((w.op.as_str(), w.class.as_str()), ("envelope_encrypt", "use"));
        assert_eq!((w.kek.as_deref(), w.version), (Some("orders"), Some(2)));
        assert_eq!((w.result.as_str(), w.latency_us, w.element), ("ok", 17, Some(1)));
        let denied = event(Op::Decrypt, Some(ErrorCode::PermissionDenied)).to_wire();
        assert_eq!(denied.result, "permission_denied");
    }

    #[test]
    fn the_file_rendering_is_the_wire_record() {
        use harpocrates_protocol::audit::chain::{
            ChainHead, RecordBody, decode_line, encode_event_with,
        };
        let mut events = vec![
            event(Op::EnvelopeEncrypt, None),
            event(Op::Decrypt, Some(ErrorCode::PermissionDenied)),
        ];
        events[1].key = Some("we\"ird\n\\name".into());
        events[1].kek = None;
        events[1].version = None;
        events[1].element = None;
        events[1].phase = AuditPhase::Intent;
        events[1].caller = Arc::new(Peer { uid: 5, gid: 6, pid: None, groups: vec![], exe: None });
        for e in &events {
            let mut line = Vec::new();
            encode_event_with(&mut line, &ChainHead::default(), |buf| e.write_json(buf));
            let record = decode_line(line.strip_suffix(b"\n").expect("one line")).expect("decodes");
            assert_eq!(record.body, RecordBody::Event(e.to_wire()));
        }
    }

    #[test]
    fn the_journal_gets_changes_and_refusals_by_default() {
        let mode = JournalMode::Changes;
        assert!(journal_wants(mode, &event(Op::DestroyKey, None)));
        assert!(journal_wants(mode, &event(Op::Rotation, None)));
        assert!(journal_wants(mode, &event(Op::Encrypt, Some(ErrorCode::PermissionDenied))));
        assert!(!journal_wants(mode, &event(Op::Encrypt, None)));
        assert!(!journal_wants(mode, &event(Op::Encrypt, Some(ErrorCode::KeyNotFound))));
        assert!(journal_wants(JournalMode::All, &event(Op::Encrypt, None)));
        assert!(!journal_wants(JournalMode::Off, &event(Op::DestroyKey, None)));
    }

    #[tokio::test]
    async fn a_slow_subscriber_is_told_what_it_missed() {
        let mut sinks =
            Sinks::open(&AuditSettings { journal: JournalMode::Off, ..AuditSettings::default() })
                .expect("no file");
        let (tx, mut rx) = mpsc::channel(2);
        sinks.subscribe(tx);
        let burst: Vec<Event> = (0..5).map(|_| event(Op::Encrypt, None)).collect();
        sinks.accept(&burst);
        assert_eq!(rx.recv().await.expect("first").op, "encrypt");
        assert_eq!(rx.recv().await.expect("second").op, "encrypt");
        sinks.accept(&burst[..1]);
        let marker = rx.recv().await.expect("marker");
        assert_eq!(
            (marker.op.as_str(), marker.result.as_str()),
            ("audit_lagged", "missed 3 events")
        );
        assert_eq!(rx.recv().await.expect("after the marker").op, "encrypt");
        drop(rx);
        sinks.accept(&burst[..1]);
        assert_eq!(sinks.subscribers(), 0, "a closed subscriber is dropped");
    }
}
