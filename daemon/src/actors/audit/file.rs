//! The hash-chained audit file: append-only, rotated by size, recovered after a crash.
//!
//! Records are encoded by [`harpocrates_protocol::audit::chain`] (the format is in
//! `docs/audit.md`). [`AuditFile::append`] only encodes into a buffer;
//! [`AuditFile::commit`] writes the buffer with one `write` (and an `fdatasync` when
//! asked), so a burst of events costs one system call. A commit is all or nothing: when
//! anything fails (a full disk, an I/O error) the file is cut back to the last committed
//! length and the chain head restored, so the file never holds a partial or unlinked
//! record and the chain carries on cleanly once the disk has room again.
//!
//! Rotation: a record that would take the active file past `max_file_bytes` goes to a new
//! file instead. The active file is synced and renamed to `<name>.<k>` (the next free
//! number, so older files have lower numbers; nothing is ever overwritten or deleted), a
//! new `<name>` is created, and its first record is a `continue` record linked to the
//! last record of the old one. A file is larger than `max_file_bytes` only when a single
//! record is.

mod recover;
#[cfg(test)]
mod tests;

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use harpocrates_protocol::AuditEvent;
use harpocrates_protocol::audit::chain::{self, ChainHead, RecordBody};

/// Why the audit file could not be opened or written. Never carries record contents.
#[derive(Debug, thiserror::Error)]
pub enum AuditFileError {
    /// A file-system operation failed.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done (`write`, `sync`, `rename`, ...).
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The directory could be changed by someone else, or is not a directory.
    #[error("refusing the audit directory {}: {reason}", path.display())]
    UnsafeDirectory {
        /// The directory.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The file is not ours, could be changed by someone else, or is not a regular file.
    #[error("refusing the audit file {}: {reason}", path.display())]
    UnsafeFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The existing chain cannot be continued.
    #[error(
        "cannot continue the audit chain in {}: {reason}; move the file aside to start anew",
        path.display()
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

impl AuditFileError {
    fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> Self + 'a {
        move |source| AuditFileError::Io { action, path: path.to_owned(), source }
    }
}

/// Where pending bytes move on to a new file.
#[derive(Debug, Clone, Copy)]
struct Split {
    /// Offset in `pending` of the new file's first byte (its `continue` record).
    at: usize,
    /// The chain head at the end of the old file.
    head: ChainHead,
    /// The old file's number in the chain.
    file: u64,
}

/// The audit file writer (see the module docs).
#[derive(Debug)]
pub struct AuditFile {
    /// The active file's path.
    path: PathBuf,
    dir: PathBuf,
    max_file_bytes: u64,
    /// The active file; `None` after a rotation renamed it but could not create the next.
    file: Option<File>,
    /// Bytes of the active file that hold committed records.
    committed_len: u64,
    /// The head after the last committed record.
    committed_head: ChainHead,
    /// The chain number of the file holding the last committed record.
    committed_file: u64,
    /// A failed truncation may have left bytes past `committed_len`: cut them first.
    dirty: bool,
    /// Encoded records not yet written, and where they move on to new files.
    pending: Vec<u8>,
    splits: Vec<Split>,
    /// The head and file number after the last pending record.
    head: ChainHead,
    pending_file: u64,
    #[cfg(test)]
    fail: Option<tests::FailAt>,
}

/// Buffer capacity kept between commits; a larger one (after a huge burst) is released.
const KEEP_CAPACITY: usize = 1 << 20;

fn now() -> String {
    humantime::format_rfc3339_micros(SystemTime::now()).to_string()
}

impl AuditFile {
    /// Opens the chain at `path` (creating it, its directory, or a new file after the
    /// rotated ones as needed) and durably writes its first record: `genesis` for a new
    /// chain, otherwise `restart` after the active file's last record (cutting off an
    /// incomplete last line a crash left), or `continue` when only rotated files remain.
    pub fn open(path: &Path, max_file_bytes: u64) -> Result<AuditFile, AuditFileError> {
        recover::open(path, max_file_bytes)
    }

    /// Encodes events into the pending buffer; nothing is written until [`commit`](Self::commit).
    pub fn append<'a>(&mut self, events: impl IntoIterator<Item = &'a AuditEvent>) {
        for event in events {
            self.push(|buf, head| chain::encode_event_into(buf, head, event));
        }
    }

    /// Encodes one event rendered by `write` (see [`chain::encode_event_with`]) into the
    /// pending buffer.
    pub fn append_rendered(&mut self, write: impl Fn(&mut Vec<u8>)) {
        self.push(|buf, head| chain::encode_event_with(buf, head, &write));
    }

    /// Writes everything appended since the last commit, with an `fdatasync` when `sync`.
    /// On error nothing of it is in the file (it is cut back), the chain head is the last
    /// committed one and the pending records are discarded.
    pub fn commit(&mut self, sync: bool) -> Result<(), AuditFileError> {
        let mut pending = std::mem::take(&mut self.pending);
        let result = self.write_out(&pending, sync);
        if result.is_err() {
            self.roll_back();
        }
        pending.clear();
        if pending.capacity() > KEEP_CAPACITY {
            pending.shrink_to(KEEP_CAPACITY);
        }
        self.pending = pending;
        self.splits.clear();
        result
    }

    /// The last committed record's seq and hash (hex): the anchor to log elsewhere.
    pub fn head(&self) -> (u64, String) {
        let h = &self.committed_head;
        (h.next_seq.wrapping_sub(1), h.hash_hex())
    }

    /// The chain head after the last committed record.
    pub fn chain_head(&self) -> ChainHead {
        self.committed_head
    }

    /// Bytes appended and not yet committed.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Whether nothing is waiting for a commit.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// The active file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one record; it goes to a new file when it would take the current one past
    /// `max_file_bytes` (unless the current one is empty: a record larger than the limit
    /// still needs a home).
    fn push(&mut self, encode: impl Fn(&mut Vec<u8>, &ChainHead) -> ChainHead) {
        if self.splits.is_empty() && self.committed_len == 0 && self.pending.is_empty() {
            // An empty active file (after a failed rotation) must open with `continue`.
            self.push_continue();
        }
        let before = self.pending.len();
        let head = self.head;
        self.head = encode(&mut self.pending, &head);
        let target = match self.splits.last() {
            Some(s) => (before - s.at) as u64,
            None => self.committed_len + before as u64,
        };
        if target > 0 && target + (self.pending.len() - before) as u64 > self.max_file_bytes {
            self.pending.truncate(before);
            self.head = head;
            self.splits.push(Split { at: before, head, file: self.pending_file });
            self.push_continue();
            let head = self.head;
            self.head = encode(&mut self.pending, &head);
        }
    }

    fn push_continue(&mut self) {
        self.pending_file += 1;
        let body = RecordBody::Continue { time: now(), file: self.pending_file };
        self.head = chain::encode_into(&mut self.pending, &self.head, &body);
    }

    fn push_body(&mut self, body: &RecordBody) {
        self.push(|buf, head| chain::encode_into(buf, head, body));
    }

    /// Writes `pending` segment by segment (one per file), committing each as it lands.
    fn write_out(&mut self, pending: &[u8], sync: bool) -> Result<(), AuditFileError> {
        if self.dirty {
            if let Some(file) = &self.file {
                file.set_len(self.committed_len)
                    .map_err(AuditFileError::io("truncate", &self.path))?;
            }
            self.dirty = false;
        }
        if pending.is_empty() {
            if sync && let Some(file) = &self.file {
                self.sync(file)?;
            }
            return Ok(());
        }
        let last = Split { at: pending.len(), head: self.head, file: self.pending_file };
        let mut start = 0;
        for (i, split) in self.splits.clone().into_iter().chain([last]).enumerate() {
            let rotate = i < self.splits.len();
            if self.file.is_none() {
                self.file = Some(recover::create_active(&self.path, &self.dir)?);
                self.committed_len = 0;
            }
            let segment = &pending[start..split.at];
            if let Some(file) = &self.file {
                self.write(file, segment)?;
                if rotate || sync {
                    self.sync(file)?;
                }
            }
            self.committed_len += segment.len() as u64;
            self.committed_head = split.head;
            self.committed_file = split.file;
            start = split.at;
            if rotate {
                self.rotate()?;
            }
        }
        Ok(())
    }

    fn write(&self, mut file: &File, bytes: &[u8]) -> Result<(), AuditFileError> {
        #[cfg(test)]
        if let Some(tests::FailAt::Write { after }) = self.fail {
            let _ = file.write_all(&bytes[..after.min(bytes.len())]);
            return Err(AuditFileError::io("write", &self.path)(tests::injected()));
        }
        // One write, looped by write_all only when the kernel takes less (or EINTR).
        file.write_all(bytes).map_err(AuditFileError::io("write", &self.path))
    }

    fn sync(&self, file: &File) -> Result<(), AuditFileError> {
        #[cfg(test)]
        if let Some(tests::FailAt::Sync) = self.fail {
            return Err(AuditFileError::io("sync", &self.path)(tests::injected()));
        }
        file.sync_data().map_err(AuditFileError::io("sync", &self.path))
    }

    /// Renames the (synced) active file to the next free `<name>.<k>`; the next segment
    /// creates a new one.
    fn rotate(&mut self) -> Result<(), AuditFileError> {
        #[cfg(test)]
        if let Some(tests::FailAt::Rename) = self.fail {
            return Err(AuditFileError::io("rename", &self.path)(tests::injected()));
        }
        let to = recover::rename_aside(&self.path, &self.dir)?;
        self.file = None;
        self.committed_len = 0;
        let (seq, head) = self.head();
        // The anchor: with this line in the journal, a rewritten chain shows.
        tracing::info!(file = %to.display(), seq, head = %head, "audit file rotated");
        #[cfg(test)]
        if let Some(tests::FailAt::Create) = self.fail {
            return Err(AuditFileError::io("create", &self.path)(tests::injected()));
        }
        Ok(())
    }

    /// Forgets what was not committed and cuts the active file back to its committed
    /// length, so a failed write leaves no partial record behind.
    fn roll_back(&mut self) {
        self.head = self.committed_head;
        self.pending_file = self.committed_file;
        if let Some(file) = &self.file
            && file.set_len(self.committed_len).is_err()
        {
            // Retried before the next write: appending after garbage would break the chain.
            self.dirty = true;
        }
    }
}
