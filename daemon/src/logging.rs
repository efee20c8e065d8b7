//! Logging to journald when systemd gave us a journal stream, else to stderr.

use std::sync::OnceLock;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, reload};

/// The tracing target of audit events (see `actors::audit`).
pub const AUDIT_TARGET: &str = "harpocrates::audit";

/// The installed filter, for [`set_level`].
static FILTER: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

fn rust_log() -> Option<String> {
    std::env::var("RUST_LOG").ok().filter(|v| !v.is_empty())
}

/// Installs the global subscriber. `RUST_LOG` overrides `level`.
pub fn init(level: &str) {
    let (filter, handle) = reload::Layer::new(filter(level, rust_log().as_deref()));
    let _ = FILTER.set(handle);
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

/// Replaces the log filter with `level` (a reload). Returns `false` when nothing changes
/// because `RUST_LOG` overrides the configuration, or no subscriber was installed here.
pub fn set_level(level: &str) -> Result<bool, String> {
    if rust_log().is_some() {
        return Ok(false);
    }
    let Some(handle) = FILTER.get() else {
        return Ok(false);
    };
    check_level(level)?;
    handle.reload(filter(level, None)).map_err(|e| e.to_string())?;
    Ok(true)
}

/// Whether `level` is a filter [`set_level`] accepts.
pub fn check_level(level: &str) -> Result<(), String> {
    EnvFilter::try_new(level).map(drop).map_err(|e| format!("{level:?} is not a log filter: {e}"))
}

/// The filter: `rust_log` (else `level`), with audit records always let through unless
/// the filter names their target itself.
fn filter(level: &str, rust_log: Option<&str>) -> EnvFilter {
    let spec = rust_log.unwrap_or(level);
    let mut filter = EnvFilter::try_new(spec)
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // Audit records are not diagnostics: `log_level = "warn"` must not silence them (the
    // `[audit] journal` setting decides).
    if !spec.contains(AUDIT_TARGET)
        && let Ok(directive) = format!("{AUDIT_TARGET}=info").parse()
    {
        filter = filter.add_directive(directive);
    }
    filter
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    /// Counts the events that pass the filter.
    struct Count(Arc<AtomicUsize>);

    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Count {
        fn on_event(&self, _: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn passed(level: &str, rust_log: Option<&str>) -> usize {
        let n = Arc::new(AtomicUsize::new(0));
        let subscriber =
            tracing_subscriber::registry().with(filter(level, rust_log)).with(Count(n.clone()));
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(target: AUDIT_TARGET, "an audit record");
            tracing::info!("a diagnostic");
        });
        n.load(Ordering::Relaxed)
    }

    #[test]
    fn a_quiet_log_level_does_not_silence_audit_records() {
        assert_eq!(passed("warn", None), 1, "the audit record only");
        assert_eq!(passed("info", Some("error")), 1, "RUST_LOG too");
        assert_eq!(passed("info", None), 2);
        assert_eq!(passed("warn", Some("harpocrates::audit=off")), 0, "named, it is obeyed");
    }
}
