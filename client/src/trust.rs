//! Who may answer on the daemon's socket.
//!
//! Whoever owns the socket path receives everything the client sends, plaintexts
//! included. So after connecting, and before sending a single byte (the `Hello` included),
//! the client reads the credentials of the process that answers (`SO_PEERCRED`) and goes
//! on only when its uid is one of:
//!
//! * `0` (root; also what systemd socket activation reports);
//! * the caller's own effective uid (a `harpocratesd --dev` of the same user);
//! * a uid the caller configured: [`ClientOptions::trusted_daemon_uid`] or the
//!   environment variable [`DAEMON_UID_ENV`] (`HARPOCRATES_DAEMON_UID`);
//! * when the path is the system socket ([`paths::SYSTEM_SOCKET`]), the owner of its
//!   directory (`/run/harpocrates`), provided that directory is a real directory (not a
//!   symlink) that neither its group nor others can write, in a chain of directories that
//!   only root or that owner can write: then only that owner (or root) can have put a
//!   socket there.
//!
//! Anything else fails with [`Error::PermissionDenied`], naming the socket, the uid that
//! answered and how to trust it.
//!
//! [`ClientOptions::trusted_daemon_uid`]: crate::ClientOptions::trusted_daemon_uid
//! [`Error::PermissionDenied`]: crate::Error::PermissionDenied

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use harpocrates_protocol::paths;

/// Environment variable naming one more daemon uid the client trusts (a decimal uid),
/// for a daemon that runs as its own system user without owning `/run/harpocrates`, or on
/// another path.
pub const DAEMON_UID_ENV: &str = "HARPOCRATES_DAEMON_UID";

/// Why the process that answered is trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TrustReason {
    /// It runs as root.
    Root,
    /// It runs as the caller's own effective uid.
    SameUser,
    /// Its uid was configured ([`crate::ClientOptions::trusted_daemon_uid`] or
    /// [`DAEMON_UID_ENV`]).
    Configured,
    /// It runs as the owner of the system socket's directory.
    SystemSocketOwner,
}

/// Everything the trust decision depends on, gathered beforehand so that the decision
/// itself ([`TrustPolicy::decide`]) is a pure function.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustPolicy {
    /// The caller's effective uid.
    pub own_uid: u32,
    /// uids the caller configured.
    pub configured_uids: Vec<u32>,
    /// The owner of the system socket's directory, when the path being connected is the
    /// system socket and that directory passed its ownership and mode checks.
    pub system_dir_owner: Option<u32>,
}

impl TrustPolicy {
    /// Whether a daemon answering as `peer_uid` is trusted, and why.
    pub fn decide(&self, peer_uid: u32) -> Option<TrustReason> {
        if peer_uid == 0 {
            Some(TrustReason::Root)
        } else if peer_uid == self.own_uid {
            Some(TrustReason::SameUser)
        } else if self.configured_uids.contains(&peer_uid) {
            Some(TrustReason::Configured)
        } else if self.system_dir_owner == Some(peer_uid) {
            Some(TrustReason::SystemSocketOwner)
        } else {
            None
        }
    }
}

/// The policy for connecting to `path`, with notes on what could not be used (a malformed
/// environment variable, a system socket directory that failed its checks) for the
/// message of a refusal.
pub(crate) fn gather(path: &Path, configured: Option<u32>) -> (TrustPolicy, Vec<String>) {
    let mut notes = Vec::new();
    let mut configured_uids: Vec<u32> = configured.into_iter().collect();
    if let Some(raw) = std::env::var_os(DAEMON_UID_ENV).filter(|v| !v.is_empty()) {
        match raw.to_str().and_then(|s| s.trim().parse::<u32>().ok()) {
            Some(uid) => configured_uids.push(uid),
            None => notes.push(format!(
                "${DAEMON_UID_ENV}={} was ignored: it is not a numeric uid",
                raw.to_string_lossy()
            )),
        }
    }
    let system_dir_owner = if path == Path::new(paths::SYSTEM_SOCKET) {
        match trusted_dir_owner(path.parent().unwrap_or(Path::new("/"))) {
            Ok(owner) => Some(owner),
            Err(why) => {
                notes.push(why);
                None
            }
        }
    } else {
        None
    };
    (TrustPolicy { own_uid: effective_uid(), configured_uids, system_dir_owner }, notes)
}

/// The owner of `dir`, when only that owner (or root) can create files in it: `dir` is a
/// directory itself (not followed through a symlink) that its group and others cannot
/// write, and each directory above it is writable only by root or that same owner.
pub(crate) fn trusted_dir_owner(dir: &Path) -> Result<u32, String> {
    let meta = std::fs::symlink_metadata(dir)
        .map_err(|e| format!("{} cannot be inspected: {e}", dir.display()))?;
    if !meta.file_type().is_dir() {
        return Err(format!("{} is not a directory (a symlink is not followed)", dir.display()));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(format!(
            "{} is writable by its group or by others (mode {:o}), so its owner proves nothing",
            dir.display(),
            meta.mode() & 0o7777
        ));
    }
    let owner = meta.uid();
    for above in dir.ancestors().skip(1) {
        let m = std::fs::metadata(above)
            .map_err(|e| format!("{} cannot be inspected: {e}", above.display()))?;
        let by_others = m.mode() & 0o022 != 0 && m.mode() & 0o1000 == 0;
        if (m.uid() != 0 && m.uid() != owner) || by_others {
            return Err(format!(
                "{} (above {}) is writable by others than root and uid {owner}",
                above.display(),
                dir.display()
            ));
        }
    }
    Ok(owner)
}

/// The refusal's message: the socket, the uid that answered, whom the client trusts and
/// how to trust that uid.
pub(crate) fn refusal(
    path: &Path,
    peer_uid: u32,
    policy: &TrustPolicy,
    notes: &[String],
) -> String {
    let mut trusted = vec!["root".to_owned(), format!("uid {} (this user)", policy.own_uid)];
    trusted.extend(policy.configured_uids.iter().map(|u| format!("uid {u} (configured)")));
    if let Some(owner) = policy.system_dir_owner {
        trusted.push(format!("uid {owner} (owner of the system socket's directory)"));
    }
    let mut msg = format!(
        "the process answering on {} runs as uid {peer_uid}, which this client does not trust \
         (it trusts {}), so nothing was sent to it; if uid {peer_uid} runs your harpocratesd, \
         trust it with {DAEMON_UID_ENV}={peer_uid} in the environment (or \
         ClientOptions::trusted_daemon_uid = Some({peer_uid}) in code)",
        path.display(),
        trusted.join(", ")
    );
    for note in notes {
        msg.push_str("; ");
        msg.push_str(note);
    }
    msg
}

/// This process's effective uid.
pub(crate) fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions, cannot fail and touches no memory of ours.
    unsafe { libc::geteuid() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(own: u32, configured: &[u32], dir_owner: Option<u32>) -> TrustPolicy {
        TrustPolicy {
            own_uid: own,
            configured_uids: configured.to_vec(),
            system_dir_owner: dir_owner,
        }
    }

    #[test]
    fn root_and_the_callers_own_uid_are_always_trusted() {
        let p = policy(1000, &[], None);
        assert_eq!(p.decide(0), Some(TrustReason::Root));
        assert_eq!(p.decide(1000), Some(TrustReason::SameUser));
        // Root as the caller trusts root, and nobody else by default.
        let p = policy(0, &[], None);
        assert_eq!(p.decide(0), Some(TrustReason::Root));
        assert_eq!(p.decide(1000), None);
    }

    #[test]
    fn another_uid_is_refused_unless_configured_or_owning_the_system_socket_dir() {
        assert_eq!(policy(1000, &[], None).decide(999), None);
        assert_eq!(policy(1000, &[999], None).decide(999), Some(TrustReason::Configured));
        assert_eq!(policy(1000, &[5, 999], None).decide(999), Some(TrustReason::Configured));
        assert_eq!(policy(1000, &[998], None).decide(999), None);
        assert_eq!(policy(1000, &[], Some(999)).decide(999), Some(TrustReason::SystemSocketOwner));
        assert_eq!(policy(1000, &[], Some(998)).decide(999), None);
        assert_eq!(policy(1000, &[997], Some(998)).decide(999), None);
    }

    #[test]
    fn the_refusal_names_the_socket_the_uid_and_how_to_trust_it() {
        let msg = refusal(
            Path::new("/tmp/x/h.sock"),
            4242,
            &policy(1000, &[7], Some(8)),
            &["a note".to_owned()],
        );
        for part in [
            "/tmp/x/h.sock",
            "uid 4242",
            "HARPOCRATES_DAEMON_UID=4242",
            "trusted_daemon_uid",
            "uid 1000 (this user)",
            "uid 7 (configured)",
            "uid 8 (owner",
            "nothing was sent",
            "a note",
        ] {
            assert!(msg.contains(part), "{part:?} missing from {msg}");
        }
    }

    #[test]
    fn a_directory_writable_by_others_or_a_symlink_proves_nothing() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("run");
        std::fs::create_dir(&dir).expect("mkdir");
        // tempdir's parent (/tmp) is world-writable but sticky; the chain above is fine
        // only where root or we own it.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let owner = trusted_dir_owner(&dir);
        assert_eq!(owner, Ok(effective_uid()), "{owner:?}");

        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o775)).expect("chmod");
        let err = trusted_dir_owner(&dir).expect_err("group-writable");
        assert!(err.contains("writable by its group"), "{err}");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o757)).expect("chmod");
        assert!(trusted_dir_owner(&dir).is_err());

        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&dir, &link).expect("symlink");
        let err = trusted_dir_owner(&link).expect_err("symlink");
        assert!(err.contains("not a directory"), "{err}");
    }
}
