//! Settings that a reload changes in place, read where they are used.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;

/// The connection settings in force: each new connection takes the limits in force when
/// it is accepted and keeps them for its life.
pub struct Live {
    limits: ArcSwap<ConnectionLimits>,
    max_connections: AtomicUsize,
}

impl Live {
    /// With `limits` and at most `max_connections` connections.
    pub fn new(limits: ConnectionLimits, max_connections: usize) -> Self {
        Self {
            limits: ArcSwap::from_pointee(limits),
            max_connections: AtomicUsize::new(max_connections),
        }
    }

    /// The limits for a connection accepted now.
    pub fn limits(&self) -> ConnectionLimits {
        **self.limits.load()
    }

    /// The most connections served at once.
    pub fn max_connections(&self) -> usize {
        self.max_connections.load(Ordering::Relaxed)
    }

    /// Puts new values in force for connections accepted from now on.
    pub fn set(&self, limits: ConnectionLimits, max_connections: usize) {
        self.limits.store(std::sync::Arc::new(limits));
        self.max_connections.store(max_connections, Ordering::Relaxed);
    }
}

/// Per-connection limits.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Largest frame body.
    pub max_frame: u32,
    /// Requests in flight.
    pub max_in_flight: usize,
    /// Request and answer bytes held for this connection.
    pub max_connection_bytes: usize,
    /// Time for a started frame to arrive whole (also the time to say Hello).
    pub frame_timeout: Duration,
    /// A connection with nothing in flight for this long is closed.
    pub idle_timeout: Duration,
}

impl ConnectionLimits {
    /// The limits `settings` configure.
    pub fn of(settings: &crate::config::Settings) -> Self {
        Self {
            max_frame: settings.max_frame,
            max_in_flight: settings.max_in_flight,
            max_connection_bytes: settings.max_connection_bytes,
            frame_timeout: settings.frame_timeout,
            idle_timeout: settings.idle_timeout,
        }
    }
}
