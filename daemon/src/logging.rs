//! Logging to journald when systemd gave us a journal stream, else to stderr.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Installs the global subscriber. `RUST_LOG` overrides `level`.
pub fn init(level: &str) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        match tracing_journald::layer() {
            Ok(journald) => {
                let _ = registry
                    .with(
                        journald
                            .with_syslog_identifier("harpocratesd".into())
                            // Audit records are then `HARPOCRATES_OP=`, `HARPOCRATES_KEY=`, ...
                            .with_field_prefix(Some("HARPOCRATES".into())),
                    )
                    .try_init();
                return;
            }
            Err(e) => eprintln!("harpocratesd: journald unavailable ({e}); logging to stderr"),
        }
    }
    let _ = registry
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_target(false))
        .try_init();
}
