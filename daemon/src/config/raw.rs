//! The configuration file exactly as written: every field optional, unknown fields refused.

use std::path::PathBuf;

use serde::Deserialize;

/// `harpocrates.toml` before validation.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// `"soft"` (embedded token).
    pub backend: Option<String>,
    /// Unix socket path.
    pub socket_path: Option<PathBuf>,
    /// Socket permissions, octal string such as `"0660"`.
    pub socket_mode: Option<String>,
    /// Largest frame body in bytes.
    pub max_frame: Option<u64>,
    /// Work items waiting for a session before `Busy`.
    pub queue_depth: Option<u64>,
    /// Concurrent client connections.
    pub max_connections: Option<u64>,
    /// Requests in flight per connection before the daemon stops reading it.
    pub max_in_flight: Option<u64>,
    /// How long shutdown waits for in-flight requests, e.g. `"10s"`.
    pub shutdown_timeout: Option<String>,
    /// Session actors (and backend sessions).
    pub max_sessions: Option<u64>,
    /// Idle time after which a session is reopened, e.g. `"30m"`.
    pub session_timeout: Option<String>,
    /// Retries after a broken session.
    pub retry_attempts: Option<u64>,
    /// Pause before each retry, e.g. `"5s"`.
    pub retry_delay: Option<String>,
    /// File holding the token PIN.
    pub pin_file: Option<PathBuf>,
    /// Environment variable holding the token PIN.
    pub pin_env: Option<String>,
    /// Name of a systemd credential (`$CREDENTIALS_DIRECTORY/<name>`) holding the PIN.
    pub pin_credential: Option<String>,
    /// Log filter, e.g. `"info"` or `"harpocrates_daemon=debug"`.
    pub log_level: Option<String>,
    /// The soft token's settings.
    pub soft: Option<RawSoft>,
}

/// `[soft]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSoft {
    /// Directory for the encrypted key store.
    pub state_dir: Option<PathBuf>,
    /// Argon2id memory, KiB.
    pub kdf_memory_kib: Option<u32>,
    /// Argon2id passes.
    pub kdf_iterations: Option<u32>,
    /// Argon2id lanes.
    pub kdf_parallelism: Option<u32>,
}
