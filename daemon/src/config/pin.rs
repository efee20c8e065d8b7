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
    use std::io::Read;
    use std::os::unix::fs::MetadataExt;
    let fail = |what: String| ConfigError::Pin(format!("the PIN file {}: {what}", path.display()));
    let mut file = std::fs::File::open(path).map_err(|e| {
        ConfigError::Pin(format!("cannot read the PIN file {}: {e}", path.display()))
    })?;
    // Checked on the open file, so the file inspected is the file read.
    let meta = file.metadata().map_err(|e| fail(format!("cannot inspect it: {e}")))?;
    check_private_file(meta.mode(), meta.uid()).map_err(fail)?;
    let mut bytes = Zeroizing::new(Vec::new());
    file.read_to_end(&mut bytes).map_err(|e| fail(format!("cannot read it: {e}")))?;
    std::str::from_utf8(&bytes)
        .map(|s| Zeroizing::new(s.to_owned()))
        .map_err(|_| fail("it is not UTF-8".into()))
}

/// A secret file must be owned by us (or root) and unreadable by group and others, as
/// OpenSSH insists for private keys: anyone else who can read it has the token.
fn check_private_file(mode: u32, owner: u32) -> Result<(), String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if owner != me && owner != 0 {
        return Err(format!("it is owned by uid {owner}, not by this daemon's uid {me} or root"));
    }
    if mode & 0o077 != 0 {
        return Err(format!(
            "its mode is {:04o}: group or others can read or change it; chmod 600 it",
            mode & 0o7777
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_file_and_drops_the_newline() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pin");
        std::fs::write(&path, "s3cret\n").expect("write");
        private(&path);
        let src = PinSource { file: Some(path), ..Default::default() };
        assert_eq!(src.load().expect("pin").as_str(), "s3cret");
    }

    fn private(path: &Path) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }

    #[test]
    fn a_pin_file_others_can_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pin");
        std::fs::write(&path, "s3cret").expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        let err = PinSource { file: Some(path.clone()), ..Default::default() }
            .load()
            .expect_err("0640 refused")
            .to_string();
        assert!(err.contains("0640") && err.contains("pin"), "{err}");
        assert!(!err.contains("s3cret"), "{err}");
        assert_eq!(
            check_private_file(0o100600, 12345),
            Err(format!("it is owned by uid 12345, not by this daemon's uid {} or root", unsafe {
                libc::geteuid()
            }))
        );
    }

    #[test]
    fn errors_name_the_source_but_never_the_pin() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pin");
        std::fs::write(&path, "\n").expect("write");
        private(&path);
        let err = PinSource { file: Some(path), ..Default::default() }.load().expect_err("empty");
        assert!(err.to_string().contains("empty"), "{err}");
        let missing = PinSource { file: Some(dir.path().join("nope")), ..Default::default() };
        assert!(missing.load().expect_err("missing").to_string().contains("nope"));
        let none = PinSource::default().load().expect_err("unconfigured");
        assert!(none.to_string().contains("pin_file"), "{none}");
    }
}
