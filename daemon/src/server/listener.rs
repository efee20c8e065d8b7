//! The listening socket: created in a directory only we control, with the configured
//! permissions, and removed again on shutdown; or taken from systemd (socket
//! activation), and then left alone.
//!
//! A local attacker shares the host. If another user could create or write the socket's
//! directory, they could move our socket aside and put their own listener in its place,
//! then read what clients send. So, as OpenSSH and tmux do, the directory must be owned
//! by us (or root) and writable by nobody else, checked with `lstat` (a symlink is
//! refused, not followed). Nothing at the socket path is removed unless it is a socket
//! that nobody answers on.

use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::UnixListener;

/// Why the socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// Another process answers on the path.
    #[error("another daemon is already listening on {0}")]
    InUse(PathBuf),
    /// The socket's directory could be changed by someone else.
    #[error("refusing to use the socket directory {path}: {reason}")]
    UnsafeDirectory {
        /// The directory.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Something that is not a socket sits at the socket path; it is left alone.
    #[error("{path} exists and is not a socket ({kind}); refusing to remove it")]
    NotASocket {
        /// The socket path.
        path: PathBuf,
        /// What was found there.
        kind: &'static str,
    },
    /// The socket systemd passed is not one the daemon can serve on.
    #[error("{0}")]
    Activation(String),
    /// The audit file could not be opened: the daemon does not run unaudited.
    #[error("audit: {0}")]
    Audit(String),
    /// File-system or socket error.
    #[error("cannot listen on {path}: {source}")]
    Io {
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// A bound socket whose file is removed when this is dropped (if it is still ours).
pub struct BoundSocket {
    /// The listener.
    pub listener: UnixListener,
    path: PathBuf,
    /// Device and inode of the socket we created, so that drop never removes a file that
    /// replaced it.
    identity: Option<(u64, u64)>,
}

impl BoundSocket {
    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The listening socket systemd passed (socket activation). systemd owns its file:
    /// it is never removed, whatever happens.
    pub fn activated(listener: std::os::unix::net::UnixListener) -> Result<Self, ListenError> {
        let path = listener
            .local_addr()
            .ok()
            .and_then(|a| a.as_pathname().map(Path::to_owned))
            .unwrap_or_else(|| PathBuf::from("(socket passed by systemd)"));
        let listener = UnixListener::from_std(listener)
            .map_err(|source| ListenError::Io { path: path.clone(), source })?;
        Ok(Self { listener, path, identity: None })
    }
}

impl Drop for BoundSocket {
    fn drop(&mut self) {
        let ours = std::fs::symlink_metadata(&self.path)
            .is_ok_and(|m| m.file_type().is_socket() && Some((m.dev(), m.ino())) == self.identity);
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

pub use crate::peer::effective_uid;

/// Checks a directory we are about to trust: a real directory (not a symlink), owned by
/// `uid` or root, and not writable by group or others.
pub fn check_private_dir(dir: &Path, uid: u32) -> Result<(), ListenError> {
    let unsafe_dir = |reason: String| ListenError::UnsafeDirectory { path: dir.to_owned(), reason };
    let meta = std::fs::symlink_metadata(dir)
        .map_err(|e| unsafe_dir(format!("cannot inspect it: {e}")))?;
    if meta.file_type().is_symlink() {
        return Err(unsafe_dir("it is a symbolic link".into()));
    }
    if !meta.is_dir() {
        return Err(unsafe_dir("it is not a directory".into()));
    }
    if meta.uid() != uid && meta.uid() != 0 {
        return Err(unsafe_dir(format!(
            "it is owned by uid {}, not by this daemon's uid {uid}; remove it or pick another socket_path",
            meta.uid()
        )));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(unsafe_dir(format!(
            "its mode is {mode:04o}: others can replace the socket; make it 0700 or 0755"
        )));
    }
    Ok(())
}

/// Binds `path` with permission bits `mode`. A missing parent directory is created (0700
/// when the socket is private to its owner, else 0755); an existing one must pass
/// [`check_private_dir`]. A stale socket left by a crashed daemon is replaced; a live one,
/// or anything that is not a socket, is not touched.
pub fn bind(path: &Path, mode: u32) -> Result<BoundSocket, ListenError> {
    let io = |source| ListenError::Io { path: path.to_owned(), source };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        let dir_mode = if mode & 0o077 == 0 { 0o700 } else { 0o755 };
        if std::fs::symlink_metadata(dir).is_err() {
            std::fs::DirBuilder::new().recursive(true).mode(dir_mode).create(dir).map_err(io)?;
        }
        check_private_dir(dir, effective_uid())?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(ListenError::InUse(path.to_owned()));
            }
            tracing::info!(path = %path.display(), "removing stale socket");
            std::fs::remove_file(path).map_err(io)?;
        }
        Ok(meta) => {
            let kind = file_kind(&meta.file_type());
            return Err(ListenError::NotASocket { path: path.to_owned(), kind });
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    let listener = UnixListener::bind(path).map_err(io)?;
    let identity = std::fs::symlink_metadata(path).ok().map(|m| (m.dev(), m.ino()));
    let bound = BoundSocket { listener, path: path.to_owned(), identity };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io)?;
    Ok(bound)
}

fn file_kind(t: &std::fs::FileType) -> &'static str {
    if t.is_symlink() {
        "a symbolic link"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_file() {
        "a regular file"
    } else if t.is_fifo() {
        "a FIFO"
    } else {
        "a device or other special file"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
    }

    #[test]
    fn a_regular_file_at_the_socket_path_survives() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))
            .expect("chmod");
        let path = dir.path().join("s.sock");
        std::fs::write(&path, "precious").expect("write");
        let err = rt().block_on(async { bind(&path, 0o600).err() }).expect("refused");
        assert!(matches!(err, ListenError::NotASocket { .. }), "{err}");
        assert!(err.to_string().contains("s.sock"), "{err}");
        assert_eq!(std::fs::read_to_string(&path).expect("still there"), "precious");
    }

    #[test]
    fn a_writable_or_linked_directory_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let open = dir.path().join("open");
        std::fs::create_dir(&open).expect("mkdir");
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        let err = check_private_dir(&open, effective_uid()).expect_err("0777 refused");
        assert!(err.to_string().contains("0777"), "{err}");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(dir.path(), &link).expect("symlink");
        let err = check_private_dir(&link, effective_uid()).expect_err("symlink refused");
        assert!(err.to_string().contains("symbolic link"), "{err}");
        let private = dir.path().join("private");
        std::fs::DirBuilder::new().mode(0o700).create(&private).expect("mkdir");
        check_private_dir(&private, effective_uid()).expect("0700 accepted");
    }

    #[test]
    fn drop_leaves_a_replaced_file_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))
            .expect("chmod");
        let path = dir.path().join("s.sock");
        rt().block_on(async {
            let bound = bind(&path, 0o600).expect("bind");
            std::fs::remove_file(&path).expect("rm");
            std::fs::write(&path, "not ours").expect("write");
            drop(bound);
        });
        assert!(path.exists(), "a file that replaced our socket is not removed");
    }
}
