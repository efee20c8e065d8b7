//! harpoctl's command line.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// harpoctl — talk to harpocratesd.
#[derive(Debug, Parser)]
#[command(name = "harpoctl", version, after_help = EXIT_CODES)]
pub struct Cli {
    /// Daemon socket (default: $HARPOCRATES_SOCKET, else /run/harpocrates/harpocrates.sock
    /// if present, else the per-user development socket).
    #[arg(long, global = true, value_name = "PATH")]
    pub socket: Option<PathBuf>,

    /// Machine-readable JSON output.
    #[arg(long, global = true)]
    pub json: bool,

    /// Longest wait for connecting plus the handshake, and for each answer, e.g. `2s`,
    /// `500ms`, `1m` (a bare number is seconds; `0` or `none`: no limit). Past it harpoctl
    /// exits with 124.
    #[arg(
        long,
        global = true,
        value_name = "DURATION",
        default_value = "30s",
        value_parser = parse_timeout
    )]
    pub timeout: Timeout,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

const EXIT_CODES: &str = "\
Exit codes: 0 ok; 1 operation failed; 2 usage; 64 invalid request; 65 integrity check \
failed; 66 key not found; 69 daemon or token unavailable, or its audit record could not be written (so it did not act); 73 key exists; 75 busy (retry); \
76 protocol/version mismatch or unsupported; 77 permission denied (by the daemon, by the \
socket's permissions, or a daemon running as a uid this client does not trust: see \
$HARPOCRATES_DAEMON_UID); 78 invalid state (e.g. a rotation step out of order); 124 timed \
out (see --timeout; the request may or may not have been carried out). `audit verify` exits \
1 when the chain is broken.";

/// A `--timeout` value: `None` is no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeout(pub Option<std::time::Duration>);

/// Parses `--timeout`: a humantime duration (`2s`, `1m30s`), a bare number of seconds,
/// or `0`/`none` for no limit.
fn parse_timeout(text: &str) -> Result<Timeout, String> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("none") {
        return Ok(Timeout(None));
    }
    let duration = match text.parse::<u64>() {
        Ok(secs) => std::time::Duration::from_secs(secs),
        Err(_) => humantime::parse_duration(text)
            .map_err(|e| format!("{e} (write e.g. 2s, 500ms, 1m, or none)"))?,
    };
    Ok(Timeout((!duration.is_zero()).then_some(duration)))
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Round trip to the daemon.
    Ping,
    /// Daemon and token health.
    Health,
    /// Operation counts, latency percentiles, errors by code, sessions, queue,
    /// connections, data-key cache, reloads.
    Metrics {
        /// Print the Prometheus text exposition format (what the daemon's `[metrics]
        /// textfile` holds) instead of a table; not with --json.
        #[arg(long)]
        prometheus: bool,
    },
    /// Random bytes from the token, printed as hex (or raw with --raw, base64 with --base64).
    Random {
        /// How many bytes.
        len: u32,
        /// Write raw bytes.
        #[arg(long, conflicts_with = "base64")]
        raw: bool,
        /// Write base64.
        #[arg(long)]
        base64: bool,
    },
    /// Key management.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Encrypt stdin to stdout under KEY (AES-GCM in the token).
    Encrypt(CryptArgs),
    /// Decrypt stdin to stdout under KEY.
    Decrypt(CryptArgs),
    /// Key-encryption keys in the token, and their rotation.
    #[command(subcommand)]
    Kek(KekCommand),
    /// Data keys derived from or wrapped by a KEK.
    #[command(subcommand)]
    Datakey(DatakeyCommand),
    /// Envelope encryption in the daemon under KEK-derived data keys.
    #[command(subcommand)]
    Envelope(EnvelopeCommand),
    /// The daemon itself (needs the `admin` right).
    #[command(subcommand)]
    Admin(AdminCommand),
    /// The daemon's hash-chained audit file: check it, read it.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Load generator: throughput and latency percentiles of ping, random, encrypt,
    /// decrypt, envelope, envelope-decrypt or derive, e.g. `bench --op encrypt --size 4k
    /// -c 2 -t 128`.
    Bench(crate::bench::BenchArgs),
}

/// `admin ...`
#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Re-read the daemon's configuration file and apply it, as `systemctl reload` does:
    /// a changed backend is swapped in without dropping a request, other settings apply
    /// in place, and a configuration that does not validate is refused with the reason
    /// (the running one stays).
    Reload,
}

/// `audit ...`
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check the hash chain across FILEs: the active file and its rotated ones, in any
    /// order (e.g. `audit.log*`). Prints a summary with the chain head (compare it with
    /// the head the daemon logs), or names the first changed, missing, reordered or
    /// truncated record and exits 1. Needs no daemon.
    Verify {
        /// The audit files.
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
    /// Print audit events, one per line (time, uid, pid, operation, key or kek@version,
    /// result, latency; the event's JSON with --json): the last ones of a file, or the
    /// next ones from the daemon's live stream (needs the `admin` right).
    Tail {
        /// Read this audit file (the daemon's `audit.file`) instead of the daemon's live
        /// stream.
        #[arg(long, value_name = "PATH")]
        file: Option<PathBuf>,
        /// Keep printing new events as they are written, across rotations (Ctrl-C ends).
        #[arg(long, short = 'f')]
        follow: bool,
        /// How many of the last events of the file to print first; from the live stream
        /// (which has no past), how many events to wait for when not following.
        #[arg(short = 'n', long, value_name = "N", default_value_t = 20)]
        lines: usize,
    },
}

/// `kek ...`
#[derive(Debug, Subcommand)]
pub enum KekCommand {
    /// Create version 1 of a KEK.
    Create {
        /// The KEK's name.
        name: String,
    },
    /// List KEKs with their versions and rotation state.
    List,
    /// A rotation step: prepare, validate, commit, rollback or status.
    Rotate {
        /// The step.
        #[arg(value_enum)]
        step: RotateStep,
        /// The KEK's name.
        name: String,
    },
    /// Retire an inactive version: it stops decrypting (with --destroy, for good).
    Retire {
        /// The KEK's name.
        name: String,
        /// The version.
        version: u32,
        /// Destroy its keys; what it protected becomes unrecoverable. Needs --yes.
        #[arg(long)]
        destroy: bool,
        /// Confirm --destroy.
        #[arg(long)]
        yes: bool,
    },
}

/// Rotation steps on the command line.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum RotateStep {
    /// Create the next version (pending).
    Prepare,
    /// Round-trip through the pending version inside the token.
    Validate,
    /// Make the validated pending version active.
    Commit,
    /// Abandon and destroy the pending version.
    Rollback,
    /// Show the state.
    Status,
}

/// `datakey ...`
#[derive(Debug, Subcommand)]
pub enum DatakeyCommand {
    /// Derive a data key from the KEK's active version and a context (printed as hex).
    Derive {
        /// The KEK's name.
        kek: String,
        /// The derivation context.
        #[arg(long)]
        context: String,
        /// Length in bytes (16 to 64).
        #[arg(long, default_value_t = 32)]
        len: u32,
    },
    /// A random data key and the same key wrapped by the KEK (both printed as base64).
    Generate {
        /// The KEK's name.
        kek: String,
    },
}

/// `envelope ...`
#[derive(Debug, Subcommand)]
pub enum EnvelopeCommand {
    /// Encrypt stdin to stdout under the KEK's active version and a context.
    Encrypt {
        /// The KEK's name.
        kek: String,
        #[command(flatten)]
        common: EnvelopeArgs,
    },
    /// Decrypt stdin to stdout (the KEK version comes from the ciphertext).
    Decrypt {
        #[command(flatten)]
        common: EnvelopeArgs,
    },
    /// Move ciphertexts to the KEK's active version: one from stdin, or with --file a file
    /// of base64 ciphertexts (always base64), one per line, rewritten in place with a
    /// progress bar.
    Rewrap {
        #[command(flatten)]
        common: EnvelopeArgs,
        /// A file of base64 ciphertexts, one per line.
        #[arg(long, value_name = "FILE")]
        file: Option<std::path::PathBuf>,
    },
}

/// Shared envelope options.
#[derive(Debug, Args)]
pub struct EnvelopeArgs {
    /// The derivation context (must match at decryption).
    #[arg(long, default_value = "")]
    pub context: String,
    /// Additional authenticated data.
    #[arg(long, value_name = "TEXT")]
    pub aad: Option<String>,
    /// Ciphertexts are base64 text.
    #[arg(long)]
    pub base64: bool,
}

/// `keys ...`
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create an AES key (sensitive, non-extractable, encrypt+decrypt unless told otherwise).
    Generate {
        /// The key's name.
        label: String,
        /// Key size in bits: 128, 192 or 256.
        #[arg(long, default_value_t = 256)]
        size: u32,
        /// Allow the key to leave the token wrapped (backup).
        #[arg(long)]
        extractable: bool,
        /// Allow the key to wrap other keys.
        #[arg(long)]
        wrap: bool,
        /// Allow the key to unwrap other keys.
        #[arg(long)]
        unwrap: bool,
        /// Forbid encryption with this key.
        #[arg(long)]
        no_encrypt: bool,
        /// Forbid decryption with this key.
        #[arg(long)]
        no_decrypt: bool,
    },
    /// List keys.
    List,
    /// Write a password-protected backup of an extractable key to stdout.
    Backup {
        /// The key's name.
        label: String,
        /// File holding the backup password (else $HARPOCTL_BACKUP_PASSWORD).
        #[arg(long, value_name = "FILE")]
        password_file: Option<std::path::PathBuf>,
        /// Write base64 text instead of raw bytes.
        #[arg(long)]
        base64: bool,
    },
    /// Restore a backup read from stdin as a new key.
    Restore {
        /// The new key's name.
        label: String,
        /// File holding the backup password (else $HARPOCTL_BACKUP_PASSWORD).
        #[arg(long, value_name = "FILE")]
        password_file: Option<std::path::PathBuf>,
        /// The input is base64 text.
        #[arg(long)]
        base64: bool,
    },
    /// Destroy a key for good.
    Destroy {
        /// The key's name.
        label: String,
        /// Confirm: the key and everything encrypted only under it are lost.
        #[arg(long)]
        yes: bool,
    },
}

/// Arguments of encrypt/decrypt.
#[derive(Debug, Args)]
pub struct CryptArgs {
    /// The key's name.
    pub key: String,
    /// Additional authenticated data (must match at decryption).
    #[arg(long, value_name = "TEXT")]
    pub aad: Option<String>,
    /// Ciphertext is base64 text (output of encrypt, input of decrypt).
    #[arg(long)]
    pub base64: bool,
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn timeouts_parse_as_durations_seconds_or_no_limit() {
        assert_eq!(parse_timeout("2s"), Ok(Timeout(Some(Duration::from_secs(2)))));
        assert_eq!(parse_timeout("2"), Ok(Timeout(Some(Duration::from_secs(2)))));
        assert_eq!(parse_timeout("500ms"), Ok(Timeout(Some(Duration::from_millis(500)))));
        assert_eq!(parse_timeout("1m 30s"), Ok(Timeout(Some(Duration::from_secs(90)))));
        assert_eq!(parse_timeout("0"), Ok(Timeout(None)));
        assert_eq!(parse_timeout("none"), Ok(Timeout(None)));
        assert!(parse_timeout("soon").is_err());
        let cli = Cli::try_parse_from(["harpoctl", "ping"]).expect("parse");
        assert_eq!(cli.timeout, Timeout(Some(Duration::from_secs(30))), "the default");
        let cli = Cli::try_parse_from(["harpoctl", "ping", "--timeout", "3s"]).expect("parse");
        assert_eq!(cli.timeout, Timeout(Some(Duration::from_secs(3))), "global flag");
    }

    #[test]
    fn audit_commands_parse() {
        let cli = Cli::try_parse_from(["harpoctl", "audit", "verify", "b", "a"]).expect("parse");
        assert!(
            matches!(cli.command, Command::Audit(AuditCommand::Verify { files }) if files.len() == 2)
        );
        assert!(Cli::try_parse_from(["harpoctl", "audit", "verify"]).is_err(), "needs a file");
        let cli = Cli::try_parse_from([
            "harpoctl", "--json", "audit", "tail", "--file", "f", "-f", "-n", "5",
        ])
        .expect("parse");
        assert!(cli.json);
        assert!(matches!(
            cli.command,
            Command::Audit(AuditCommand::Tail { file: Some(_), follow: true, lines: 5 })
        ));
        let cli = Cli::try_parse_from(["harpoctl", "audit", "tail"]).expect("parse");
        assert!(matches!(
            cli.command,
            Command::Audit(AuditCommand::Tail { file: None, lines: 20, .. })
        ));
    }
}
