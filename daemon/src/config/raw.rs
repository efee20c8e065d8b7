//! The configuration file exactly as written: every field optional, unknown fields refused.

use std::path::PathBuf;

use serde::Deserialize;

/// `harpocrates.toml` before validation.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// `"soft"` (embedded token), `"pkcs11"` or `"cloudhsm"`.
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
    /// Threads serving client connections (default: one per core, at most 8).
    pub io_threads: Option<u64>,
    /// Request and answer bytes held for one connection before the daemon stops reading
    /// it (back-pressure), e.g. `33554432`.
    pub max_connection_bytes: Option<u64>,
    /// Request and answer bytes held for all connections together.
    pub max_total_bytes: Option<u64>,
    /// Time for a frame to arrive whole once its first byte has, e.g. `"10s"`.
    pub frame_timeout: Option<String>,
    /// A connection with no request in flight for this long is closed, e.g. `"5m"`.
    pub idle_timeout: Option<String>,
    /// How long shutdown waits for in-flight requests, e.g. `"10s"`.
    pub shutdown_timeout: Option<String>,
    /// Session actors (and backend sessions).
    pub max_sessions: Option<u64>,
    /// Idle time after which a session is reopened, e.g. `"30m"`.
    pub session_timeout: Option<String>,
    /// AES-GCM encryptions allowed per token key (random IVs; at most 2^32).
    pub max_encryptions_per_key: Option<u64>,
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
    /// How long a cached KEK state is trusted before it is re-read from the token (how
    /// soon a rotation committed by another daemon on the same token is seen), e.g. `"5s"`.
    pub kek_refresh: Option<String>,
    /// Most derived data keys cached.
    pub dek_cache_size: Option<u64>,
    /// How long a derived data key stays cached, e.g. `"5m"`.
    pub dek_cache_ttl: Option<String>,
    /// Log filter, e.g. `"info"` or `"harpocrates_daemon=debug"`.
    pub log_level: Option<String>,
    /// The soft token's settings.
    pub soft: Option<RawSoft>,
    /// PKCS#11 module and token.
    pub pkcs11: Option<RawPkcs11>,
    /// AWS CloudHSM profile (translated to PKCS#11 settings).
    pub cloudhsm: Option<RawCloudHsm>,
    /// `[audit]`: where audit records go.
    pub audit: Option<RawAudit>,
    /// `[metrics]`: the node_exporter textfile.
    pub metrics: Option<RawMetrics>,
    /// `[[policy]]` tables: who may do what (see `docs/access-control.md`).
    pub policy: Option<Vec<crate::policy::raw::RawRule>>,
}

/// `[audit]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAudit {
    /// The hash-chained audit file (its directory must be ours and private).
    pub file: Option<PathBuf>,
    /// Rotate the file past this many bytes.
    pub max_file_bytes: Option<u64>,
    /// `"changes"` (key-changing operations and refusals), `"all"` or `"off"`.
    pub journal: Option<String>,
    /// Every operation (not only key-changing ones) waits for its durable record.
    pub fail_closed: Option<bool>,
    /// When the queue is full, `use` operations `"wait"` or are `"count"`ed as lost.
    pub on_backlog: Option<String>,
    /// Events queued for the audit writer.
    pub queue: Option<u64>,
}

/// `[metrics]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    /// A file (absolute path) rewritten atomically with the Prometheus text format, for
    /// node_exporter's textfile collector, e.g. `"/var/lib/node_exporter/harpocrates.prom"`.
    pub textfile: Option<PathBuf>,
    /// How often the file is rewritten, e.g. `"15s"` (1s to 1h).
    pub interval: Option<String>,
}

/// `[pkcs11]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPkcs11 {
    /// The vendor's PKCS#11 module (`.so`).
    pub library_path: Option<PathBuf>,
    /// Select the token by slot number.
    pub slot_id: Option<u64>,
    /// Select the token by label.
    pub token_label: Option<String>,
    /// Select the token by PKCS#11 URI (RFC 7512), e.g. `pkcs11:token=vault-token`.
    pub uri: Option<String>,
}

/// `[cloudhsm]`: the AWS CloudHSM PKCS#11 library, logging in as `hsm_user` with the
/// password from the PIN sources (`user:password` is what the library expects).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCloudHsm {
    /// Cluster id, for `configure-pkcs11 --cluster-id`.
    pub cluster_id: Option<String>,
    /// The cluster's issuing CA certificate.
    pub hsm_ca_file: Option<PathBuf>,
    /// Crypto user name.
    pub hsm_user: Option<String>,
    /// Refused: the password belongs in `pin_file`, `pin_env` or `pin_credential`.
    pub hsm_password: Option<String>,
    /// AWS region.
    pub region: Option<String>,
    /// Session pool size, used when the top-level `max_sessions` (or `--max-sessions`) is
    /// not set.
    pub max_sessions: Option<u64>,
    /// The CloudHSM PKCS#11 library (default `/opt/cloudhsm/lib/libcloudhsm_pkcs11.so`).
    pub library_path: Option<PathBuf>,
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
