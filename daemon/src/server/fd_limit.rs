//! File descriptors: as many as the system allows, never more connections than fit, and a
//! spare one so that even at the limit a newcomer is told `Busy` instead of hanging.
//!
//! When `accept` fails with `EMFILE`, the connection stays in the kernel's backlog and the
//! listener stays readable: without a spare descriptor the daemon could neither take it
//! nor turn it away. Closing the spare, accepting, answering `Busy` and re-opening the
//! spare is the classic way out (libev, nginx, node).

use std::fs::File;
use std::time::{Duration, Instant};

/// Descriptors kept back from connections for the daemon's own use: the token module's
/// files, the log, the spare, the listener.
const BASE_HEADROOM: u64 = 64;

/// Raises the soft `RLIMIT_NOFILE` to the hard limit and returns the soft limit in force.
pub fn raise_nofile_limit() -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `lim` is a valid, writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 1024;
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
        // SAFETY: `raised` is a valid rlimit no larger than the hard limit.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return raised.rlim_cur;
        }
    }
    lim.rlim_cur
}

/// How many connections fit under `nofile` descriptors beside `sessions` token sessions
/// (a session may hold files of its own in a software token) and `io_threads` connection
/// threads (each has its own reactor: an epoll descriptor and a wake-up descriptor).
pub fn connection_capacity(nofile: u64, sessions: u32, io_threads: usize) -> usize {
    let headroom =
        BASE_HEADROOM + 4 * u64::from(sessions) + 2 * u64::try_from(io_threads).unwrap_or(0);
    usize::try_from(nofile.saturating_sub(headroom).max(1)).unwrap_or(usize::MAX)
}

/// The effective connection limit: the configured one, capped by what the descriptor limit
/// allows (said once in the log when it caps).
pub fn effective_max_connections(configured: usize, sessions: u32, io_threads: usize) -> usize {
    let nofile = raise_nofile_limit();
    let capacity = connection_capacity(nofile, sessions, io_threads);
    if capacity < configured {
        tracing::warn!(
            configured,
            effective = capacity,
            nofile,
            "max_connections is capped by the file-descriptor limit (raise LimitNOFILE=)"
        );
        capacity
    } else {
        configured
    }
}

/// A descriptor held in reserve for refusing connections at the descriptor limit.
pub struct Spare(Option<File>);

impl Spare {
    /// Opens the spare (`/dev/null`).
    pub fn open() -> Self {
        Self(File::open("/dev/null").ok())
    }

    /// Gives the spare up so one more descriptor is free; [`Spare::restore`] takes it back.
    pub fn release(&mut self) -> bool {
        self.0.take().is_some()
    }

    /// Re-opens the spare after use.
    pub fn restore(&mut self) {
        if self.0.is_none() {
            self.0 = File::open("/dev/null").ok();
        }
    }
}

/// Whether an accept error means "out of descriptors".
pub fn is_fd_exhaustion(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE))
}

/// Says a recurring warning at most once per interval, with how often it was held back.
pub struct RateLimitedWarning {
    every: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimitedWarning {
    /// At most one line per `every`.
    pub fn new(every: Duration) -> Self {
        Self { every, last: None, suppressed: 0 }
    }

    /// `Some(n)` when the warning should be logged now (`n` held back since the last
    /// one), `None` when it is held back.
    pub fn tick(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.duration_since(last) < self.every => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_leaves_headroom_for_the_daemon() {
        assert_eq!(connection_capacity(1024, 2, 1), 1024 - 64 - 8 - 2);
        assert_eq!(connection_capacity(256, 10, 4), 256 - 64 - 40 - 8);
        assert_eq!(connection_capacity(10, 10, 8), 1, "never zero");
    }

    #[test]
    fn warnings_are_rate_limited_and_count_what_was_held_back() {
        let mut w = RateLimitedWarning::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(w.tick(t0), Some(0));
        for i in 1..=40 {
            assert_eq!(w.tick(t0 + Duration::from_millis(i * 25)), None);
        }
        assert_eq!(w.tick(t0 + Duration::from_secs(11)), Some(40));
    }

    #[test]
    fn the_spare_can_be_released_and_restored() {
        let mut spare = Spare::open();
        assert!(spare.release());
        assert!(!spare.release(), "released once");
        spare.restore();
        assert!(spare.release());
    }
}
