//! From validated settings to an open backend, with one clear error line per failure.

use std::sync::Arc;

use crate::backend::pkcs11::Pkcs11Backend;
use crate::backend::soft::SoftToken;
use crate::backend::{Backend, BackendError};
use crate::config::{BackendSettings, ConfigError, Settings};

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// The configuration is invalid.
    #[error("configuration: {0}")]
    Config(#[from] ConfigError),
    /// The token could not be opened.
    #[error("{backend} backend: {source}")]
    Backend {
        /// Which backend.
        backend: &'static str,
        /// What it said.
        source: BackendError,
    },
}

impl StartupError {
    /// Exit status for the binary: 78 (EX_CONFIG) for configuration errors, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            StartupError::Config(_) => 78,
            _ => 1,
        }
    }
}

/// Opens the configured backend: reads the PIN and unlocks the token.
pub fn open_backend(settings: &Settings) -> Result<Arc<dyn Backend>, StartupError> {
    match &settings.backend {
        BackendSettings::Soft(soft) => {
            let pin = settings.pin.load()?;
            let token = SoftToken::open(soft, &pin)
                .map_err(|source| StartupError::Backend { backend: "soft", source })?;
            Ok(Arc::new(token))
        }
        BackendSettings::Pkcs11(config) => {
            let pin = settings.pin.load()?;
            let (attempts, delay) = (settings.retry.attempts, settings.retry.delay);
            let backend = Pkcs11Backend::open_with_retry(config.clone(), pin, attempts, delay)
                .map_err(|source| StartupError::Backend { backend: "pkcs11", source })?;
            Ok(Arc::new(backend))
        }
        BackendSettings::CloudHsm(profile) => {
            tracing::info!(command = ?profile.configure_command(), "CloudHSM client configuration");
            let pin = profile.login_pin(&settings.pin.load()?);
            let (attempts, delay) = (settings.retry.attempts, settings.retry.delay);
            let backend = Pkcs11Backend::open_with_retry(profile.pkcs11(), pin, attempts, delay)
                .map_err(|source| StartupError::Backend { backend: "cloudhsm", source })?;
            Ok(Arc::new(backend))
        }
    }
}
