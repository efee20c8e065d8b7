//! `harpoctl audit`: check the hash-chained audit file, and read its events.
//!
//! Both commands read files only and never need the daemon, so an auditor can run them
//! on a copy of the files anywhere. The format is in `docs/audit.md`.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use harpocrates_client::ClientOptions;
use harpocrates_protocol::audit::chain::{self, ChainError, MAX_LINE, RecordBody, Verifier};
use harpocrates_protocol::{AuditEvent, AuditPhase};
use serde_json::json;

use crate::Failure;
use crate::cli::AuditCommand;
use crate::output::Out;

/// How often `tail --follow` looks for new records.
const POLL: Duration = Duration::from_millis(200);

/// Runs an `audit` subcommand.
pub(crate) async fn run(
    cmd: AuditCommand,
    socket: &Path,
    options: ClientOptions,
    out: Out,
) -> Result<(), Failure> {
    match cmd {
        AuditCommand::Verify { files } => verify(&files, out),
        AuditCommand::Tail { file: Some(path), follow, lines } => {
            quiet_broken_pipe(tail_file(&path, lines, follow, out))
        }
        AuditCommand::Tail { file: None, follow, lines } => {
            live_tail(socket, options, lines, follow, out).await
        }
    }
}

/// `audit tail` without `--file`: the daemon's live audit stream (admin callers only).
/// The stream has no past: this prints the next `lines` events, or with `follow` every
/// event until the daemon or the user ends it.
pub(crate) async fn live_tail(
    socket: &Path,
    options: ClientOptions,
    lines: usize,
    follow: bool,
    out: Out,
) -> Result<(), Failure> {
    use futures::StreamExt;
    let client = harpocrates_client::Client::connect_with(socket, options).await?;
    let mut events = client.audit_events().await?;
    let mut shown = 0usize;
    let stdout = io::stdout();
    while follow || shown < lines {
        let Some(event) = events.next().await else { break };
        let event = event?;
        quiet_broken_pipe(print_event(&mut stdout.lock(), &event, out))?;
        shown += 1;
    }
    Ok(())
}

/// `harpoctl audit | head` closing the pipe is the reader being done, not an error.
fn quiet_broken_pipe(result: Result<(), Failure>) -> Result<(), Failure> {
    match result {
        Err(Failure::Io(e)) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

fn with_path(path: &Path, e: io::Error) -> Failure {
    Failure::Io(io::Error::new(e.kind(), format!("cannot read {}: {e}", path.display())))
}

/// Reads one line, `\n` included, into `buf`; a line longer than [`MAX_LINE`] is cut
/// there (with a `\n`, so the verifier rejects it as too long rather than as truncated)
/// and the rest of it skipped. Returns false at the end of the input.
fn read_line(reader: &mut impl BufRead, buf: &mut Vec<u8>) -> io::Result<bool> {
    buf.clear();
    reader.by_ref().take(MAX_LINE as u64 + 1).read_until(b'\n', buf)?;
    if buf.len() > MAX_LINE && buf.last() != Some(&b'\n') {
        let mut rest = Vec::new();
        reader.read_until(b'\n', &mut rest)?; // bounded by the file, held only briefly
        rest.clear();
        buf.push(b'\n');
    }
    Ok(!buf.is_empty())
}

/// The seq a file's first line claims, read without checking anything: only to put the
/// files in chain order, whatever order the shell gave them in.
fn first_seq(path: &Path) -> Result<Option<u64>, Failure> {
    let file = File::open(path).map_err(|e| with_path(path, e))?;
    let mut line = Vec::new();
    read_line(&mut BufReader::new(file), &mut line).map_err(|e| with_path(path, e))?;
    let digits = line.strip_prefix(b"{\"seq\":").map(|rest| {
        let n = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        &rest[..n]
    });
    Ok(digits.and_then(|d| std::str::from_utf8(d).ok()?.parse().ok()))
}

/// `audit verify FILE...`: exit 0 with a summary, or 1 naming the first broken record.
fn verify(files: &[PathBuf], out: Out) -> Result<(), Failure> {
    let mut ordered = Vec::with_capacity(files.len());
    for (i, path) in files.iter().enumerate() {
        // Files whose start is unreadable go last, as given: they fail where they stand.
        ordered.push((first_seq(path)?.unwrap_or(u64::MAX), i, path));
    }
    ordered.sort();
    match check(ordered.iter().map(|(_, _, p)| p.as_path()))? {
        Ok(summary) => {
            let head = summary.head.hash_hex();
            if out.json {
                println!(
                    "{}",
                    json!({
                        "ok": true,
                        "records": summary.records,
                        "events": summary.events,
                        "files": summary.files,
                        "head": head,
                        "head_seq": summary.head.next_seq.wrapping_sub(1),
                    })
                );
            } else {
                let plural =
                    |n: u64, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
                println!(
                    "OK: {} in {}, chain head {head}",
                    plural(summary.records, "record"),
                    plural(summary.files, "file")
                );
            }
            Ok(())
        }
        Err(e) => {
            if out.json {
                println!(
                    "{}",
                    json!({
                        "ok": false,
                        "file": e.file,
                        "line": e.line,
                        "seq": e.seq,
                        "fault": e.fault.name(),
                        "message": e.to_string(),
                    })
                );
            } else {
                println!("{e}");
            }
            Err(Failure::Exit(1))
        }
    }
}

/// Feeds the files, in order, to a [`Verifier`]: an I/O error, or the chain's verdict.
fn check<'a>(
    files: impl Iterator<Item = &'a Path>,
) -> Result<Result<chain::ChainSummary, ChainError>, Failure> {
    let mut verifier = Verifier::new();
    let mut line = Vec::with_capacity(1024);
    for path in files {
        let file = File::open(path).map_err(|e| with_path(path, e))?;
        let mut reader = BufReader::with_capacity(256 * 1024, file);
        if let Err(e) = verifier.start_file(path.display().to_string()) {
            return Ok(Err(e));
        }
        let mut line_no = 0;
        while read_line(&mut reader, &mut line).map_err(|e| with_path(path, e))? {
            line_no += 1;
            if let Err(e) = verifier.line(line_no, &line) {
                return Ok(Err(e));
            }
        }
    }
    Ok(verifier.finish())
}

/// Reads a growing file from where it left off, line by line, and notices when the file
/// at its path is replaced (rotation) or cut back (a write the daemon rolled back).
struct Follower<'a> {
    path: &'a Path,
    file: File,
    id: (u64, u64),
    offset: u64,
    line_no: u64,
    partial: Vec<u8>,
}

impl<'a> Follower<'a> {
    fn open(path: &'a Path) -> Result<Self, Failure> {
        let file = File::open(path).map_err(|e| with_path(path, e))?;
        let meta = file.metadata().map_err(|e| with_path(path, e))?;
        let id = (meta.dev(), meta.ino());
        Ok(Follower { path, file, id, offset: 0, line_no: 0, partial: Vec::new() })
    }

    /// Hands every complete new line to `each`.
    fn read_new(&mut self, mut each: impl FnMut(u64, &[u8])) -> Result<(), Failure> {
        let err = |e| with_path(self.path, e);
        let len = self.file.metadata().map_err(err)?.len();
        if len < self.offset {
            // Cut back: what we read past `len` was never committed.
            self.file.seek(SeekFrom::Start(len)).map_err(err)?;
            self.offset = len;
            self.partial.clear();
        }
        let mut buf = [0u8; 64 * 1024];
        loop {
            let n = self.file.read(&mut buf).map_err(err)?;
            if n == 0 {
                return Ok(());
            }
            self.offset += n as u64;
            let mut rest = &buf[..n];
            while let Some(i) = rest.iter().position(|b| *b == b'\n') {
                self.partial.extend_from_slice(&rest[..=i]);
                self.line_no += 1;
                each(self.line_no, &self.partial);
                self.partial.clear();
                rest = &rest[i + 1..];
            }
            self.partial.extend_from_slice(rest);
            if self.partial.len() > MAX_LINE {
                self.partial.clear(); // not a record; its tail shows up as a bad line
            }
        }
    }

    /// After a rotation, the path names a new file: finish the old one, then every file
    /// rotated after it (several rotations may fall between two polls), then carry on
    /// with the new active file. `each` gets all their lines.
    fn follow_rotation(&mut self, mut each: impl FnMut(u64, &[u8])) -> Result<(), Failure> {
        let Ok(meta) = std::fs::metadata(self.path) else {
            return Ok(()); // renamed, the next not created yet
        };
        if (meta.dev(), meta.ino()) == self.id {
            return Ok(());
        }
        self.read_new(&mut each)?;
        let rotated = rotated_files(self.path);
        // Where the file we followed went; if it left the directory, we cannot tell.
        let mut done = rotated.iter().find(|(_, _, id)| *id == self.id).map(|(k, _, _)| *k);
        loop {
            if let Some(k) = done {
                for (k2, path, _) in rotated_files(self.path).into_iter().filter(|(k2, ..)| *k2 > k)
                {
                    let mut older = Follower::open(&path)?;
                    older.read_new(&mut each)?;
                    done = Some(k2);
                }
            }
            let next = Follower::open(self.path)?;
            // Rotated again while we read? Then `next` is not the file that comes next.
            let again =
                done.is_some_and(|k| rotated_files(self.path).iter().any(|(k2, ..)| *k2 > k));
            if !again {
                *self = next;
                return Ok(());
            }
        }
    }
}

/// The `<name>.<k>` files next to `path`: (k, path, (dev, inode)).
fn rotated_files(path: &Path) -> Vec<(u64, PathBuf, (u64, u64))> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return Vec::new();
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: Vec<_> = entries
        .filter_map(|e| {
            let e = e.ok()?;
            let file_name = e.file_name();
            let suffix = file_name.to_str()?.strip_prefix(name)?.strip_prefix('.')?;
            if suffix.is_empty() || !suffix.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let meta = e.metadata().ok()?;
            Some((suffix.parse().ok()?, e.path(), (meta.dev(), meta.ino())))
        })
        .collect();
    found.sort();
    found
}

/// `audit tail --file PATH`: the last `n` events, then (`follow`) new ones as they come.
fn tail_file(path: &Path, n: usize, follow: bool, out: Out) -> Result<(), Failure> {
    let mut follower = Follower::open(path)?;
    let mut last = VecDeque::with_capacity(n.min(4096));
    let name = path.display().to_string();
    follower.read_new(|line_no, line| {
        if let Some(event) = event_of(&name, line_no, line) {
            if last.len() == n {
                last.pop_front();
            }
            if n > 0 {
                last.push_back(event);
            }
        }
    })?;
    let stdout = io::stdout();
    let mut w = stdout.lock();
    for event in &last {
        print_event(&mut w, event, out)?;
    }
    w.flush()?;
    drop(w);
    if !follow {
        return Ok(());
    }
    loop {
        std::thread::sleep(POLL);
        let mut w = stdout.lock();
        let mut result = Ok(());
        let mut each = |line_no, line: &[u8]| {
            if let Some(event) = event_of(&name, line_no, line)
                && result.is_ok()
            {
                result = print_event(&mut w, &event, out);
            }
        };
        follower.read_new(&mut each)?;
        follower.follow_rotation(&mut each)?;
        result?;
        w.flush()?;
    }
}

/// The event in a line; other records are skipped, and bad lines reported on stderr
/// (`audit verify` is the command that judges them).
fn event_of(name: &str, line_no: u64, line: &[u8]) -> Option<AuditEvent> {
    match chain::decode_line(line) {
        Ok(record) => match record.body {
            RecordBody::Event(event) => Some(event),
            _ => None,
        },
        Err(e) => {
            eprintln!("harpoctl: {name} line {line_no}: skipped, {e}");
            None
        }
    }
}

fn print_event(w: &mut impl Write, e: &AuditEvent, out: Out) -> Result<(), Failure> {
    if out.json {
        let text = serde_json::to_string(e).map_err(io::Error::other)?;
        writeln!(w, "{text}")?;
        return Ok(());
    }
    let target = match (&e.key, &e.kek, e.version) {
        (Some(key), _, _) => clean(key),
        (None, Some(kek), Some(v)) => format!("{}@{v}", clean(kek)),
        (None, Some(kek), None) => clean(kek),
        (None, None, _) => "-".into(),
    };
    let op = match e.element {
        Some(i) => format!("{}[{i}]", clean(&e.op)),
        None => clean(&e.op),
    };
    let result = match e.phase {
        AuditPhase::Intent => "intent".to_owned(),
        AuditPhase::Done => clean(&e.result),
    };
    let pid = e.pid.map_or_else(|| "-".to_owned(), |p| p.to_string());
    writeln!(
        w,
        "{} uid={} pid={pid} {op} {target} {result} {}µs",
        clean(&e.time),
        e.uid,
        e.latency_us
    )?;
    Ok(())
}

/// Text from the file as one safe terminal word: control characters (a hostile file's
/// terminal escapes) and spaces escaped.
fn clean(s: &str) -> String {
    if s.is_empty() {
        return "\"\"".into();
    }
    s.chars()
        .map(|c| match c {
            ' ' => "\\u{20}".to_owned(),
            c if c.is_control() => c.escape_default().to_string(),
            c => c.into(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_escapes_in_a_file_are_printed_harmlessly() {
        assert_eq!(clean("k1"), "k1");
        assert_eq!(clean("a b\u{1b}[2J\n"), "a\\u{20}b\\u{1b}[2J\\n");
        assert_eq!(clean(""), "\"\"");
    }

    #[test]
    fn an_overlong_line_is_cut_and_marked() {
        let mut data = vec![b'x'; MAX_LINE + 10];
        data.extend_from_slice(b"\nnext\n");
        let mut r = io::Cursor::new(data);
        let mut line = Vec::new();
        assert!(read_line(&mut r, &mut line).unwrap());
        assert_eq!(line.len(), MAX_LINE + 2);
        assert!(read_line(&mut r, &mut line).unwrap());
        assert_eq!(line, b"next\n");
        assert!(!read_line(&mut r, &mut line).unwrap());
    }
}
