//! The hash-chained audit file: its record format, and a verifier for it.
//!
//! This module only turns records into bytes and bytes back into records; the daemon
//! owns the file (`actors::audit::file`) and `harpoctl audit verify` reads it. The same
//! description, with examples, is in `docs/audit.md`.
//!
//! # Format
//!
//! One record per line: UTF-8 JSON, terminated by `\n`. The last member of every line
//! is `"hash":"<64 lowercase hex>"`:
//!
//! ```text
//! {"seq":0,"prev":"000…000","kind":"genesis","time":"…","nonce":"…","file":0,"hash":"…"}
//! {"seq":1,"prev":"<hash of seq 0>","kind":"event","time":"…","uid":1000,…,"hash":"…"}
//! ```
//!
//! - The *body* of a line is the line without its hash member: the line minus its
//!   trailing `\n` and its final 75 bytes (`,"hash":"` + 64 hex + `"}`), with `}`
//!   appended. `hash = SHA-256(body)`, written as 64 lowercase hex digits.
//! - Every body starts with exactly `{"seq":N,"prev":"<64 hex>","kind":"<kind>"` (no
//!   whitespace; `N` in decimal without leading zeros). `seq` increases by exactly 1
//!   from record to record across the whole chain, rotated files included; `prev` is
//!   the previous record's hash, 64 zeros for the genesis record.
//! - `kind` is one of
//!   - `genesis`: seq 0, the first record of the first file. Members `time`, `nonce`
//!     (64 hex: 32 random bytes, so that two chains never share hashes) and `file` (0).
//!   - `continue`: the first record of every later file, after a rotation. Members
//!     `time` and `file`: the file's number in the chain, 1 for the second file, 2 for
//!     the third, ...
//!   - `restart`: the daemon reopened the chain. Members `time` and `torn_bytes`: how many
//!     bytes of an incomplete last line (a write cut short by a crash) it cut off first.
//!   - `event`: one [`AuditEvent`], its members in place (flattened into the object).
//! - `time` is RFC 3339 UTC with microseconds.
//!
//! Readers ignore members they do not know (the hash covers them all the same), so
//! events may gain fields without breaking older verifiers.
//!
//! # What a chain proves
//!
//! Changing, deleting, inserting or reordering records, dropping a file in the middle
//! or cutting a line short all break the chain at the first place touched, which
//! [`Verifier`] names. Removing whole records from the *end*, or rewriting the chain
//! from some point on with recomputed hashes, does not: that needs an anchor kept
//! elsewhere (the daemon logs its chain head to the journal).

use std::fmt;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::AuditEvent;

/// Length of a record hash (SHA-256) in bytes.
pub const HASH_LEN: usize = 32;

/// The longest line readers accept, in bytes, `\n` included: a bound on what a hostile
/// file can make a verifier buffer. Real records are a few hundred bytes.
pub const MAX_LINE: usize = 1 << 20;

/// `,"hash":"` + 64 hex + `"}`: the part of a line that is not in its body.
const SUFFIX_LEN: usize = 75;
const HASH_OPEN: &[u8] = b",\"hash\":\"";
const HASH_CLOSE: &[u8] = b"\"}";

const HEX: &[u8; 16] = b"0123456789abcdef";

/// The state of a chain after its last record: what the next record links to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChainHead {
    /// The next record's `seq`.
    pub next_seq: u64,
    /// The last record's hash: the next record's `prev`.
    pub hash: [u8; HASH_LEN],
}

impl ChainHead {
    /// An empty chain: the genesis record comes next, with `seq` 0 and `prev` all zeros.
    pub const ORIGIN: ChainHead = ChainHead { next_seq: 0, hash: [0; HASH_LEN] };

    /// The hash as 64 lowercase hex digits.
    pub fn hash_hex(&self) -> String {
        to_hex(&self.hash)
    }
}

impl Default for ChainHead {
    fn default() -> Self {
        Self::ORIGIN
    }
}

/// What a record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordKind {
    /// The chain's first record.
    Genesis,
    /// The first record of a file after a rotation.
    Continue,
    /// The daemon reopened the chain.
    Restart,
    /// An audited operation.
    Event,
}

impl RecordKind {
    /// The `kind` member's value.
    pub fn name(self) -> &'static str {
        match self {
            RecordKind::Genesis => "genesis",
            RecordKind::Continue => "continue",
            RecordKind::Restart => "restart",
            RecordKind::Event => "event",
        }
    }

    fn from_name(name: &[u8]) -> Option<Self> {
        Some(match name {
            b"genesis" => RecordKind::Genesis,
            b"continue" => RecordKind::Continue,
            b"restart" => RecordKind::Restart,
            b"event" => RecordKind::Event,
            _ => return None,
        })
    }
}

impl fmt::Display for RecordKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A record's content: everything but `seq`, `prev` and `hash`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordBody {
    /// The chain's first record (its `file` member is always 0).
    Genesis {
        /// RFC 3339 time.
        time: String,
        /// 32 random bytes that make this chain's hashes unlike any other's.
        nonce: [u8; 32],
    },
    /// The first record of a file after a rotation.
    Continue {
        /// RFC 3339 time.
        time: String,
        /// The file's number in the chain (the genesis file is 0), at least 1.
        file: u64,
    },
    /// The daemon reopened the chain.
    Restart {
        /// RFC 3339 time.
        time: String,
        /// Bytes of an incomplete last line cut off before this record (usually 0).
        torn_bytes: u64,
    },
    /// An audited operation.
    Event(AuditEvent),
}

impl RecordBody {
    /// What kind of record this is.
    pub fn kind(&self) -> RecordKind {
        match self {
            RecordBody::Genesis { .. } => RecordKind::Genesis,
            RecordBody::Continue { .. } => RecordKind::Continue,
            RecordBody::Restart { .. } => RecordKind::Restart,
            RecordBody::Event(_) => RecordKind::Event,
        }
    }
}

/// One decoded line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Position in the chain.
    pub seq: u64,
    /// The previous record's hash (zeros for genesis).
    pub prev: [u8; HASH_LEN],
    /// This record's hash, checked against its body.
    pub hash: [u8; HASH_LEN],
    /// The content.
    pub body: RecordBody,
}

impl Record {
    /// The chain's state right after this record.
    pub fn head_after(&self) -> ChainHead {
        // Wrapping, not panicking, on a hostile `u64::MAX`; a real chain never gets there.
        ChainHead { next_seq: self.seq.wrapping_add(1), hash: self.hash }
    }
}

/// Encodes `body` as the record after `head`: the line (with its `\n`) and the new head.
pub fn encode(head: &ChainHead, body: &RecordBody) -> (String, ChainHead) {
    let mut buf = Vec::with_capacity(512);
    let next = encode_into(&mut buf, head, body);
    // Every byte written is ASCII or copied from a `&str`, so the buffer is UTF-8.
    let line = String::from_utf8(buf).unwrap_or_else(|e| {
        String::from_utf8_lossy(e.as_bytes()).into_owned() // unreachable, see above
    });
    (line, next)
}

/// Appends the line for `body` (with its `\n`) after `head` to `buf` and returns the
/// new head. With a reused `buf`, this allocates nothing.
pub fn encode_into(buf: &mut Vec<u8>, head: &ChainHead, body: &RecordBody) -> ChainHead {
    let fields = match body {
        RecordBody::Genesis { time, nonce } => Fields::Genesis { time, nonce },
        RecordBody::Continue { time, file } => Fields::Continue { time, file: *file },
        RecordBody::Restart { time, torn_bytes } => {
            Fields::Restart { time, torn_bytes: *torn_bytes }
        }
        RecordBody::Event(event) => Fields::Event(event),
    };
    encode_fields(buf, head, fields)
}

/// [`encode_into`] for an event the caller keeps: the daemon's hot path, no clone.
pub fn encode_event_into(buf: &mut Vec<u8>, head: &ChainHead, event: &AuditEvent) -> ChainHead {
    encode_fields(buf, head, Fields::Event(event))
}

/// [`encode_event_into`] for a writer that renders the event itself: `write` appends the
/// event as the JSON object serde would make of an [`AuditEvent`] (`{"time":...}`; use
/// [`push_json_str`] and [`push_u64`]). The daemon renders straight from its own event
/// type this way, without building the `String`s of an `AuditEvent` first.
pub fn encode_event_with(
    buf: &mut Vec<u8>,
    head: &ChainHead,
    write: impl FnOnce(&mut Vec<u8>),
) -> ChainHead {
    let start = buf.len();
    begin_record(buf, head, RecordKind::Event);
    let at = buf.len();
    write(buf);
    // The object's `{` becomes the `,` after `kind`, as for a serialized event.
    if buf.get(at) == Some(&b'{') {
        buf[at] = b',';
    }
    end_record(buf, start, head)
}

/// A borrowed [`RecordBody`], so events need not be cloned to be encoded.
enum Fields<'a> {
    Genesis { time: &'a str, nonce: &'a [u8; 32] },
    Continue { time: &'a str, file: u64 },
    Restart { time: &'a str, torn_bytes: u64 },
    Event(&'a AuditEvent),
}

fn encode_fields(buf: &mut Vec<u8>, head: &ChainHead, fields: Fields<'_>) -> ChainHead {
    let start = buf.len();
    let kind = match fields {
        Fields::Genesis { .. } => RecordKind::Genesis,
        Fields::Continue { .. } => RecordKind::Continue,
        Fields::Restart { .. } => RecordKind::Restart,
        Fields::Event(_) => RecordKind::Event,
    };
    begin_record(buf, head, kind);
    match fields {
        Fields::Genesis { time, nonce } => {
            push_time(buf, time);
            buf.extend_from_slice(b",\"nonce\":\"");
            push_hex(buf, nonce);
            buf.extend_from_slice(b"\",\"file\":0}");
        }
        Fields::Continue { time, file } => {
            push_time(buf, time);
            buf.extend_from_slice(b",\"file\":");
            push_u64(buf, file);
            buf.push(b'}');
        }
        Fields::Restart { time, torn_bytes } => {
            push_time(buf, time);
            buf.extend_from_slice(b",\"torn_bytes\":");
            push_u64(buf, torn_bytes);
            buf.push(b'}');
        }
        Fields::Event(event) => {
            // The event serializes as `{...}`; its `{` becomes the `,` after `kind`, and
            // its `}` closes the body: flattened without an intermediate buffer.
            let at = buf.len();
            serde_json::to_writer(&mut *buf, event).expect(
                "a derived Serialize of strings, integers and options into a Vec cannot fail",
            );
            buf[at] = b',';
        }
    }
    end_record(buf, start, head)
}

/// `{"seq":N,"prev":"...","kind":"..."`: every record's opening members.
fn begin_record(buf: &mut Vec<u8>, head: &ChainHead, kind: RecordKind) {
    buf.extend_from_slice(b"{\"seq\":");
    push_u64(buf, head.next_seq);
    buf.extend_from_slice(b",\"prev\":\"");
    push_hex(buf, &head.hash);
    buf.extend_from_slice(b"\",\"kind\":\"");
    buf.extend_from_slice(kind.name().as_bytes());
    buf.push(b'"');
}

/// Hashes the body that starts at `start` (a complete object), puts the hash member
/// before its closing brace, ends the line, and returns the new head.
fn end_record(buf: &mut Vec<u8>, start: usize, head: &ChainHead) -> ChainHead {
    let hash: [u8; HASH_LEN] = Sha256::digest(&buf[start..]).into();
    buf.pop(); // the body's closing `}`: the hash member goes before it
    buf.extend_from_slice(HASH_OPEN);
    push_hex(buf, &hash);
    buf.extend_from_slice(HASH_CLOSE);
    buf.push(b'\n');
    ChainHead { next_seq: head.next_seq.wrapping_add(1), hash }
}

fn push_time(buf: &mut Vec<u8>, time: &str) {
    buf.extend_from_slice(b",\"time\":");
    push_json_str(buf, time);
}

/// Appends a JSON string, escaped as serde_json does: `"`, `\` and control characters
/// only.
pub fn push_json_str(buf: &mut Vec<u8>, s: &str) {
    buf.push(b'"');
    for &b in s.as_bytes() {
        match b {
            b'"' => buf.extend_from_slice(b"\\\""),
            b'\\' => buf.extend_from_slice(b"\\\\"),
            b'\n' => buf.extend_from_slice(b"\\n"),
            b'\r' => buf.extend_from_slice(b"\\r"),
            b'\t' => buf.extend_from_slice(b"\\t"),
            0x08 => buf.extend_from_slice(b"\\b"),
            0x0c => buf.extend_from_slice(b"\\f"),
            0..=0x1f => {
                buf.extend_from_slice(b"\\u00");
                buf.push(HEX[usize::from(b >> 4)]);
                buf.push(HEX[usize::from(b & 0xf)]);
            }
            _ => buf.push(b),
        }
    }
    buf.push(b'"');
}

/// Appends `n` in decimal.
pub fn push_u64(buf: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    buf.extend_from_slice(&digits[i..]);
}

fn push_hex(buf: &mut Vec<u8>, bytes: &[u8]) {
    for &b in bytes {
        buf.push(HEX[usize::from(b >> 4)]);
        buf.push(HEX[usize::from(b & 0xf)]);
    }
}

/// Bytes as lowercase hex.
pub fn to_hex(bytes: &[u8]) -> String {
    let mut buf = Vec::with_capacity(bytes.len() * 2);
    push_hex(&mut buf, bytes);
    buf.into_iter().map(char::from).collect()
}

/// 64 lowercase hex digits as 32 bytes; `None` for anything else (uppercase included:
/// the format has one spelling of each hash).
pub fn parse_hash(hex: &[u8]) -> Option<[u8; HASH_LEN]> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        }
    }
    if hex.len() != 2 * HASH_LEN {
        return None;
    }
    let mut out = [0u8; HASH_LEN];
    for (o, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
        *o = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(out)
}

/// Why one line is not a valid record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    /// The line is shaped like a record, but its hash does not match its body.
    #[error("hash mismatch")]
    HashMismatch,
    /// The line is not a record at all. The detail never quotes the line, which may be
    /// hostile (terminal escapes).
    #[error("not a record: {0}")]
    Malformed(String),
}

fn malformed(detail: &str) -> LineError {
    LineError::Malformed(detail.to_owned())
}

/// Decodes one line (with or without its `\n`) and checks its own hash. Linking to
/// other records is the [`Verifier`]'s job.
pub fn decode_line(line: &[u8]) -> Result<Record, LineError> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    if line.len() >= MAX_LINE {
        return Err(malformed("line too long"));
    }
    let Some(split) = line.len().checked_sub(SUFFIX_LEN) else {
        return Err(malformed("too short"));
    };
    let (open, suffix) = line.split_at(split);
    let (hash_open, rest) = suffix.split_at(HASH_OPEN.len());
    let (hash_hex, hash_close) = rest.split_at(2 * HASH_LEN);
    if hash_open != HASH_OPEN || hash_close != HASH_CLOSE {
        return Err(malformed("no hash member at the end"));
    }
    let hash = parse_hash(hash_hex).ok_or_else(|| malformed("the hash is not 64 lowercase hex"))?;
    let mut hasher = Sha256::new();
    hasher.update(open);
    hasher.update(b"}");
    if <[u8; HASH_LEN]>::from(hasher.finalize()) != hash {
        return Err(LineError::HashMismatch);
    }
    let Prefix { seq, prev, kind, rest } = parse_prefix(open)?;
    // The remaining members, `,"a":1,"b":2` or nothing, as an object of their own.
    let mut object = Vec::with_capacity(rest.len() + 2);
    object.push(b'{');
    if let Some(members) = rest.strip_prefix(b",") {
        object.extend_from_slice(members);
    } else if !rest.is_empty() {
        return Err(malformed("no `,` after kind"));
    }
    object.push(b'}');
    let body = decode_fields(kind, &object)?;
    Ok(Record { seq, prev, hash, body })
}

/// The fixed start of every body, and what follows it.
struct Prefix<'a> {
    seq: u64,
    prev: [u8; HASH_LEN],
    kind: RecordKind,
    rest: &'a [u8],
}

/// Parses `{"seq":N,"prev":"<hex>","kind":"<kind>"`.
fn parse_prefix(body: &[u8]) -> Result<Prefix<'_>, LineError> {
    let rest =
        body.strip_prefix(b"{\"seq\":").ok_or_else(|| malformed("does not start with seq"))?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    let bad_seq = || malformed("seq is not a decimal number");
    if digits == 0 || (digits > 1 && rest[0] == b'0') {
        return Err(bad_seq());
    }
    let mut seq: u64 = 0;
    for &d in &rest[..digits] {
        seq = seq
            .checked_mul(10)
            .and_then(|s| s.checked_add(u64::from(d - b'0')))
            .ok_or_else(bad_seq)?;
    }
    let rest = rest[digits..]
        .strip_prefix(b",\"prev\":\"")
        .ok_or_else(|| malformed("no prev after seq"))?;
    if rest.len() < 2 * HASH_LEN {
        return Err(malformed("prev is not 64 lowercase hex"));
    }
    let (prev_hex, rest) = rest.split_at(2 * HASH_LEN);
    let prev = parse_hash(prev_hex).ok_or_else(|| malformed("prev is not 64 lowercase hex"))?;
    let rest =
        rest.strip_prefix(b"\",\"kind\":\"").ok_or_else(|| malformed("no kind after prev"))?;
    let end =
        rest.iter().position(|&b| b == b'"').ok_or_else(|| malformed("kind is not a string"))?;
    let kind = RecordKind::from_name(&rest[..end]).ok_or_else(|| malformed("unknown kind"))?;
    Ok(Prefix { seq, prev, kind, rest: &rest[end + 1..] })
}

#[derive(Deserialize)]
struct GenesisFields {
    time: String,
    nonce: String,
    file: u64,
}

#[derive(Deserialize)]
struct ContinueFields {
    time: String,
    file: u64,
}

#[derive(Deserialize)]
struct RestartFields {
    time: String,
    torn_bytes: u64,
}

fn decode_fields(kind: RecordKind, object: &[u8]) -> Result<RecordBody, LineError> {
    fn parse<'a, T: Deserialize<'a>>(kind: RecordKind, object: &'a [u8]) -> Result<T, LineError> {
        // serde_json's messages can quote the input; report only where and what class.
        serde_json::from_slice(object).map_err(|e| {
            let what = match e.classify() {
                serde_json::error::Category::Data => format!("members do not fit a {kind} record"),
                _ => "invalid JSON".to_owned(),
            };
            LineError::Malformed(format!("{what} (near column {} of its members)", e.column()))
        })
    }
    Ok(match kind {
        RecordKind::Genesis => {
            let g: GenesisFields = parse(kind, object)?;
            if g.file != 0 {
                return Err(malformed("genesis record with a file number other than 0"));
            }
            let nonce = parse_hash(g.nonce.as_bytes())
                .ok_or_else(|| malformed("nonce is not 64 lowercase hex"))?;
            RecordBody::Genesis { time: g.time, nonce }
        }
        RecordKind::Continue => {
            let c: ContinueFields = parse(kind, object)?;
            if c.file == 0 {
                return Err(malformed("continue record with file number 0"));
            }
            RecordBody::Continue { time: c.time, file: c.file }
        }
        RecordKind::Restart => {
            let r: RestartFields = parse(kind, object)?;
            RecordBody::Restart { time: r.time, torn_bytes: r.torn_bytes }
        }
        RecordKind::Event => RecordBody::Event(parse(kind, object)?),
    })
}

/// Why a chain does not verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// The line's hash does not match its body: the record was changed.
    HashMismatch,
    /// A line in the middle of a file is not a record at all.
    NotARecord {
        /// What is wrong with it (never quoting it).
        detail: String,
    },
    /// A file's last line is incomplete: no `\n`, or not a record.
    Truncated,
    /// A file holds no records.
    EmptyFile,
    /// `seq` jumps forward: records were deleted, or a file is missing.
    MissingRecords {
        /// The seq found instead of the expected one.
        found: u64,
    },
    /// `seq` goes back, or jumps forward and then back: records swapped, reordered or
    /// repeated.
    OutOfOrder {
        /// The seq found instead of the expected one.
        found: u64,
    },
    /// `prev` is not the previous record's hash.
    BrokenLink,
    /// The first record of the chain is not a genesis record.
    NotChainStart {
        /// What it is instead.
        found: RecordKind,
    },
    /// A later file does not begin with a continue record.
    NotFileStart {
        /// What it begins with instead.
        found: RecordKind,
    },
    /// A genesis or continue record somewhere other than where a chain or file starts.
    Misplaced {
        /// Which.
        kind: RecordKind,
    },
    /// A continue record whose file number does not follow the previous file's.
    FileNumber {
        /// The number the chain expects.
        expected: u64,
        /// The number in the record.
        found: u64,
    },
    /// There was nothing to verify.
    NoRecords,
}

impl Fault {
    /// A stable snake_case name, for JSON output.
    pub fn name(&self) -> &'static str {
        match self {
            Fault::HashMismatch => "hash_mismatch",
            Fault::NotARecord { .. } => "not_a_record",
            Fault::Truncated => "truncated",
            Fault::EmptyFile => "empty_file",
            Fault::MissingRecords { .. } => "missing_records",
            Fault::OutOfOrder { .. } => "out_of_order",
            Fault::BrokenLink => "broken_link",
            Fault::NotChainStart { .. } => "not_chain_start",
            Fault::NotFileStart { .. } => "not_file_start",
            Fault::Misplaced { .. } => "misplaced",
            Fault::FileNumber { .. } => "file_number",
            Fault::NoRecords => "no_records",
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::HashMismatch => f.write_str("record changed (hash mismatch)"),
            Fault::NotARecord { detail } => write!(f, "record changed (not a record: {detail})"),
            Fault::Truncated => f.write_str("truncated (incomplete last line)"),
            Fault::EmptyFile => f.write_str("truncated (the file is empty)"),
            Fault::MissingRecords { found } => write!(
                f,
                "records missing (found seq {found} here: records deleted, or a file is missing)"
            ),
            Fault::OutOfOrder { found } => {
                write!(f, "out of order (found seq {found} here: records swapped or reordered)")
            }
            Fault::BrokenLink => {
                f.write_str("broken link (prev is not the previous record's hash)")
            }
            Fault::NotChainStart { found } => write!(
                f,
                "not a chain start (the first record is a {found} record, not genesis: \
                 earlier files are missing)"
            ),
            Fault::NotFileStart { found } => write!(
                f,
                "not a chain start (this file begins with a {found} record, not a continue record)"
            ),
            Fault::Misplaced { kind } => {
                write!(f, "misplaced {kind} record (allowed only where a chain or file starts)")
            }
            Fault::FileNumber { expected, found } => {
                write!(f, "wrong file number (continue record says {found}, expected {expected})")
            }
            Fault::NoRecords => f.write_str("no audit records"),
        }
    }
}

/// The first problem in a chain: where, and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainError {
    /// The file, as named to [`Verifier::start_file`] (empty for [`Fault::NoRecords`]).
    pub file: String,
    /// The line, from 1; 0 when the fault is about a whole file.
    pub line: u64,
    /// The seq the chain expects at this place.
    pub seq: u64,
    /// What is wrong.
    pub fault: Fault,
}

impl fmt::Display for ChainError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.fault, self.line) {
            (Fault::NoRecords, _) => write!(f, "{}", self.fault),
            (_, 0) => write!(f, "{} (seq {}): {}", self.file, self.seq, self.fault),
            (_, line) => write!(f, "{} line {line} (seq {}): {}", self.file, self.seq, self.fault),
        }
    }
}

impl std::error::Error for ChainError {}

/// What a verified chain holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainSummary {
    /// Records of every kind.
    pub records: u64,
    /// Event records.
    pub events: u64,
    /// Files.
    pub files: u64,
    /// The state after the last record: compare `hash` with an anchor kept elsewhere.
    pub head: ChainHead,
}

/// A verdict that waits for the next line: whether it follows tells what happened.
#[derive(Debug)]
enum Pending {
    /// A line that is not a record: changed if more lines follow in its file, truncated
    /// if it was the last.
    NotARecord { line: u64, detail: String },
    /// `seq` jumped forward: out of order if the next record's seq goes back below it,
    /// else records are missing.
    Gap { line: u64, found: u64 },
}

/// Checks a chain fed to it file by file, line by line, in chain order, and reports the
/// first problem.
///
/// ```text
/// let mut v = Verifier::new();
/// for file in files { v.start_file(name)?; for (n, line) in lines { v.line(n, line)? } }
/// let summary = v.finish()?;
/// ```
///
/// Lines are passed with their `\n`; a line without one is a truncated last line. Some
/// faults are reported one call late, once the next line (or its absence) tells what
/// they are; after the first error every call returns that error again.
#[derive(Debug, Default)]
pub struct Verifier {
    head: ChainHead,
    file: Option<String>,
    /// The chain number of the file being read, once its first record is in.
    file_number: Option<u64>,
    files: u64,
    records: u64,
    events: u64,
    /// Records in the file being read.
    file_records: u64,
    /// Lines (records or not) in the file being read.
    file_lines: u64,
    pending: Option<Pending>,
    failed: Option<ChainError>,
}

impl Verifier {
    /// A verifier expecting a chain from its genesis record.
    pub fn new() -> Self {
        Self::default()
    }

    /// The chain's state after the last good record.
    pub fn head(&self) -> ChainHead {
        self.head
    }

    /// The next file begins; `name` is how errors will name it.
    pub fn start_file(&mut self, name: impl Into<String>) -> Result<(), ChainError> {
        self.end_file()?;
        self.file = Some(name.into());
        self.files += 1;
        self.file_records = 0;
        self.file_lines = 0;
        Ok(())
    }

    /// The next line of the current file: `line_no` counts from 1, `line` includes its
    /// `\n` (absent only on a truncated last line).
    pub fn line(&mut self, line_no: u64, line: &[u8]) -> Result<(), ChainError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if self.file.is_none() {
            self.start_file("-")?;
        }
        self.file_lines += 1;
        let decoded = decode_line(line);
        match self.pending.take() {
            None => {}
            Some(Pending::NotARecord { line, detail }) => {
                return self.fail(line, Fault::NotARecord { detail });
            }
            Some(Pending::Gap { line, found }) => {
                let fault = match &decoded {
                    Ok(next) if next.seq < found => Fault::OutOfOrder { found },
                    _ => Fault::MissingRecords { found },
                };
                return self.fail(line, fault);
            }
        }
        if !line.ends_with(b"\n") {
            return self.fail(line_no, Fault::Truncated);
        }
        match decoded {
            Err(LineError::HashMismatch) => self.fail(line_no, Fault::HashMismatch),
            Err(LineError::Malformed(detail)) => {
                self.pending = Some(Pending::NotARecord { line: line_no, detail });
                Ok(())
            }
            Ok(record) => self.record(line_no, &record),
        }
    }

    /// The end of the input: the summary, or the first problem.
    pub fn finish(mut self) -> Result<ChainSummary, ChainError> {
        self.end_file()?;
        if self.records == 0 {
            return self.fail(0, Fault::NoRecords);
        }
        Ok(ChainSummary {
            records: self.records,
            events: self.events,
            files: self.files,
            head: self.head,
        })
    }

    /// Settles what waited for the end of the current file.
    fn end_file(&mut self) -> Result<(), ChainError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        match self.pending.take() {
            Some(Pending::NotARecord { line, .. }) => return self.fail(line, Fault::Truncated),
            Some(Pending::Gap { line, found }) => {
                return self.fail(line, Fault::MissingRecords { found });
            }
            None => {}
        }
        if self.file.is_some() && self.file_lines == 0 {
            return self.fail(0, Fault::EmptyFile);
        }
        Ok(())
    }

    fn record(&mut self, line_no: u64, record: &Record) -> Result<(), ChainError> {
        let kind = record.body.kind();
        let chain_start = self.records == 0;
        let file_start = self.file_records == 0;
        if chain_start && kind != RecordKind::Genesis {
            return self.fail(line_no, Fault::NotChainStart { found: kind });
        }
        let expected = self.head.next_seq;
        if record.seq > expected {
            self.pending = Some(Pending::Gap { line: line_no, found: record.seq });
            return Ok(());
        }
        if record.seq < expected {
            return self.fail(line_no, Fault::OutOfOrder { found: record.seq });
        }
        if record.prev != self.head.hash {
            return self.fail(line_no, Fault::BrokenLink);
        }
        match &record.body {
            RecordBody::Genesis { .. } if !chain_start => {
                return self.fail(line_no, Fault::Misplaced { kind });
            }
            RecordBody::Genesis { .. } => self.file_number = Some(0),
            RecordBody::Continue { .. } if !file_start => {
                return self.fail(line_no, Fault::Misplaced { kind });
            }
            RecordBody::Continue { file, .. } => {
                let want = self.file_number.map_or(1, |n| n.wrapping_add(1));
                if *file != want {
                    return self.fail(line_no, Fault::FileNumber { expected: want, found: *file });
                }
                self.file_number = Some(*file);
            }
            RecordBody::Restart { .. } | RecordBody::Event(_) if file_start => {
                return self.fail(line_no, Fault::NotFileStart { found: kind });
            }
            RecordBody::Restart { .. } => {}
            RecordBody::Event(_) => self.events += 1,
        }
        self.head = record.head_after();
        self.records += 1;
        self.file_records += 1;
        Ok(())
    }

    fn fail<T>(&mut self, line: u64, fault: Fault) -> Result<T, ChainError> {
        let file = match fault {
            Fault::NoRecords => String::new(),
            _ => self.file.clone().unwrap_or_else(|| "-".to_owned()),
        };
        let error = ChainError { file, line, seq: self.head.next_seq, fault };
        self.failed = Some(error.clone());
        Err(error)
    }
}

#[cfg(test)]
mod tests;
