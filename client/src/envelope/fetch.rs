//! Fetching a data key from the daemon into locked memory, and the client errors of the
//! envelope format's errors.

use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use harpocrates_protocol::envelope::{EnvelopeError, EnvelopeKey};
use harpocrates_protocol::{Request, Response};

use super::locked::LockedKey;
use crate::client::Client;
use crate::error::{Error, Result, describe};

/// One fetched data key.
pub(super) struct Entry {
    pub(super) key: LockedKey,
    pub(super) fetched: Instant,
    /// Messages sealed (or attempted) under this fetch.
    pub(super) sealed: AtomicU64,
}

impl Entry {
    pub(super) fn version(&self) -> u32 {
        self.key.kek().version
    }

    pub(super) fn expired(&self, ttl: Duration) -> bool {
        self.fetched.elapsed() >= ttl
    }
}

/// Fetches the data key of `kek`'s active version (or of `version`) for `context`, and
/// moves it into locked memory; the copy the daemon sent is wiped.
pub(super) async fn fetch(
    client: &Client,
    kek: &str,
    context: &[u8],
    version: Option<u32>,
) -> Result<Entry> {
    let request =
        Request::EnvelopeDataKey { kek: kek.to_owned(), context: context.to_vec(), version };
    let data_key = match client.call(request).await? {
        Response::DataKey(k) => k,
        other => {
            return Err(Error::Protocol(format!("unexpected answer: {}", describe(&other))));
        }
    };
    if data_key.kek.name != kek || version.is_some_and(|v| v != data_key.kek.version) {
        return Err(Error::Protocol(format!(
            "asked for the data key of KEK '{kek}'{}, got one of {}",
            version.map(|v| format!(" version {v}")).unwrap_or_default(),
            data_key.kek
        )));
    }
    let key = EnvelopeKey::new(data_key.kek.clone(), data_key.dek.expose()).map_err(error)?;
    drop(data_key); // SecretBytes: wiped
    Ok(Entry { key: LockedKey::new(key), fetched: Instant::now(), sealed: AtomicU64::new(0) })
}

/// The client error of an envelope error, as the daemon would report it.
pub(super) fn error(e: EnvelopeError) -> Error {
    match e {
        EnvelopeError::Integrity => Error::IntegrityCheckFailed(e.to_string()),
        EnvelopeError::Random(_) => Error::OperationFailed(e.to_string()),
        EnvelopeError::KeyLength(_) => Error::Protocol(format!("the daemon sent {e}")),
        EnvelopeError::Malformed(_) | EnvelopeError::InvalidKekName(_) => {
            Error::InvalidRequest(e.to_string())
        }
        EnvelopeError::OtherKek { .. } => Error::InvalidRequest(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_errors_map_to_the_daemons_codes() {
        assert!(matches!(error(EnvelopeError::Integrity), Error::IntegrityCheckFailed(_)));
        assert!(matches!(error(EnvelopeError::Malformed("x")), Error::InvalidRequest(_)));
        assert!(matches!(error(EnvelopeError::Random("x".into())), Error::OperationFailed(_)));
    }
}
