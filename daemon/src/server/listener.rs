//! The listening socket: created safely, with the configured permissions, and removed
//! again on shutdown.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::UnixListener;

/// Why the socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// Another process answers on the path.
    #[error("another daemon is already listening on {0}")]
    InUse(PathBuf),
    /// File-system or socket error.
    #[error("cannot listen on {path}: {source}")]
    Io {
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// A bound socket whose file is removed when this is dropped.
pub struct BoundSocket {
    /// The listener.
    pub listener: UnixListener,
    path: PathBuf,
}

impl BoundSocket {
    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for BoundSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Binds `path` with permission bits `mode`. A stale socket file left by a crashed daemon
/// is replaced; a live one is not. A missing parent directory is created (mode 0755, or
/// 0700 when the socket is private to its owner).
pub fn bind(path: &Path, mode: u32) -> Result<BoundSocket, ListenError> {
    let io = |source| ListenError::Io { path: path.to_owned(), source };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        let dir_mode = if mode & 0o077 == 0 { 0o700 } else { 0o755 };
        std::fs::DirBuilder::new().recursive(true).mode(dir_mode).create(dir).map_err(io)?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(ListenError::InUse(path.to_owned()));
        }
        tracing::info!(path = %path.display(), "removing stale socket");
        std::fs::remove_file(path).map_err(io)?;
    }
    let listener = UnixListener::bind(path).map_err(io)?;
    let bound = BoundSocket { listener, path: path.to_owned() };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io)?;
    Ok(bound)
}
