//! Where the daemon's socket is found when nobody says otherwise.
//!
//! Both `harpocratesd --dev` and `harpoctl` use these rules, so the two meet on one path
//! without flags.

use std::path::PathBuf;

/// Environment variable that names the socket for clients (and `harpoctl`).
pub const SOCKET_ENV: &str = "HARPOCRATES_SOCKET";

/// The socket of a system-wide daemon (systemd unit, `RuntimeDirectory=harpocrates`).
pub const SYSTEM_SOCKET: &str = "/run/harpocrates/harpocrates.sock";

/// The socket of a development daemon (`harpocratesd --dev`) for the current user:
/// `$XDG_RUNTIME_DIR/harpocrates/harpocrates.sock`, else
/// `/tmp/harpocrates-<uid>/harpocrates.sock`.
pub fn dev_socket_path() -> PathBuf {
    dev_runtime_dir().join("harpocrates.sock")
}

/// The per-user runtime directory used by a development daemon.
pub fn dev_runtime_dir() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir).join("harpocrates"),
        _ => std::env::temp_dir().join(format!("harpocrates-{}", current_uid())),
    }
}

/// The socket a client should use: `$HARPOCRATES_SOCKET`, else the system socket when it
/// exists, else the development socket.
pub fn default_socket_path() -> PathBuf {
    if let Some(p) = std::env::var_os(SOCKET_ENV).filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let system = PathBuf::from(SYSTEM_SOCKET);
    if system.exists() {
        return system;
    }
    dev_socket_path()
}

/// The real user id of this process, read without `unsafe` or libc from procfs.
fn current_uid() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}
