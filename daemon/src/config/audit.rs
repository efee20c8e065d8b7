//! `[audit]` and `[[policy]]`: checked here, turned into the audit actor's settings and
//! the access policy.

use std::path::Path;

use super::raw::RawAudit;
use super::{ConfigError, bounded, invalid};
use crate::actors::audit::{AuditSettings, Backlog, JournalMode};
use crate::policy::Policy;
use crate::policy::raw::RawRule;

/// Checks `[audit]` and fills in defaults.
pub fn audit_settings(raw: Option<RawAudit>) -> Result<AuditSettings, ConfigError> {
    let raw = raw.unwrap_or_default();
    let defaults = AuditSettings::default();
    let journal = match raw.journal.as_deref() {
        None => defaults.journal,
        Some("changes") => JournalMode::Changes,
        Some("all") => JournalMode::All,
        Some("off") => JournalMode::Off,
        Some(other) => {
            return Err(invalid(
                "audit.journal",
                format!("{other:?} is not one of \"changes\", \"all\", \"off\""),
            ));
        }
    };
    let backlog = match raw.on_backlog.as_deref() {
        None | Some("wait") => Backlog::Wait,
        Some("count") => Backlog::Count,
        Some(other) => {
            return Err(invalid(
                "audit.on_backlog",
                format!("{other:?} is not one of \"wait\", \"count\""),
            ));
        }
    };
    if let Some(file) = &raw.file
        && (file.is_relative() || file.file_name().is_none())
    {
        return Err(invalid(
            "audit.file",
            format!("{} is not an absolute file path", file.display()),
        ));
    }
    Ok(AuditSettings {
        file: raw.file,
        max_file_bytes: bounded(
            "audit.max_file_bytes",
            raw.max_file_bytes,
            defaults.max_file_bytes,
            64 << 10,
            1 << 40,
        )?,
        journal,
        fail_closed: raw.fail_closed.unwrap_or(defaults.fail_closed),
        backlog,
        queue: bounded("audit.queue", raw.queue, defaults.queue as u64, 16, 1 << 22)? as usize,
    })
}

/// The uids that may do everything: root, the daemon's own, and with `--dev` the user
/// who started it (also when through sudo).
pub fn privileged_uids(dev: bool) -> Vec<u32> {
    // SAFETY: geteuid and getuid have no preconditions and cannot fail.
    let (euid, uid) = unsafe { (libc::geteuid(), libc::getuid()) };
    let mut uids = vec![0, euid];
    if dev {
        uids.push(uid);
        if let Some(sudo) = std::env::var("SUDO_UID").ok().and_then(|u| u.parse().ok()) {
            uids.push(sudo);
        }
    }
    uids.sort_unstable();
    uids.dedup();
    uids
}

/// Compiles `[[policy]]` from `source`; errors name the file, the rule and the reason.
pub fn policy(rules: &[RawRule], source: &Path, dev: bool) -> Result<Policy, ConfigError> {
    Policy::new(rules, source, &privileged_uids(dev))
        .map_err(|e| ConfigError::Policy(e.to_string()))
}
