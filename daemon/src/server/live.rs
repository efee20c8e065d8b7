//! Settings that a reload changes in place, read where they are used.

use std::sync::atomic::{AtomicUsize, Ordering};

use arc_swap::ArcSwap;

use super::connection::ConnectionLimits;

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
