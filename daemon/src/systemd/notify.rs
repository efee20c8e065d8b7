//! `sd_notify(3)`: READY, STATUS, WATCHDOG, RELOADING and STOPPING datagrams.
//!
//! The `sd-notify` crate reads `NOTIFY_SOCKET` from the environment on every call; a
//! [`Notifier`] reads it once at start, so a daemon embedded in a test can be pointed at
//! a socket of the test's own, and the watchdog interval travels with it.

use std::io;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::Duration;

pub use sd_notify::NotifyState;

/// Where notifications go, and whether the service manager expects watchdog pings.
#[derive(Debug, Clone, Default)]
pub struct Notifier {
    socket: Option<PathBuf>,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// From `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID`, as systemd sets them.
    pub fn from_env() -> Self {
        let socket = std::env::var_os("NOTIFY_SOCKET").filter(|s| !s.is_empty()).map(PathBuf::from);
        // A zero interval disables the watchdog (sd_watchdog_enabled(3)).
        let watchdog = sd_notify::watchdog_enabled().filter(|d| !d.is_zero());
        Self { socket, watchdog }
    }

    /// To `socket` (a path, or `@name` for the abstract namespace), expecting watchdog
    /// pings every `watchdog` at the latest.
    pub fn to(socket: impl Into<PathBuf>, watchdog: Option<Duration>) -> Self {
        Self { socket: Some(socket.into()), watchdog }
    }

    /// One that says nothing (no service manager).
    pub fn silent() -> Self {
        Self::default()
    }

    /// Whether anyone listens.
    pub fn enabled(&self) -> bool {
        self.socket.is_some()
    }

    /// The service manager's watchdog timeout, if it set one.
    pub fn watchdog(&self) -> Option<Duration> {
        self.watchdog
    }

    /// Sends `states` as one datagram. Silent when there is no socket.
    pub fn send(&self, states: &[NotifyState<'_>]) -> io::Result<()> {
        let Some(path) = &self.socket else {
            return Ok(());
        };
        let mut msg = String::new();
        for s in states {
            msg.push_str(&s.to_string());
            msg.push('\n');
        }
        let sock = UnixDatagram::unbound()?;
        let sent = match path.to_str().and_then(|p| p.strip_prefix('@')) {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                sock.send_to_addr(msg.as_bytes(), &addr)?
            }
            None => sock.send_to(msg.as_bytes(), path)?,
        };
        if sent != msg.len() {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "notification cut short"));
        }
        Ok(())
    }

    /// Sends `states`, logging (not failing) when the service manager cannot be reached:
    /// a missed notification must never take the daemon down.
    pub fn tell(&self, states: &[NotifyState<'_>]) {
        if let Err(e) = self.send(states) {
            tracing::warn!(error = %e, "cannot notify the service manager");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datagrams_carry_one_state_per_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).expect("bind");
        let n = Notifier::to(&path, Some(Duration::from_secs(2)));
        n.send(&[NotifyState::Reloading, NotifyState::MonotonicUsec(42)]).expect("send");
        let mut buf = [0u8; 256];
        let len = listener.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..len], b"RELOADING=1\nMONOTONIC_USEC=42\n");
        assert_eq!(n.watchdog(), Some(Duration::from_secs(2)));
        assert!(Notifier::silent().send(&[NotifyState::Ready]).is_ok(), "silent says nothing");
        let gone = Notifier::to(dir.path().join("nobody"), None);
        assert!(gone.send(&[NotifyState::Ready]).is_err(), "a missing socket is an error");
    }

    #[test]
    fn abstract_sockets_are_reached() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("harpocrates-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(&name).expect("addr");
        let listener = UnixDatagram::bind_addr(&addr).expect("bind");
        Notifier::to(format!("@{name}"), None).send(&[NotifyState::Stopping]).expect("send");
        let mut buf = [0u8; 64];
        let len = listener.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..len], b"STOPPING=1\n");
    }
}
