//! Byte budgets: how much request and answer data the daemon holds for clients.
//!
//! Counting requests is not enough (1,024 pipelined 1 MiB encrypts are 2 GiB), so every
//! frame is charged its size from the moment its header is read until its answer has
//! been handed to the socket. A connection over its own budget, or a daemon over the
//! total, stops reading (the client feels back-pressure through the socket) instead of
//! buffering.
//!
//! So that a few greedy clients cannot lock everyone else out of the total, each
//! connection has a small allowance that does not draw on it: a fresh client's ping or
//! small encrypt is always read. The worst case is therefore
//! `max_connections × allowance + total`, plus one frame header per connection.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Budgets are counted in KiB so that a `u32` permit count covers any frame.
const UNIT: usize = 1024;

fn units(bytes: usize) -> u32 {
    u32::try_from(bytes.div_ceil(UNIT).max(1)).unwrap_or(u32::MAX)
}

/// The daemon-wide budget, shared by all connections.
#[derive(Clone)]
pub struct TotalBudget {
    permits: Arc<Semaphore>,
    total_units: u32,
}

impl TotalBudget {
    /// A budget of `bytes` in total.
    pub fn new(bytes: usize) -> Self {
        let total_units = units(bytes);
        Self { permits: Arc::new(Semaphore::new(total_units as usize)), total_units }
    }

    /// Bytes charged right now, across all connections.
    pub fn in_use(&self) -> usize {
        (self.total_units as usize - self.permits.available_permits()) * UNIT
    }
}

/// One connection's budget.
pub struct ConnectionBudget {
    charged: Cell<usize>,
    own: Arc<Semaphore>,
    own_units: u32,
    allowance_units: u32,
    allowance_used: Rc<Cell<u32>>,
    total: TotalBudget,
}

/// Bytes charged for one request; given back when dropped.
pub struct Charge {
    _own: OwnedSemaphorePermit,
    _total: Option<OwnedSemaphorePermit>,
    from_allowance: u32,
    allowance_used: Rc<Cell<u32>>,
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.allowance_used.set(self.allowance_used.get() - self.from_allowance);
    }
}

impl ConnectionBudget {
    /// A budget of `own_bytes` for one connection, of which the first `allowance_bytes`
    /// in flight do not draw on `total`.
    pub fn new(own_bytes: usize, allowance_bytes: usize, total: TotalBudget) -> Self {
        let own_units = units(own_bytes);
        Self {
            charged: Cell::new(0),
            own: Arc::new(Semaphore::new(own_units as usize)),
            own_units,
            allowance_units: u32::try_from(allowance_bytes.div_ceil(UNIT))
                .unwrap_or(u32::MAX)
                .min(own_units),
            allowance_used: Rc::new(Cell::new(0)),
            total,
        }
    }

    /// Waits until `bytes` fit in this connection's budget and the total, then charges
    /// them. A single frame larger than a budget is charged the whole budget, so it still
    /// proceeds, alone. `None` only if the budget was closed.
    pub async fn charge(&self, bytes: usize) -> Option<Charge> {
        self.charged.set(self.charged.get().saturating_add(bytes));
        let want = units(bytes).min(self.own_units);
        let own = self.own.clone().acquire_many_owned(want).await.ok()?;
        let used = self.allowance_used.get();
        let from_allowance = want.min(self.allowance_units.saturating_sub(used));
        self.allowance_used.set(used + from_allowance);
        let from_total = (want - from_allowance).min(self.total.total_units);
        // Build the charge before waiting, so the allowance is given back if this future is
        // dropped (shutdown) while it waits for the total.
        let mut charge = Charge {
            _own: own,
            _total: None,
            from_allowance,
            allowance_used: self.allowance_used.clone(),
        };
        if from_total > 0 {
            charge._total =
                Some(self.total.permits.clone().acquire_many_owned(from_total).await.ok()?);
        }
        Some(charge)
    }
}

impl ConnectionBudget {
    /// Bytes charged over the connection's whole life.
    pub fn charged_total(&self) -> usize {
        self.charged.get()
    }
}

/// Hands memory freed by a departed client back to the OS: glibc otherwise keeps the
/// high-water mark of large frames for the life of the process.
pub fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only works on the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
    }

    #[test]
    fn a_connection_waits_at_its_budget_and_resumes_when_answers_leave() {
        rt().block_on(async {
            let total = TotalBudget::new(1 << 20);
            let conn = ConnectionBudget::new(64 * 1024, 4 * 1024, total.clone());
            let first = conn.charge(60 * 1024).await.expect("open");
            let blocked =
                tokio::time::timeout(std::time::Duration::from_millis(50), conn.charge(8 * 1024))
                    .await;
            assert!(blocked.is_err(), "over the connection budget must wait");
            drop(first);
            let _second = conn.charge(8 * 1024).await.expect("open");
            assert_eq!(total.in_use(), 4 * 1024, "8 KiB, of which 4 KiB from the allowance");
        });
    }

    #[test]
    fn the_allowance_serves_a_newcomer_when_the_total_is_spent() {
        rt().block_on(async {
            let total = TotalBudget::new(128 * 1024);
            let greedy = ConnectionBudget::new(1 << 20, 4 * 1024, total.clone());
            let _held = greedy.charge(132 * 1024).await.expect("open");
            assert_eq!(total.in_use(), 128 * 1024);
            let fresh = ConnectionBudget::new(1 << 20, 4 * 1024, total.clone());
            let small =
                tokio::time::timeout(std::time::Duration::from_millis(50), fresh.charge(1024))
                    .await;
            assert!(small.is_ok(), "a small request fits in the allowance");
            let big =
                tokio::time::timeout(std::time::Duration::from_millis(50), fresh.charge(64 * 1024))
                    .await;
            assert!(big.is_err(), "a large one waits for the total");
        });
    }

    #[test]
    fn an_oversized_frame_is_charged_the_whole_budget_and_proceeds() {
        rt().block_on(async {
            let total = TotalBudget::new(1 << 30);
            let conn = ConnectionBudget::new(16 * 1024, 0, total.clone());
            let c = conn.charge(1 << 20).await.expect("open");
            assert_eq!(total.in_use(), 16 * 1024);
            drop(c);
            assert_eq!(total.in_use(), 0);
        });
    }
}
