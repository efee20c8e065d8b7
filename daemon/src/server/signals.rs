//! SIGTERM, SIGINT and SIGHUP for the binary.

use super::reload::task::ReloadHandle;

type SignalStreams =
    (tokio::signal::unix::Signal, tokio::signal::unix::Signal, tokio::signal::unix::Signal);

/// SIGTERM, SIGINT and SIGHUP, caught from the moment they are installed.
pub struct Signals(Option<SignalStreams>);

impl Signals {
    /// Installs the handlers. Do it first: a SIGTERM sent right after READY=1 (systemd
    /// may) must find them installed, or the default action kills the daemon without a
    /// graceful stop.
    pub fn install() -> Self {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::hangup()),
        ) {
            (Ok(term), Ok(int), Ok(hup)) => Self(Some((term, int, hup))),
            _ => {
                tracing::error!("cannot install signal handlers; stop the daemon with SIGKILL");
                Self(None)
            }
        }
    }

    /// Returns on SIGTERM or SIGINT; asks `reload` for a reload on every SIGHUP until then.
    pub async fn wait(self, reload: &ReloadHandle) {
        let Some((mut term, mut int, mut hup)) = self.0 else {
            return std::future::pending().await;
        };
        loop {
            tokio::select! {
                _ = term.recv() => return tracing::info!("SIGTERM received"),
                _ = int.recv() => return tracing::info!("SIGINT received"),
                _ = hup.recv() => {
                    tracing::info!("SIGHUP received: reloading the configuration");
                    reload.request();
                }
            }
        }
    }
}
