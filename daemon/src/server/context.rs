//! Who asked and when: the context every request carries from its connection to the
//! point where its outcome is recorded.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use crate::peer::Peer;
use crate::policy::Caller;

/// What a connection knows about itself, shared by its requests.
#[derive(Debug)]
pub struct ConnectionContext {
    /// Connections are numbered from 1 since the daemon started.
    pub id: u64,
    /// The caller, as the kernel reported it at connect time.
    pub peer: Arc<Peer>,
    /// What this connection has running in the pool's lanes.
    pub lanes: ConnectionLanes,
}

impl ConnectionContext {
    /// The caller, as the policy sees it.
    pub fn caller(&self) -> Caller<'_> {
        Caller { uid: self.peer.uid, gid: self.peer.gid, groups: &self.peer.groups }
    }
}

/// One request.
#[derive(Debug, Clone)]
pub struct RequestContext {
    /// Its connection.
    pub conn: Rc<ConnectionContext>,
    /// Its frame id.
    pub id: u64,
    /// When its frame had arrived whole (latency is measured from here).
    pub arrived: Instant,
    /// The same moment on the wall clock, for audit records.
    pub arrived_at: SystemTime,
}

impl RequestContext {
    /// A request that arrived just now.
    pub fn now(conn: Rc<ConnectionContext>, id: u64) -> Self {
        Self { conn, id, arrived: Instant::now(), arrived_at: SystemTime::now() }
    }
}

/// Password-KDF operations one connection may have running or queued at once.
pub const MAX_KDF_PER_CONNECTION: usize = 4;

/// What one connection has running in the pool's lanes.
#[derive(Debug, Default)]
pub struct ConnectionLanes {
    kdf: Cell<usize>,
}

impl ConnectionLanes {
    /// Takes up to `want` KDF slots; returns how many were granted.
    pub(super) fn take_kdf(&self, want: usize) -> usize {
        let granted = want.min(MAX_KDF_PER_CONNECTION.saturating_sub(self.kdf.get()));
        self.kdf.set(self.kdf.get() + granted);
        granted
    }

    pub(super) fn give_kdf(&self, n: usize) {
        self.kdf.set(self.kdf.get() - n);
    }
}
