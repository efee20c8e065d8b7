//! Threads for in-memory crypto, so the envelope operations of a batch are spread across
//! cores instead of running one after another on the I/O thread.
//!
//! Only batches use it: a lone request is cheaper to encrypt in place than to hand to
//! another thread (a cross-core wake-up costs more than AES-GCM on a few KiB).

use tokio::sync::oneshot;

type Task = Box<dyn FnOnce() + Send>;

/// A fixed set of crypto threads fed by one channel; they stop when the pool is dropped.
pub struct CryptoPool {
    tx: crossbeam_channel::Sender<Task>,
}

impl CryptoPool {
    /// Starts `threads` crypto threads (at least one).
    pub fn new(threads: usize) -> Self {
        let (tx, rx) = crossbeam_channel::unbounded::<Task>();
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("harpocrates-crypto-{i}"))
                .spawn(move || {
                    while let Ok(task) = rx.recv() {
                        // A panicking task must not take the thread with it.
                        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(task));
                    }
                });
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "cannot start a crypto thread");
            }
        }
        Self { tx }
    }

    /// Hands `f` to a crypto thread **now** and returns a future of its result (`None` if
    /// the pool is gone or `f` panicked). Sending before anything is awaited is what lets
    /// the caller work in parallel with the crypto threads.
    pub fn run<T, F>(&self, f: F) -> impl std::future::Future<Output = Option<T>> + use<T, F>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        let sent = self.tx.send(Box::new(move || drop(reply.send(f())))).is_ok();
        async move {
            if !sent {
                return None;
            }
            rx.await.ok()
        }
    }
}
