//! Where the token PIN comes from. Never argv, never a log line.

use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use super::ConfigError;

/// The configured PIN sources, tried in this order: systemd credential, file, environment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PinSource {
    /// Name under `$CREDENTIALS_DIRECTORY` (systemd `LoadCredential=`).
    pub credential: Option<String>,
    /// A file holding the PIN (trailing newline ignored).
    pub file: Option<PathBuf>,
    /// An environment variable holding the PIN.
    pub env: Option<String>,
}

impl PinSource {
    /// Whether any source is configured.
    pub fn is_configured(&self) -> bool {
        self.credential.is_some() || self.file.is_some() || self.env.is_some()
    }

    /// Reads the PIN from the first configured source.
    pub fn load(&self) -> Result<Zeroizing<String>, ConfigError> {
        let pin = if let Some(name) = &self.credential {
            let dir = std::env::var_os("CREDENTIALS_DIRECTORY").ok_or_else(|| {
                ConfigError::Pin(format!(
                    "pin_credential = {name:?} but $CREDENTIALS_DIRECTORY is not set \
                     (use LoadCredential= in the unit)"
                ))
            })?;
            read_pin_file(&Path::new(&dir).join(name))?
        } else if let Some(path) = &self.file {
            read_pin_file(path)?
        } else if let Some(var) = &self.env {
            let value = std::env::var(var).map_err(|_| {
                ConfigError::Pin(format!("pin_env = {var:?} but that variable is not set"))
            })?;
            Zeroizing::new(value)
        } else {
            return Err(ConfigError::Pin(
                "no PIN source: set pin_file, pin_env or pin_credential".into(),
            ));
        };
        let trimmed = Zeroizing::new(pin.trim_end_matches(['\n', '\r']).to_owned());
        if trimmed.is_empty() {
            return Err(ConfigError::Pin("the PIN is empty".into()));
        }
        Ok(trimmed)
    }
}

fn read_pin_file(path: &Path) -> Result<Zeroizing<String>, ConfigError> {
    let bytes = Zeroizing::new(std::fs::read(path).map_err(|e| {
        ConfigError::Pin(format!("cannot read the PIN file {}: {e}", path.display()))
    })?);
    std::str::from_utf8(&bytes)
        .map(|s| Zeroizing::new(s.to_owned()))
        .map_err(|_| ConfigError::Pin(format!("the PIN file {} is not UTF-8", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_file_and_drops_the_newline() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pin");
        std::fs::write(&path, "s3cret\n").expect("write");
        let src = PinSource { file: Some(path), ..Default::default() };
        assert_eq!(src.load().expect("pin").as_str(), "s3cret");
    }

    #[test]
    fn errors_name_the_source_but_never_the_pin() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pin");
        std::fs::write(&path, "\n").expect("write");
        let err = PinSource { file: Some(path), ..Default::default() }.load().expect_err("empty");
        assert!(err.to_string().contains("empty"), "{err}");
        let missing = PinSource { file: Some(dir.path().join("nope")), ..Default::default() };
        assert!(missing.load().expect_err("missing").to_string().contains("nope"));
        let none = PinSource::default().load().expect_err("unconfigured");
        assert!(none.to_string().contains("pin_file"), "{none}");
    }
}
