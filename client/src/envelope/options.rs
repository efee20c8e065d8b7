//! [`LocalEnvelopeOptions`]: how long a [`LocalEnvelope`](super::LocalEnvelope) keeps a
//! data key.

use std::time::Duration;

use crate::error::{Error, Result};

/// The default of [`LocalEnvelopeOptions::ttl`]: 5 minutes.
pub const DEFAULT_LOCAL_TTL: Duration = Duration::from_secs(300);

/// The default of [`LocalEnvelopeOptions::max_messages`]: 2^32.
pub const DEFAULT_MAX_MESSAGES: u64 = 1 << 32;

/// Keys of versions other than the current one a [`LocalEnvelope`](super::LocalEnvelope)
/// keeps for decryption, at most.
pub const OTHER_VERSIONS: usize = 4;

/// How long a [`LocalEnvelope`](super::LocalEnvelope) keeps a data key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalEnvelopeOptions {
    /// A data key is used for this long after it was fetched, then fetched again (which
    /// picks up a new active KEK version after a rotation). Must be above zero. Default:
    /// [`DEFAULT_LOCAL_TTL`] (5 minutes).
    pub ttl: Duration,
    /// After this many messages sealed under one fetch, the key is fetched again before the
    /// next message. At least 1. Default: [`DEFAULT_MAX_MESSAGES`] (2^32). Envelope format
    /// v2 has no per-key message limit to enforce (192-bit nonces); this bounds how many
    /// messages go out between two checks with the daemon.
    pub max_messages: u64,
}

impl Default for LocalEnvelopeOptions {
    fn default() -> Self {
        Self { ttl: DEFAULT_LOCAL_TTL, max_messages: DEFAULT_MAX_MESSAGES }
    }
}

impl LocalEnvelopeOptions {
    pub(super) fn validate(&self) -> Result<()> {
        if self.ttl.is_zero() {
            return Err(Error::InvalidRequest("a local envelope's ttl must be above zero".into()));
        }
        if self.max_messages == 0 {
            return Err(Error::InvalidRequest(
                "a local envelope's max_messages must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_validated() {
        assert!(LocalEnvelopeOptions::default().validate().is_ok());
        let zero_ttl = LocalEnvelopeOptions { ttl: Duration::ZERO, ..Default::default() };
        assert!(matches!(zero_ttl.validate(), Err(Error::InvalidRequest(_))));
        let no_messages = LocalEnvelopeOptions { max_messages: 0, ..Default::default() };
        assert!(matches!(no_messages.validate(), Err(Error::InvalidRequest(_))));
        let one = LocalEnvelopeOptions { max_messages: 1, ttl: Duration::from_nanos(1) };
        assert!(one.validate().is_ok());
    }
}
