//! Command-line flags of `harpocratesd`. Flags override the configuration file.

use std::path::PathBuf;

use clap::Parser;

/// harpocratesd — an HSM behind one Unix socket.
#[derive(Debug, Clone, Default, Parser)]
#[command(name = "harpocratesd", version)]
pub struct Args {
    /// Configuration file (TOML).
    #[arg(short, long, value_name = "FILE", conflicts_with = "dev")]
    pub config: Option<PathBuf>,

    /// Development mode: embedded soft token in a per-user state directory with a
    /// generated PIN, socket at the per-user default path. No HSM needed.
    #[arg(long)]
    pub dev: bool,

    /// Unix socket path.
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,

    /// State directory of the soft token.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,

    /// Number of session actors.
    #[arg(long, value_name = "N")]
    pub max_sessions: Option<u64>,

    /// Threads serving client connections (default: one per core, at most 8).
    #[arg(long, value_name = "N")]
    pub io_threads: Option<u64>,

    /// Log filter (overrides `log_level`; `RUST_LOG` overrides both).
    #[arg(long, value_name = "FILTER")]
    pub log_level: Option<String>,

    /// Validate the configuration (and the PIN source) and exit.
    #[arg(long)]
    pub check_config: bool,
}
