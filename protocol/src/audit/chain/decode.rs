//! Reading one line back into a [`Record`], checking its own hash.

use super::*;

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
