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
    // Names and paths rarely need escaping: copy them whole when they do not.
    if !s.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20) {
        buf.extend_from_slice(s.as_bytes());
        buf.push(b'"');
        return;
    }
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
    // Into a stack buffer, then one copy: the hot path writes two hashes per record.
    let mut out = [0u8; 2 * HASH_LEN];
    for chunk in bytes.chunks(HASH_LEN) {
        for (pair, &b) in out.chunks_exact_mut(2).zip(chunk) {
            pair[0] = HEX[usize::from(b >> 4)];
            pair[1] = HEX[usize::from(b & 0xf)];
        }
        buf.extend_from_slice(&out[..2 * chunk.len()]);
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

mod decode;
mod verify;

pub use decode::{LineError, decode_line};
pub use verify::{ChainError, ChainSummary, Fault, Verifier};

#[cfg(test)]
mod tests;
