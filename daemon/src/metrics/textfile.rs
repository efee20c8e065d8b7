//! The metrics as a file for node_exporter's textfile collector (`[metrics] textfile`),
//! rewritten every `interval`.
//!
//! The collector may read the file at any moment, so it is never written in place: a
//! temporary file is created beside it (same directory, so the rename cannot cross file
//! systems), written, fsynced, given mode 0644, and renamed over the old one. The
//! temporary name starts with a dot and does not end in `.prom`, so the collector never
//! reads a half-written file. It is created with `O_CREAT | O_EXCL | O_NOFOLLOW`, so a file
//! or symlink someone left at that name is never followed, truncated or removed: another
//! name is tried instead. Only a temporary file this process created is ever removed.

use std::fs::{File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use harpocrates_protocol::MetricsSnapshot;
use tokio_util::sync::CancellationToken;

/// Default time between two writes of the textfile.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(15);
/// Validated `[metrics]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsSettings {
    /// The file rewritten with the Prometheus text format; `None`: no file.
    pub textfile: Option<PathBuf>,
    /// Time between two writes.
    pub interval: Duration,
}

impl Default for MetricsSettings {
    fn default() -> Self {
        Self { textfile: None, interval: DEFAULT_INTERVAL }
    }
}

/// Names tried for the temporary file before giving up.
const ATTEMPTS: u64 = 16;

/// Told apart the temporary files of successive writes.
static NEXT_TEMP: AtomicU64 = AtomicU64::new(0);

/// A write of the textfile failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot {action} {}: {source}", path.display())]
pub struct TextfileError {
    /// What was being done.
    pub action: &'static str,
    /// The file it was done to.
    pub path: PathBuf,
    /// The OS error.
    pub source: io::Error,
}

fn failed<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> TextfileError + 'a {
    move |source| TextfileError { action, path: path.to_owned(), source }
}

/// The temporary name for `target` number `n`: hidden, in the same directory, not `.prom`.
fn temp_path(target: &Path, n: u64) -> PathBuf {
    let name = target.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
    target.with_file_name(format!(".{name}.{}.{n}.tmp", std::process::id()))
}

/// Replaces `target` with `contents` atomically: readers see the old file or the new one,
/// never a mix, and after a crash one of the two is there.
pub fn write_atomically(target: &Path, contents: &[u8]) -> Result<(), TextfileError> {
    write_from(target, contents, NEXT_TEMP.fetch_add(ATTEMPTS, Ordering::Relaxed))
}

/// [`write_atomically`], trying temporary names numbered from `first`.
fn write_from(target: &Path, contents: &[u8], first: u64) -> Result<(), TextfileError> {
    let (temp, file) = create_temp(target, first)?;
    let written = fill(&file, contents)
        .map_err(failed("write", &temp))
        .and_then(|()| std::fs::rename(&temp, target).map_err(failed("replace", target)));
    if written.is_err() {
        // Ours: created by us with O_EXCL a moment ago.
        let _ = std::fs::remove_file(&temp);
        return written;
    }
    // Makes the rename itself durable; the file is whole either way.
    if let Some(dir) = target.parent()
        && let Ok(dir) = File::open(dir)
    {
        let _ = dir.sync_all();
    }
    Ok(())
}

/// Creates a fresh temporary file beside `target`, never opening one that exists.
fn create_temp(target: &Path, first: u64) -> Result<(PathBuf, File), TextfileError> {
    let mut last = None;
    for n in first..first + ATTEMPTS {
        let temp = temp_path(target, n);
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&temp)
        {
            Ok(file) => return Ok((temp, file)),
            // Someone else's file (or symlink) at this name: leave it, try another.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some((temp, e)),
            Err(e) => return Err(failed("create", &temp)(e)),
        }
    }
    let (temp, e) =
        last.unwrap_or_else(|| (temp_path(target, first), io::ErrorKind::AlreadyExists.into()));
    Err(failed("create", &temp)(e))
}

fn fill(mut file: &File, contents: &[u8]) -> io::Result<()> {
    // The umask may have taken bits away: the collector (another user) must read it.
    file.set_permissions(Permissions::from_mode(0o644))?;
    file.write_all(contents)?;
    file.sync_all()
}

/// Writes `snapshot()` in the Prometheus text format to `settings.textfile` every
/// `settings.interval`, first at once, until `shutdown`. Returns at once when no textfile
/// is configured. A failed write is logged (once, until a write succeeds again) and
/// retried at the next interval; the file is written on the blocking pool, so a slow disk
/// never holds up the thread this runs on.
pub async fn run<F>(settings: MetricsSettings, snapshot: F, shutdown: CancellationToken)
where
    F: Fn() -> MetricsSnapshot,
{
    let Some(path) = settings.textfile else { return };
    tracing::info!(
        path = %path.display(),
        interval = %humantime::format_duration(settings.interval),
        "writing metrics for node_exporter's textfile collector"
    );
    let mut tick = tokio::time::interval(settings.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => break,
        }
        let snapshot = snapshot();
        let target = path.clone();
        let written = tokio::task::spawn_blocking(move || {
            write_atomically(&target, snapshot.to_prometheus().as_bytes())
        })
        .await;
        match written {
            Ok(Ok(())) => {
                if std::mem::take(&mut failing) {
                    tracing::info!(path = %path.display(), "metrics textfile written again");
                }
            }
            Ok(Err(e)) => {
                if !std::mem::replace(&mut failing, true) {
                    tracing::warn!("metrics textfile: {e}; retrying every interval");
                }
            }
            Err(e) => tracing::error!("metrics textfile writer panicked: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn leftovers(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .expect("read dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp"))
            .collect()
    }

    #[test]
    fn replaces_the_file_whole_with_mode_0644_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("harpocrates.prom");
        write_atomically(&target, b"first 1\n").expect("first write");
        let before = std::fs::metadata(&target).expect("stat");
        write_atomically(&target, b"second 2\n").expect("second write");
        assert_eq!(std::fs::read(&target).expect("read"), b"second 2\n");
        let after = std::fs::metadata(&target).expect("stat");
        use std::os::unix::fs::MetadataExt;
        assert_ne!(before.ino(), after.ino(), "a new file was renamed over the old one");
        assert_eq!(after.mode() & 0o777, 0o644);
        assert!(leftovers(dir.path()).is_empty(), "{:?}", leftovers(dir.path()));
    }

    #[test]
    fn a_missing_directory_is_an_error_naming_the_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("no/such/dir/harpocrates.prom");
        let e = write_atomically(&target, b"x 1\n").expect_err("no directory");
        assert_eq!(e.source.kind(), io::ErrorKind::NotFound);
        assert!(e.to_string().contains("no/such/dir"), "{e}");
        assert!(!target.exists());
    }

    #[test]
    fn a_failed_rename_removes_only_our_temporary_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        // A directory where the file should be: the rename fails.
        let target = dir.path().join("harpocrates.prom");
        std::fs::create_dir(&target).expect("mkdir");
        let e = write_atomically(&target, b"x 1\n").expect_err("a directory is in the way");
        assert!(e.to_string().contains("replace"), "{e}");
        assert!(target.is_dir());
        assert!(leftovers(dir.path()).is_empty(), "{:?}", leftovers(dir.path()));
    }

    #[test]
    fn never_follows_or_removes_what_sits_at_a_temporary_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("harpocrates.prom");
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"precious").expect("victim");
        // A symlink and a plain file planted at the first two temporary names.
        let first = 1_000;
        std::os::unix::fs::symlink(&victim, temp_path(&target, first)).expect("symlink");
        std::fs::write(temp_path(&target, first + 1), b"theirs").expect("plant");
        write_from(&target, b"ours 1\n", first).expect("write under a third name");
        assert_eq!(std::fs::read(&target).expect("read"), b"ours 1\n");
        assert_eq!(std::fs::read(&victim).expect("victim"), b"precious", "not followed");
        assert_eq!(std::fs::read(temp_path(&target, first + 1)).expect("theirs"), b"theirs");
        assert!(temp_path(&target, first).symlink_metadata().is_ok(), "not removed");
        assert!(!temp_path(&target, first + 2).exists(), "ours was renamed away");
    }

    #[test]
    fn a_symlink_at_the_target_is_replaced_not_followed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"precious").expect("victim");
        let target = dir.path().join("harpocrates.prom");
        std::os::unix::fs::symlink(&victim, &target).expect("symlink");
        write_atomically(&target, b"ours 1\n").expect("write");
        assert_eq!(std::fs::read(&victim).expect("victim"), b"precious");
        assert!(target.symlink_metadata().expect("stat").file_type().is_file());
    }

    #[test]
    fn run_writes_at_once_and_every_interval_until_shutdown() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("harpocrates.prom");
        let settings =
            MetricsSettings { textfile: Some(target.clone()), interval: Duration::from_millis(20) };
        let calls = std::sync::Arc::new(AtomicU64::new(0));
        let shutdown = CancellationToken::new();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
        rt.block_on(async {
            let counted = calls.clone();
            let metrics = crate::metrics::Metrics::new();
            let task = tokio::spawn(run(
                settings,
                move || {
                    counted.fetch_add(1, Ordering::Relaxed);
                    metrics.snapshot()
                },
                shutdown.clone(),
            ));
            while calls.load(Ordering::Relaxed) < 3 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            shutdown.cancel();
            tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .expect("stops on shutdown")
                .expect("no panic");
        });
        let text = std::fs::read_to_string(&target).expect("written");
        assert!(text.contains("# TYPE harpocrates_operations_total counter"), "{text}");
        assert!(leftovers(dir.path()).is_empty());
    }

    #[test]
    fn run_without_a_textfile_returns_at_once() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
        rt.block_on(run(
            MetricsSettings::default(),
            || unreachable!("never asked for a snapshot"),
            CancellationToken::new(),
        ));
    }
}
