//! Configuration in stages: the TOML file as written ([`raw`]), command-line flags
//! ([`cli`]), then validated [`Settings`] that the rest of the daemon trusts. Every
//! validation error names the field it is about.

pub mod audit;
pub mod cli;
pub mod cloudhsm;
pub mod metrics;
pub mod pin;
pub mod raw;

use std::path::{Path, PathBuf};
use std::time::Duration;

use harpocrates_protocol::{DEFAULT_MAX_FRAME, MAX_FRAME_CEILING, paths};

use crate::actors::session::RetryPolicy;
use crate::backend::pkcs11::{Pkcs11Config, TokenChoice, uri};
use crate::backend::soft::SoftConfig;
use crate::backend::soft::store::KdfParams;

pub use cli::Args;
pub use cloudhsm::CloudHsmProfile;
pub use pin::PinSource;
pub use raw::RawConfig;

/// A configuration problem, naming the field or file at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown/mistyped fields.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message (with line, column and field).
        message: String,
    },
    /// A value is out of range.
    #[error("invalid `{field}`: {reason}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// The PIN could not be obtained.
    #[error("PIN: {0}")]
    Pin(String),
    /// The access policy is wrong (the message names the file, the rule and why).
    #[error("{0}")]
    Policy(String),
}

fn invalid(field: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { field, reason: reason.into() }
}

/// Which token serves the keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendSettings {
    /// The embedded soft token.
    Soft(SoftConfig),
    /// A PKCS#11 module.
    Pkcs11(Pkcs11Config),
    /// AWS CloudHSM (a PKCS#11 module with a `user:password` login).
    CloudHsm(CloudHsmProfile),
}

impl BackendSettings {
    /// The backend's name as configured.
    pub fn name(&self) -> &'static str {
        match self {
            BackendSettings::Soft(_) => "soft",
            BackendSettings::Pkcs11(_) => "pkcs11",
            BackendSettings::CloudHsm(_) => "cloudhsm",
        }
    }
}

/// Validated settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Socket path.
    pub socket_path: PathBuf,
    /// Socket permission bits.
    pub socket_mode: u32,
    /// Largest frame body.
    pub max_frame: u32,
    /// Work items queued for sessions before `Busy`.
    pub queue_depth: usize,
    /// Concurrent connections.
    pub max_connections: usize,
    /// Requests in flight per connection.
    pub max_in_flight: usize,
    /// Threads (actix arbiters) serving client connections.
    pub io_threads: usize,
    /// Request and answer bytes held per connection.
    pub max_connection_bytes: usize,
    /// Request and answer bytes held for all connections.
    pub max_total_bytes: usize,
    /// Deadline for a started frame.
    pub frame_timeout: Duration,
    /// Idle connections are closed after this.
    pub idle_timeout: Duration,
    /// Grace period for in-flight requests at shutdown.
    pub shutdown_timeout: Duration,
    /// Session actors.
    pub max_sessions: u32,
    /// Idle session lifetime.
    pub session_timeout: Duration,
    /// Encryptions allowed per token key before it refuses (see
    /// [`usage`](crate::actors::session::usage)).
    pub max_encryptions_per_key: u64,
    /// Broken-session retry budget.
    pub retry: RetryPolicy,
    /// Key-manager settings.
    pub keys: crate::keys::manager::KeyManagerSettings,
    /// PIN sources.
    pub pin: PinSource,
    /// Log filter.
    pub log_level: String,
    /// The token.
    pub backend: BackendSettings,
    /// Started with `--dev`.
    pub dev: bool,
    /// Where audit records go.
    pub audit: crate::actors::audit::AuditSettings,
    /// The node_exporter textfile, if any.
    pub metrics: metrics::MetricsSettings,
    /// The access policy in force (shared: a reload replaces the policy inside).
    pub policy: std::sync::Arc<crate::policy::PolicyStore>,
    /// The configuration file, if any (a reload reads it again).
    pub config_path: Option<PathBuf>,
}

fn duration(
    field: &'static str,
    value: Option<&str>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    let d = value.map_or(Ok(default), |v| {
        humantime::parse_duration(v).map_err(|e| invalid(field, format!("{v:?}: {e}")))
    })?;
    // Durations are added to `Instant`s and slept on: a value of centuries would overflow
    // the one or hang the other.
    if d > MAX_DURATION {
        return Err(invalid(field, format!("{d:?} is longer than the limit of 366 days")));
    }
    Ok(d)
}

/// One connection I/O thread per core, at most 8: past that the session pool and the
/// crypto threads need the cores more than the socket work does.
fn default_io_threads() -> u64 {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(8) as u64)
}

/// The longest duration any setting accepts.
const MAX_DURATION: Duration = Duration::from_secs(366 * 24 * 3600);

fn positive(d: Duration) -> Result<Duration, String> {
    if d.is_zero() { Err("must be longer than zero".into()) } else { Ok(d) }
}

fn bounded(
    field: &'static str,
    value: Option<u64>,
    default: u64,
    min: u64,
    max: u64,
) -> Result<u64, ConfigError> {
    let v = value.unwrap_or(default);
    if v < min || v > max {
        return Err(invalid(field, format!("{v} is outside {min}..={max}")));
    }
    Ok(v)
}

impl Settings {
    /// Settings from the command line: `--dev` presets, else the `--config` file (or
    /// defaults), then flag overrides.
    pub fn from_args(args: &Args) -> Result<Self, ConfigError> {
        let mut raw = match &args.config {
            Some(path) => load_file(path)?,
            None => RawConfig::default(),
        };
        if args.dev {
            apply_dev_presets(&mut raw)?;
        }
        if let Some(s) = &args.socket {
            raw.socket_path = Some(s.clone());
        }
        if let Some(d) = &args.state_dir {
            raw.soft.get_or_insert_with(Default::default).state_dir = Some(d.clone());
        }
        if let Some(n) = args.max_sessions {
            raw.max_sessions = Some(n);
        }
        if let Some(n) = args.io_threads {
            raw.io_threads = Some(n);
        }
        if let Some(l) = &args.log_level {
            raw.log_level = Some(l.clone());
        }
        let source = args.config.clone().unwrap_or_else(|| PathBuf::from("the built-in defaults"));
        let mut settings = Self::validate_from(raw, &source, args.dev)?;
        settings.dev = args.dev;
        settings.config_path = args.config.clone();
        Ok(settings)
    }

    /// Checks every field and fills in defaults.
    pub fn validate(raw: RawConfig) -> Result<Self, ConfigError> {
        Self::validate_from(raw, Path::new("the configuration"), false)
    }

    /// Checks every field of a configuration read from `source`; `dev` also grants the
    /// invoking user everything.
    fn validate_from(mut raw: RawConfig, source: &Path, dev: bool) -> Result<Self, ConfigError> {
        let policy = audit::policy(raw.policy.as_deref().unwrap_or_default(), source, dev)?;
        let audit_settings = audit::audit_settings(raw.audit.take())?;
        let metrics_settings = metrics::metrics_settings(raw.metrics.take())?;
        let socket_mode = match raw.socket_mode.as_deref() {
            None => 0o660,
            Some(s) => Some(s.strip_prefix("0o").unwrap_or(s))
                .filter(|d| !d.is_empty() && d.bytes().all(|b| (b'0'..=b'7').contains(&b)))
                .and_then(|d| u32::from_str_radix(d, 8).ok())
                .filter(|m| *m <= 0o777)
                .ok_or_else(|| {
                    invalid("socket_mode", format!("{s:?} is not an octal mode like \"0660\""))
                })?,
        };
        let max_frame = bounded(
            "max_frame",
            raw.max_frame,
            DEFAULT_MAX_FRAME.into(),
            1024,
            MAX_FRAME_CEILING.into(),
        )? as u32;
        let backend = match raw.backend.as_deref().unwrap_or("soft") {
            "soft" => {
                let soft = raw.soft.unwrap_or_default();
                let defaults = KdfParams::default();
                let kdf = KdfParams {
                    memory_kib: soft.kdf_memory_kib.unwrap_or(defaults.memory_kib),
                    iterations: soft.kdf_iterations.unwrap_or(defaults.iterations),
                    parallelism: soft.kdf_parallelism.unwrap_or(defaults.parallelism),
                };
                kdf.check().map_err(|reason| invalid("soft.kdf_*", reason))?;
                BackendSettings::Soft(SoftConfig {
                    state_dir: soft
                        .state_dir
                        .unwrap_or_else(|| PathBuf::from("/var/lib/harpocrates/soft")),
                    kdf,
                })
            }
            "pkcs11" => BackendSettings::Pkcs11(pkcs11_config(raw.pkcs11)?),
            "cloudhsm" => {
                let section = raw.cloudhsm.ok_or_else(|| {
                    invalid("cloudhsm", "backend = \"cloudhsm\" needs a [cloudhsm] section")
                })?;
                let profile = CloudHsmProfile::from_raw(section)?;
                if let Some(n) = profile.max_sessions {
                    raw.max_sessions.get_or_insert(n);
                }
                BackendSettings::CloudHsm(profile)
            }
            other => {
                return Err(invalid(
                    "backend",
                    format!(
                        "{other:?} is not a known backend (known: \"soft\", \"pkcs11\", \"cloudhsm\")"
                    ),
                ));
            }
        };
        // A software token is fastest with few sessions; hardware tokens serve many.
        let default_sessions = if matches!(backend, BackendSettings::Soft(_)) { 2 } else { 10 };
        Ok(Self {
            socket_path: raw.socket_path.unwrap_or_else(|| PathBuf::from(paths::SYSTEM_SOCKET)),
            socket_mode,
            max_frame,
            queue_depth: bounded("queue_depth", raw.queue_depth, 4096, 1, 1 << 20)? as usize,
            max_connections: bounded("max_connections", raw.max_connections, 1024, 1, 1 << 20)?
                as usize,
            max_in_flight: bounded("max_in_flight", raw.max_in_flight, 1024, 1, 1 << 16)? as usize,
            io_threads: bounded("io_threads", raw.io_threads, default_io_threads(), 1, 64)?
                as usize,
            max_connection_bytes: bounded(
                "max_connection_bytes",
                raw.max_connection_bytes,
                32 << 20,
                64 << 10,
                1 << 34,
            )? as usize,
            max_total_bytes: bounded(
                "max_total_bytes",
                raw.max_total_bytes,
                128 << 20,
                1 << 20,
                1 << 40,
            )? as usize,
            frame_timeout: positive(duration(
                "frame_timeout",
                raw.frame_timeout.as_deref(),
                Duration::from_secs(10),
            )?)
            .map_err(|r| invalid("frame_timeout", r))?,
            idle_timeout: positive(duration(
                "idle_timeout",
                raw.idle_timeout.as_deref(),
                Duration::from_secs(300),
            )?)
            .map_err(|r| invalid("idle_timeout", r))?,
            shutdown_timeout: duration(
                "shutdown_timeout",
                raw.shutdown_timeout.as_deref(),
                Duration::from_secs(10),
            )?,
            max_sessions: bounded("max_sessions", raw.max_sessions, default_sessions, 1, 1024)?
                as u32,
            session_timeout: duration(
                "session_timeout",
                raw.session_timeout.as_deref(),
                Duration::from_secs(30 * 60),
            )?,
            max_encryptions_per_key: bounded(
                "max_encryptions_per_key",
                raw.max_encryptions_per_key,
                crate::actors::session::usage::NIST_RANDOM_IV_LIMIT,
                1,
                crate::actors::session::usage::NIST_RANDOM_IV_LIMIT,
            )?,
            retry: RetryPolicy {
                attempts: bounded("retry_attempts", raw.retry_attempts, 3, 0, 100)? as u32,
                delay: duration("retry_delay", raw.retry_delay.as_deref(), Duration::from_secs(5))?,
            },
            keys: crate::keys::manager::KeyManagerSettings {
                kek_refresh: duration(
                    "kek_refresh",
                    raw.kek_refresh.as_deref(),
                    Duration::from_secs(5),
                )?,
                dek_cache_size: bounded("dek_cache_size", raw.dek_cache_size, 10_000, 1, 1 << 20)?
                    as usize,
                dek_cache_ttl: duration(
                    "dek_cache_ttl",
                    raw.dek_cache_ttl.as_deref(),
                    Duration::from_secs(300),
                )?,
            },
            pin: PinSource { credential: raw.pin_credential, file: raw.pin_file, env: raw.pin_env },
            log_level: raw.log_level.unwrap_or_else(|| "info".into()),
            backend,
            dev: false,
            audit: audit_settings,
            metrics: metrics_settings,
            policy: std::sync::Arc::new(crate::policy::PolicyStore::new(policy)),
            config_path: None,
        })
    }
}

/// Checks `[pkcs11]`: a module, and exactly one way to pick the token.
fn pkcs11_config(raw: Option<raw::RawPkcs11>) -> Result<Pkcs11Config, ConfigError> {
    let raw =
        raw.ok_or_else(|| invalid("pkcs11", "backend = \"pkcs11\" needs a [pkcs11] section"))?;
    let selectors = [raw.slot_id.is_some(), raw.token_label.is_some(), raw.uri.is_some()];
    if selectors.iter().filter(|s| **s).count() != 1 {
        return Err(invalid(
            "pkcs11.token_label",
            "set exactly one of slot_id, token_label or uri",
        ));
    }
    let mut module_from_uri = None;
    let token = if let Some(id) = raw.slot_id {
        TokenChoice::SlotId(id)
    } else if let Some(label) = raw.token_label {
        TokenChoice::Match(uri::TokenSelector { token: Some(label), ..Default::default() })
    } else {
        let text = raw.uri.unwrap_or_default();
        let sel = uri::parse(&text).map_err(|e| invalid("pkcs11.uri", format!("{text:?}: {e}")))?;
        module_from_uri = sel.module_path.clone().map(PathBuf::from);
        TokenChoice::Match(sel)
    };
    let library_path = raw.library_path.or(module_from_uri).ok_or_else(|| {
        invalid("pkcs11.library_path", "is required (the vendor's PKCS#11 module)")
    })?;
    Ok(Pkcs11Config { library_path, token, name: "pkcs11" })
}

/// Reads and parses a TOML file.
pub fn load_file(path: &Path) -> Result<RawConfig, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
    toml::from_str(&text)
        .map_err(|e| ConfigError::Parse { path: path.to_owned(), message: e.to_string() })
}

/// The per-user state directory of `--dev`: `$XDG_STATE_HOME/harpocrates/dev`, else
/// `~/.local/state/harpocrates/dev`, else beside the dev socket.
pub fn dev_state_dir() -> PathBuf {
    let from_env = |var: &str| std::env::var_os(var).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(state) = from_env("XDG_STATE_HOME") {
        return state.join("harpocrates/dev");
    }
    if let Some(home) = from_env("HOME") {
        return home.join(".local/state/harpocrates/dev");
    }
    paths::dev_runtime_dir().join("state")
}

/// `--dev`: soft token in the per-user state directory, a generated PIN kept beside it
/// (mode 0600), the per-user socket readable by this user only.
fn apply_dev_presets(raw: &mut RawConfig) -> Result<(), ConfigError> {
    let state_dir =
        raw.soft.as_ref().and_then(|s| s.state_dir.clone()).unwrap_or_else(dev_state_dir);
    let pin_file = state_dir.join("dev.pin");
    ensure_dev_pin(&pin_file)?;
    let audit_file = state_dir.join("audit").join("audit.log");
    raw.backend = Some("soft".into());
    raw.soft.get_or_insert_with(Default::default).state_dir = Some(state_dir);
    raw.socket_path.get_or_insert_with(paths::dev_socket_path);
    raw.socket_mode = Some("0600".into());
    raw.pin_file = Some(pin_file);
    raw.pin_env = None;
    raw.pin_credential = None;
    // A development daemon should notice a dead token quickly.
    raw.retry_delay.get_or_insert_with(|| "100ms".into());
    // ... and show what an audited daemon looks like (`harpoctl audit tail`).
    let audit = raw.audit.get_or_insert_with(Default::default);
    audit.file.get_or_insert(audit_file);
    Ok(())
}

fn ensure_dev_pin(path: &Path) -> Result<(), ConfigError> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    if path.exists() {
        return Ok(());
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| ConfigError::Pin(format!("cannot create {}: {e}", dir.display())))?;
    let mut raw = zeroize::Zeroizing::new([0u8; 24]);
    getrandom::fill(raw.as_mut_slice())
        .map_err(|e| ConfigError::Pin(format!("no randomness: {e}")))?;
    let pin: zeroize::Zeroizing<String> =
        zeroize::Zeroizing::new(raw.iter().map(|b| format!("{b:02x}")).collect());
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(pin.as_bytes()))
        .map_err(|e| ConfigError::Pin(format!("cannot write {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Settings, ConfigError> {
        Settings::validate(toml::from_str(text).map_err(|e: toml::de::Error| {
            ConfigError::Parse { path: "test.toml".into(), message: e.to_string() }
        })?)
    }

    #[test]
    fn defaults_are_sane() {
        let s = parse("").expect("empty config is valid");
        assert_eq!(s.socket_path, Path::new(paths::SYSTEM_SOCKET));
        assert_eq!(s.socket_mode, 0o660);
        assert_eq!(s.max_frame, DEFAULT_MAX_FRAME);
        assert_eq!(s.retry, RetryPolicy { attempts: 3, delay: Duration::from_secs(5) });
        assert_eq!(s.session_timeout, Duration::from_secs(1800));
        assert!((1..=8).contains(&s.io_threads), "one per core, at most 8: {}", s.io_threads);
        assert_eq!(parse("io_threads = 3").expect("valid").io_threads, 3);
    }

    #[test]
    fn values_are_read() {
        let s = parse(
            r#"
            socket_path = "/tmp/x.sock"
            socket_mode = "0600"
            max_sessions = 4
            session_timeout = "5m"
            retry_attempts = 1
            retry_delay = "250ms"
            pin_env = "MY_PIN"
            [soft]
            state_dir = "/tmp/state"
            kdf_memory_kib = 1024
            "#,
        )
        .expect("valid");
        assert_eq!((s.socket_mode, s.max_sessions), (0o600, 4));
        assert_eq!(s.retry.delay, Duration::from_millis(250));
        assert_eq!(s.pin.env.as_deref(), Some("MY_PIN"));
        let BackendSettings::Soft(soft) = s.backend else { panic!("soft backend expected") };
        assert_eq!(soft.state_dir, Path::new("/tmp/state"));
        assert_eq!(soft.kdf.memory_kib, 1024);
    }

    #[test]
    fn every_error_names_its_field() {
        for (text, field) in [
            ("max_sessions = 0", "max_sessions"),
            ("max_frame = 10", "max_frame"),
            ("socket_mode = \"rw\"", "socket_mode"),
            ("retry_delay = \"soon\"", "retry_delay"),
            ("backend = \"luna\"", "backend"),
            ("session_timeout = \"-1s\"", "session_timeout"),
            ("frame_timeout = \"0s\"", "frame_timeout"),
            ("dek_cache_ttl = \"300000000000y\"", "dek_cache_ttl"),
            ("retry_delay = \"1000y\"", "retry_delay"),
            ("socket_mode = \"+660\"", "socket_mode"),
            ("socket_mode = \"0o0o660\"", "socket_mode"),
            ("idle_timeout = \"never\"", "idle_timeout"),
            ("max_total_bytes = 10", "max_total_bytes"),
            ("max_connection_bytes = 10", "max_connection_bytes"),
            ("io_threads = 0", "io_threads"),
            ("io_threads = 65", "io_threads"),
            ("[soft]\nkdf_iterations = 0", "soft.kdf_"),
        ] {
            let err = parse(text).expect_err(text).to_string();
            assert!(err.contains(field), "{text:?} gave {err:?}");
        }
    }

    #[test]
    fn pkcs11_needs_a_module_and_one_token_selector() {
        let s =
            parse("backend = \"pkcs11\"\n[pkcs11]\nlibrary_path = \"/m.so\"\ntoken_label = \"t\"")
                .expect("valid");
        assert_eq!(s.max_sessions, 10, "hardware default");
        let BackendSettings::Pkcs11(p) = s.backend else { panic!("pkcs11 expected") };
        assert_eq!(
            p.token,
            TokenChoice::Match(uri::TokenSelector {
                token: Some("t".into()),
                ..Default::default()
            })
        );
        let s = parse(
            "backend = \"pkcs11\"\n[pkcs11]\nuri = \"pkcs11:token=vault-token?module-path=/x.so\"",
        )
        .expect("valid");
        let BackendSettings::Pkcs11(p) = s.backend else { panic!("pkcs11 expected") };
        assert_eq!(p.library_path, Path::new("/x.so"));
        for (text, field) in [
            ("backend = \"pkcs11\"", "pkcs11"),
            ("backend = \"pkcs11\"\n[pkcs11]\ntoken_label = \"t\"", "pkcs11.library_path"),
            ("backend = \"pkcs11\"\n[pkcs11]\nlibrary_path = \"/m.so\"", "pkcs11.token_label"),
            (
                "backend = \"pkcs11\"\n[pkcs11]\nlibrary_path = \"/m.so\"\nslot_id = 1\ntoken_label = \"t\"",
                "pkcs11.token_label",
            ),
            (
                "backend = \"pkcs11\"\n[pkcs11]\nlibrary_path = \"/m.so\"\nuri = \"token=t\"",
                "pkcs11.uri",
            ),
            ("backend = \"cloudhsm\"", "cloudhsm"),
        ] {
            let err = parse(text).expect_err(text).to_string();
            assert!(err.contains(field), "{text:?} gave {err}");
        }
    }

    #[test]
    fn cloudhsm_profile_sets_the_pool_size() {
        let s = parse(
            "backend = \"cloudhsm\"\n[cloudhsm]\ncluster_id = \"c\"\nhsm_ca_file = \"/ca\"\nhsm_user = \"u\"\nregion = \"r\"\nmax_sessions = 6",
        )
        .expect("valid");
        assert_eq!(s.max_sessions, 6);
        assert!(matches!(s.backend, BackendSettings::CloudHsm(_)));
    }

    #[test]
    fn the_shipped_example_is_valid_and_states_the_defaults() {
        let example = parse(include_str!("../../../systemd/harpocrates.toml.example"))
            .expect("the example configuration validates");
        let defaults = parse("").expect("defaults");
        assert_eq!(example.max_connection_bytes, defaults.max_connection_bytes);
        assert_eq!(example.max_total_bytes, defaults.max_total_bytes);
        assert_eq!(example.frame_timeout, defaults.frame_timeout);
        assert_eq!(example.idle_timeout, defaults.idle_timeout);
        assert_eq!(example.max_frame, defaults.max_frame);
    }

    #[test]
    fn unknown_fields_are_refused_by_name() {
        let err = parse("max_sesions = 3").expect_err("typo").to_string();
        assert!(err.contains("max_sesions"), "{err}");
    }

    #[test]
    fn dev_presets_make_a_pin_and_private_socket() {
        let dir = tempfile::tempdir().expect("tempdir");
        let args = Args {
            dev: true,
            state_dir: Some(dir.path().join("state")),
            socket: Some(dir.path().join("s.sock")),
            ..Default::default()
        };
        let s = Settings::from_args(&args).expect("dev settings");
        assert!(s.dev);
        assert_eq!(s.socket_mode, 0o600);
        let pin = s.pin.load().expect("generated pin");
        assert_eq!(pin.len(), 48);
        let again = Settings::from_args(&args).expect("dev settings");
        assert_eq!(again.pin.load().expect("same pin").as_str(), pin.as_str(), "PIN is kept");
    }
}
