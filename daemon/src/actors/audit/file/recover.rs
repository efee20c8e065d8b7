//! Opening the audit file: the directory and file checks, finding where the chain ends
//! (in the active file, or in the newest rotated one), cutting off a torn last line, and
//! the file-system steps of a rotation.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use harpocrates_protocol::audit::chain::{self, ChainHead, MAX_LINE, RecordBody};

use super::{AuditFile, AuditFileError, now};
use crate::peer::effective_uid;

/// Opens the chain at `path`; see [`AuditFile::open`].
pub(super) fn open(path: &Path, max_file_bytes: u64) -> Result<AuditFile, AuditFileError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    if path.file_name().is_none() {
        return Err(AuditFileError::UnsafeFile {
            path: path.to_owned(),
            reason: "the path does not name a file".into(),
        });
    }
    private_dir(&dir)?;
    let mut existing = match open_checked(path, true) {
        Ok(file) => Some(file),
        Err(AuditFileError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    let mut torn_bytes = 0;
    let mut committed_len = 0;
    let mut end = None;
    if let Some(file) = &existing {
        lock(file, path)?;
        let scan = scan(file, path)?;
        torn_bytes = scan.len - scan.complete;
        if torn_bytes > 0 {
            tracing::warn!(
                file = %path.display(),
                torn_bytes,
                "cutting off an incomplete last audit record (a write cut short by a crash)"
            );
            file.set_len(scan.complete).map_err(AuditFileError::io("truncate", path))?;
            file.sync_all().map_err(AuditFileError::io("sync", path))?;
        }
        committed_len = scan.complete;
        end = chain_end(&scan, path)?;
    }
    if end.is_none() {
        // No records in the active file: the chain, if any, ends in the newest rotated one.
        if let Some(rotated) = newest_rotated(path, &dir)? {
            if existing.is_none() {
                // Normal after a crash mid-rotation; otherwise someone removed the file.
                tracing::warn!(
                    file = %path.display(),
                    from = %rotated.display(),
                    "the active audit file is missing; the chain continues after the newest rotated file"
                );
            }
            let file = open_checked(&rotated, false)?;
            let scan = scan(&file, &rotated)?;
            if scan.complete != scan.len {
                return Err(corrupt(&rotated, "the rotated file ends in an incomplete line"));
            }
            end = chain_end(&scan, &rotated)?;
        }
    }
    let existed = existing.is_some();
    if existing.is_none() {
        existing = Some(create_active(path, &dir)?);
    }
    let (head, file_number) = end.unwrap_or((ChainHead::ORIGIN, 0));
    let mut audit = AuditFile {
        path: path.to_owned(),
        dir,
        max_file_bytes,
        file: existing,
        committed_len,
        committed_head: head,
        committed_file: file_number,
        dirty: false,
        pending: Vec::with_capacity(64 * 1024),
        splits: Vec::new(),
        head,
        pending_file: file_number,
        #[cfg(test)]
        fail: None,
    };
    if end.is_none() {
        let mut nonce = [0u8; 32];
        getrandom::fill(&mut nonce).map_err(|e| AuditFileError::Io {
            action: "get random bytes for",
            path: path.to_owned(),
            source: io::Error::other(e.to_string()),
        })?;
        let genesis = RecordBody::Genesis { time: now(), nonce };
        audit.head = chain::encode_into(&mut audit.pending, &audit.head, &genesis);
    } else if audit.committed_len == 0 {
        audit.push_continue();
    }
    if existed {
        audit.push_body(&RecordBody::Restart { time: now(), torn_bytes });
    }
    audit.commit(true)?;
    Ok(audit)
}

fn corrupt(path: &Path, reason: impl Into<String>) -> AuditFileError {
    AuditFileError::Corrupt { path: path.to_owned(), reason: reason.into() }
}

/// Creates the directory (0700) if missing, then insists it is a real directory owned
/// by us or root that nobody else can write to: whoever can write it can swap the files.
fn private_dir(dir: &Path) -> Result<(), AuditFileError> {
    if std::fs::symlink_metadata(dir).is_err() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(AuditFileError::io("create the directory", dir))?;
    }
    let unsafe_dir = |reason: String| AuditFileError::UnsafeDirectory { path: dir.into(), reason };
    let meta = std::fs::symlink_metadata(dir).map_err(AuditFileError::io("inspect", dir))?;
    if meta.file_type().is_symlink() {
        return Err(unsafe_dir("it is a symbolic link".into()));
    }
    if !meta.is_dir() {
        return Err(unsafe_dir("it is not a directory".into()));
    }
    let uid = effective_uid();
    if meta.uid() != uid && meta.uid() != 0 {
        return Err(unsafe_dir(format!("it is owned by uid {}, not {uid} or root", meta.uid())));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(unsafe_dir(format!(
            "its mode is {mode:04o}: others could replace the audit files; make it 0700 or 0755"
        )));
    }
    Ok(())
}

/// Opens an existing audit file (for appending too when `append`), never through a
/// symbolic link and never blocking on a FIFO, and checks it is a regular file of ours
/// that nobody else can write.
fn open_checked(path: &Path, append: bool) -> Result<File, AuditFileError> {
    let file = OpenOptions::new()
        .read(true)
        .append(append)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => AuditFileError::UnsafeFile {
                path: path.to_owned(),
                reason: "it is a symbolic link".into(),
            },
            _ => AuditFileError::io("open", path)(e),
        })?;
    check_file(&file, path)?;
    Ok(file)
}

fn check_file(file: &File, path: &Path) -> Result<(), AuditFileError> {
    let unsafe_file = |reason: String| AuditFileError::UnsafeFile { path: path.into(), reason };
    let meta = file.metadata().map_err(AuditFileError::io("inspect", path))?;
    if !meta.is_file() {
        return Err(unsafe_file("it is not a regular file".into()));
    }
    let uid = effective_uid();
    if meta.uid() != uid {
        return Err(unsafe_file(format!("it is owned by uid {}, not {uid}", meta.uid())));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(unsafe_file(format!("its mode is {mode:04o}: others could change it")));
    }
    Ok(())
}

/// Creates a new, empty active file (0600; never an existing one) and makes its name
/// durable.
pub(super) fn create_active(path: &Path, dir: &Path) -> Result<File, AuditFileError> {
    let file = OpenOptions::new()
        .read(true)
        .append(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(AuditFileError::io("create", path))?;
    check_file(&file, path)?;
    lock(&file, path)?;
    sync_dir(dir)?;
    Ok(file)
}

/// Two writers would interleave their chains: the second daemon is refused instead.
fn lock(file: &File, path: &Path) -> Result<(), AuditFileError> {
    // SAFETY: flock on a descriptor we own; it touches no memory.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if e.kind() == io::ErrorKind::WouldBlock {
        return Err(AuditFileError::UnsafeFile {
            path: path.to_owned(),
            reason: "another process is writing it".into(),
        });
    }
    Err(AuditFileError::io("lock", path)(e))
}

fn sync_dir(dir: &Path) -> Result<(), AuditFileError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(AuditFileError::io("sync the directory", dir))
}

/// `<name>.<k>` files next to `path`, as (k, path).
fn rotated(path: &Path, dir: &Path) -> Result<Vec<(u64, PathBuf)>, AuditFileError> {
    let name = path.file_name().map(OsStrExt::as_bytes).unwrap_or_default();
    let mut found = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(AuditFileError::io("list", dir))?;
    for entry in entries {
        let entry = entry.map_err(AuditFileError::io("list", dir))?;
        let file_name = entry.file_name();
        let Some(suffix) =
            file_name.as_bytes().strip_prefix(name).and_then(|s| s.strip_prefix(b"."))
        else {
            continue;
        };
        let digits = !suffix.is_empty() && suffix.iter().all(u8::is_ascii_digit);
        if let Some(k) =
            std::str::from_utf8(suffix).ok().filter(|_| digits).and_then(|s| s.parse().ok())
        {
            found.push((k, entry.path()));
        }
    }
    Ok(found)
}

fn newest_rotated(path: &Path, dir: &Path) -> Result<Option<PathBuf>, AuditFileError> {
    Ok(rotated(path, dir)?.into_iter().max_by_key(|(k, _)| *k).map(|(_, p)| p))
}

/// Renames the active file to `<name>.<k>`, k one past the highest in use, never
/// replacing anything, and makes the rename durable. Returns the new name.
pub(super) fn rename_aside(path: &Path, dir: &Path) -> Result<PathBuf, AuditFileError> {
    let mut k = rotated(path, dir)?.into_iter().map(|(k, _)| k).max().unwrap_or(0);
    loop {
        k += 1;
        let mut name = path.as_os_str().to_owned();
        name.push(format!(".{k}"));
        let to = PathBuf::from(name);
        match rename_noreplace(path, &to) {
            Ok(()) => {
                sync_dir(dir)?;
                return Ok(to);
            }
            // Someone made that name meanwhile: take the next.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && k < u64::MAX => continue,
            Err(e) => return Err(AuditFileError::io("rename", path)(e)),
        }
    }
}

fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        let c =
            |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(io::Error::other);
        let (cfrom, cto) = (c(from)?, c(to)?);
        // SAFETY: both paths are NUL-terminated and outlive the call, which only reads them.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_renameat2,
                libc::AT_FDCWD,
                cfrom.as_ptr(),
                libc::AT_FDCWD,
                cto.as_ptr(),
                libc::RENAME_NOREPLACE,
            )
        };
        if rc == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        // Older kernels or file systems without RENAME_NOREPLACE: check, then rename (the
        // directory is ours alone, so the gap between the two is not a race with anyone).
        if !matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOSYS)) {
            return Err(e);
        }
    }
    if std::fs::symlink_metadata(to).is_ok() {
        return Err(io::ErrorKind::AlreadyExists.into());
    }
    std::fs::rename(from, to)
}

/// Where a file's complete lines end, and its first and last complete lines.
pub(super) struct Scan {
    /// The file's length.
    pub len: u64,
    /// The length up to and including the last `\n`: what a torn last line is cut to.
    pub complete: u64,
    pub first: Option<Vec<u8>>,
    pub last: Option<Vec<u8>>,
}

const CHUNK: usize = 64 * 1024;

pub(super) fn scan(file: &File, path: &Path) -> Result<Scan, AuditFileError> {
    let read = AuditFileError::io("read", path);
    let len = file.metadata().map_err(AuditFileError::io("inspect", path))?.len();
    let inner = || -> io::Result<Scan> {
        let complete = rfind_newline(file, len)?.map_or(0, |p| p + 1);
        if complete == 0 {
            return Ok(Scan { len, complete, first: None, last: None });
        }
        let start = rfind_newline(file, complete - 1)?.map_or(0, |p| p + 1);
        let last = read_line(file, start, complete)?;
        let first_end = find_newline(file, complete)?.map_or(complete, |p| p + 1);
        let first = read_line(file, 0, first_end)?;
        Ok(Scan { len, complete, first: Some(first), last: Some(last) })
    };
    inner().map_err(read)
}

fn read_line(file: &File, start: u64, end: u64) -> io::Result<Vec<u8>> {
    let n = usize::try_from(end - start).unwrap_or(usize::MAX);
    if n > MAX_LINE {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "a line longer than MAX_LINE"));
    }
    let mut buf = vec![0; n];
    file.read_exact_at(&mut buf, start)?;
    Ok(buf)
}

/// The offset of the last `\n` before `end`.
fn rfind_newline(file: &File, mut end: u64) -> io::Result<Option<u64>> {
    let mut buf = vec![0; CHUNK];
    while end > 0 {
        let start = end.saturating_sub(CHUNK as u64);
        let chunk = &mut buf[..(end - start) as usize];
        file.read_exact_at(chunk, start)?;
        if let Some(i) = chunk.iter().rposition(|b| *b == b'\n') {
            return Ok(Some(start + i as u64));
        }
        end = start;
    }
    Ok(None)
}

/// The offset of the first `\n` before `end`, looking no further than [`MAX_LINE`].
fn find_newline(file: &File, end: u64) -> io::Result<Option<u64>> {
    let mut buf = vec![0; CHUNK];
    let mut start = 0;
    while start < end.min(MAX_LINE as u64 + 1) {
        let chunk = &mut buf[..(end - start).min(CHUNK as u64) as usize];
        file.read_exact_at(chunk, start)?;
        if let Some(i) = chunk.iter().position(|b| *b == b'\n') {
            return Ok(Some(start + i as u64));
        }
        start += chunk.len() as u64;
    }
    Ok(None)
}

/// The chain head after the file's last record and the file's number in the chain, from
/// its last and first lines; `None` for a file without records.
fn chain_end(scan: &Scan, path: &Path) -> Result<Option<(ChainHead, u64)>, AuditFileError> {
    let (Some(first), Some(last)) = (&scan.first, &scan.last) else {
        return Ok(None);
    };
    let number = match chain::decode_line(first) {
        Ok(r) => match r.body {
            RecordBody::Genesis { .. } => 0,
            RecordBody::Continue { file, .. } => file,
            _ => return Err(corrupt(path, "its first record is neither genesis nor continue")),
        },
        Err(e) => return Err(corrupt(path, format!("its first line is bad ({e})"))),
    };
    match chain::decode_line(last) {
        Ok(r) => Ok(Some((r.head_after(), number))),
        Err(e) => Err(corrupt(path, format!("its last line is bad ({e})"))),
    }
}
