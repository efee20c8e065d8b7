//! The `cloudhsm` profile: AWS CloudHSM is a PKCS#11 module with one slot, configured by
//! its own `configure-pkcs11` tool, and a login PIN of the form `user:password`. This
//! module only translates; the PKCS#11 backend does the rest.

use std::path::PathBuf;

use zeroize::Zeroizing;

use super::raw::RawCloudHsm;
use super::{ConfigError, invalid};
use crate::backend::pkcs11::{Pkcs11Config, TokenChoice};

/// Where the CloudHSM client SDK 5 installs its PKCS#11 library.
pub const DEFAULT_LIBRARY: &str = "/opt/cloudhsm/lib/libcloudhsm_pkcs11.so";

/// A validated CloudHSM profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudHsmProfile {
    /// Cluster id.
    pub cluster_id: String,
    /// Issuing CA certificate of the cluster.
    pub hsm_ca_file: PathBuf,
    /// Crypto user.
    pub hsm_user: String,
    /// AWS region.
    pub region: String,
    /// Session pool size, if set here.
    pub max_sessions: Option<u64>,
    /// The PKCS#11 library.
    pub library_path: PathBuf,
}

impl CloudHsmProfile {
    /// Checks the `[cloudhsm]` section.
    pub fn from_raw(raw: RawCloudHsm) -> Result<Self, ConfigError> {
        if raw.hsm_password.is_some() {
            return Err(invalid(
                "cloudhsm.hsm_password",
                "secrets do not belong in the configuration file; put the password in \
                 pin_file, pin_env or pin_credential",
            ));
        }
        let need = |field: &'static str, v: Option<String>| {
            v.filter(|s| !s.trim().is_empty()).ok_or_else(|| invalid(field, "is required"))
        };
        let hsm_user = need("cloudhsm.hsm_user", raw.hsm_user)?;
        if hsm_user.contains(':') {
            return Err(invalid("cloudhsm.hsm_user", "may not contain ':'"));
        }
        Ok(Self {
            cluster_id: need("cloudhsm.cluster_id", raw.cluster_id)?,
            hsm_ca_file: raw
                .hsm_ca_file
                .ok_or_else(|| invalid("cloudhsm.hsm_ca_file", "is required"))?,
            hsm_user,
            region: need("cloudhsm.region", raw.region)?,
            max_sessions: raw.max_sessions,
            library_path: raw.library_path.unwrap_or_else(|| PathBuf::from(DEFAULT_LIBRARY)),
        })
    }

    /// The PKCS#11 settings this profile stands for.
    pub fn pkcs11(&self) -> Pkcs11Config {
        Pkcs11Config {
            library_path: self.library_path.clone(),
            token: TokenChoice::First,
            name: "cloudhsm",
        }
    }

    /// The login PIN CloudHSM expects: `user:password`.
    pub fn login_pin(&self, password: &Zeroizing<String>) -> Zeroizing<String> {
        Zeroizing::new(format!("{}:{}", self.hsm_user, password.as_str()))
    }

    /// The `configure-pkcs11` command that points the CloudHSM library at the cluster
    /// (run once on the host, e.g. as `ExecStartPre=`).
    pub fn configure_command(&self) -> Vec<String> {
        vec![
            "/opt/cloudhsm/bin/configure-pkcs11".into(),
            "--cluster-id".into(),
            self.cluster_id.clone(),
            "--region".into(),
            self.region.clone(),
            "--hsm-ca-cert".into(),
            self.hsm_ca_file.display().to_string(),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw() -> RawCloudHsm {
        RawCloudHsm {
            cluster_id: Some("cluster-1234abcd".into()),
            hsm_ca_file: Some("/etc/cloudhsm/customerCA.crt".into()),
            hsm_user: Some("crypto_user".into()),
            region: Some("eu-west-1".into()),
            max_sessions: Some(8),
            ..RawCloudHsm::default()
        }
    }

    #[test]
    fn translates_to_pkcs11_with_a_user_password_pin() {
        let p = CloudHsmProfile::from_raw(raw()).expect("valid");
        let cfg = p.pkcs11();
        assert_eq!(cfg.library_path, PathBuf::from(DEFAULT_LIBRARY));
        assert_eq!(cfg.token, TokenChoice::First);
        assert_eq!(cfg.name, "cloudhsm");
        assert_eq!(p.login_pin(&Zeroizing::new("s3cret".into())).as_str(), "crypto_user:s3cret");
        assert_eq!(p.max_sessions, Some(8));
        assert_eq!(
            p.configure_command()[1..],
            [
                "--cluster-id",
                "cluster-1234abcd",
                "--region",
                "eu-west-1",
                "--hsm-ca-cert",
                "/etc/cloudhsm/customerCA.crt"
            ]
        );
    }

    #[test]
    fn missing_fields_and_inline_passwords_are_refused_by_name() {
        for (field, mutate) in [
            (
                "cloudhsm.cluster_id",
                (|r: &mut RawCloudHsm| r.cluster_id = None) as fn(&mut RawCloudHsm),
            ),
            ("cloudhsm.hsm_ca_file", |r| r.hsm_ca_file = None),
            ("cloudhsm.hsm_user", |r| r.hsm_user = Some("a:b".into())),
            ("cloudhsm.region", |r| r.region = Some(" ".into())),
            ("cloudhsm.hsm_password", |r| r.hsm_password = Some("hunter2".into())),
        ] {
            let mut r = raw();
            mutate(&mut r);
            let err = CloudHsmProfile::from_raw(r).expect_err(field).to_string();
            assert!(err.contains(field), "{err}");
            assert!(!err.contains("hunter2"), "{err}");
        }
    }
}
