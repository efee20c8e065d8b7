//! Harpocrates: a Hardware Security Module behind one Unix socket.
//!
//! This facade is what services depend on. It re-exports the [client](client) — async
//! and blocking, with automatic batching — and the [wire protocol](protocol) types.
//!
//! ```no_run
//! # async fn demo() -> Result<(), harpocrates::client::Error> {
//! let client = harpocrates::Client::connect_default().await?;
//! client.generate_key("demo", 256).await?;
//! let ct = client.encrypt("demo", b"hi", None).await?;
//! assert_eq!(client.decrypt("demo", &ct, None).await?.expose(), b"hi");
//! # Ok(()) }
//! ```

pub use harpocrates_client as client;
pub use harpocrates_client::{BlockingClient, Client, Error};
pub use harpocrates_protocol as protocol;
