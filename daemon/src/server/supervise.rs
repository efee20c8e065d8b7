//! What the daemon tells its service manager while it runs: watchdog pings that only a
//! working token path can send, and a one-line status.

use std::sync::Arc;
use std::time::Duration;

use super::generation::Current;
use crate::metrics::Metrics;
use crate::systemd::notify::{Notifier, NotifyState};

/// How often the status line is refreshed.
pub const STATUS_EVERY: Duration = Duration::from_secs(5);

/// How often the key count in the status line is taken from the token (a listing).
const KEYS_EVERY: Duration = Duration::from_secs(60);

/// The watchdog ping interval for a service-manager timeout: half of it, as
/// `sd_watchdog_enabled(3)` advises.
pub fn ping_interval(timeout: Duration) -> Duration {
    (timeout / 2).max(Duration::from_millis(1))
}

/// Pings the watchdog every `every`, each time only after the session pool in force has
/// completed a trivial token call within that interval. A call that fails still proves
/// the path is alive (a restart would not help a token that answers with errors); a call
/// that does not come back stops the pings, and systemd restarts the daemon.
pub async fn watchdog(current: Arc<Current>, notifier: Notifier, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let generation = current.load();
        let probe = generation.pool.run("watchdog_probe", |s| s.probe());
        match tokio::time::timeout(every, probe).await {
            Ok(outcome) => {
                if let Err(e) = outcome {
                    tracing::warn!(error = %e, "watchdog: the token probe failed; the path is alive");
                }
                notifier.tell(&[NotifyState::Watchdog]);
            }
            Err(_) => tracing::error!(
                waited = ?every,
                generation = generation.stamp.number,
                "watchdog: the session pool did not complete a token call; not pinging"
            ),
        }
    }
}

/// What the status line shows.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    /// Backend name.
    pub backend: String,
    /// Token label.
    pub token: String,
    /// Backend generation.
    pub generation: u64,
    /// Sessions running work now.
    pub busy: u32,
    /// Session pool size.
    pub max_sessions: u32,
    /// Keys on the token at the last count.
    pub keys: Option<usize>,
    /// Recent operations per second.
    pub ops_per_sec: f64,
}

impl Status {
    /// One line for `STATUS=` (`systemctl status` shows it).
    pub fn line(&self) -> String {
        let keys = self.keys.map_or_else(|| "? keys".to_owned(), |n| format!("{n} keys"));
        format!(
            "{} token '{}' (generation {}); sessions {}/{} busy; {keys}; {:.0} ops/s",
            self.backend,
            self.token,
            self.generation,
            self.busy,
            self.max_sessions,
            self.ops_per_sec
        )
    }
}

/// Refreshes `STATUS=` every [`STATUS_EVERY`] until aborted.
pub async fn status(current: Arc<Current>, notifier: Notifier, metrics: Arc<Metrics>) {
    let mut tick = tokio::time::interval(STATUS_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut keys: Option<(u64, tokio::time::Instant, usize)> = None;
    loop {
        tick.tick().await;
        let generation = current.load();
        let number = generation.stamp.number;
        let stale = keys.is_none_or(|(g, at, _)| g != number || at.elapsed() >= KEYS_EVERY);
        if stale {
            let count = generation.pool.run("status_key_count", |s| s.list_keys().map(|k| k.len()));
            if let Ok(Ok(n)) = tokio::time::timeout(STATUS_EVERY, count).await {
                keys = Some((number, tokio::time::Instant::now(), n));
            }
        }
        let shared = generation.pool.shared();
        let line = Status {
            backend: shared.backend.name().to_owned(),
            token: shared.backend.token_info().label,
            generation: number,
            busy: generation.pool.gauges().sessions_busy,
            max_sessions: shared.max_sessions,
            keys: keys.filter(|(g, _, _)| *g == number).map(|(_, _, n)| n),
            ops_per_sec: metrics.snapshot().ops_per_sec,
        }
        .line();
        drop(generation);
        notifier.tell(&[NotifyState::Status(&line)]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_line_names_what_an_operator_checks_first() {
        let s = Status {
            backend: "pkcs11".into(),
            token: "prod".into(),
            generation: 3,
            busy: 2,
            max_sessions: 4,
            keys: Some(12),
            ops_per_sec: 530.4,
        };
        assert_eq!(
            s.line(),
            "pkcs11 token 'prod' (generation 3); sessions 2/4 busy; 12 keys; 530 ops/s"
        );
        assert!(Status { keys: None, ..s }.line().contains("? keys"));
        assert_eq!(ping_interval(Duration::from_secs(30)), Duration::from_secs(15));
    }
}
