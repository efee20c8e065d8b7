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

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

const EXIT_CODES: &str = "\
Exit codes: 0 ok; 1 operation failed; 2 usage; 64 invalid request; 65 integrity check \
failed; 66 key not found; 69 daemon or token unavailable; 73 key exists; 75 busy (retry); \
76 protocol/version mismatch or unsupported; 77 permission denied; 78 invalid state \
(e.g. a rotation step out of order).";

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Round trip to the daemon.
    Ping,
    /// Daemon and token health.
    Health,
    /// Operation counters and latencies.
    Metrics,
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
