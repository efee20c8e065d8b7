//! Walking a chain across files and naming the first record that breaks it.

use super::*;

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
