//! Who is on the other end of a connection, read once from the kernel at accept.
//!
//! The uid, gid and pid come from `SO_PEERCRED` and the supplementary groups from
//! `SO_PEERGROUPS`: both are the credentials the peer had when it connected, kept by
//! the kernel, so a process cannot change them afterwards. The executable is read from
//! `/proc/<pid>/exe` and is informative only (for audit records): a pid can be reused,
//! and another user's `/proc/<pid>/exe` is unreadable without privileges.

use std::os::fd::AsRawFd;

use tokio::net::UnixStream;

/// Most supplementary groups read (the kernel's `NGROUPS_MAX` is 65536; policies name a
/// few, so a caller in more groups than this is judged on the first ones).
const MAX_GROUPS: usize = 4096;

/// The credentials of a connected process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Effective user id.
    pub uid: u32,
    /// Effective group id.
    pub gid: u32,
    /// Process id, when the kernel knows it.
    pub pid: Option<i32>,
    /// Supplementary groups, when the kernel reports them.
    pub groups: Vec<u32>,
    /// The executable, when `/proc/<pid>/exe` is readable.
    pub exe: Option<String>,
}

impl Peer {
    /// Reads the peer's credentials from a connected socket.
    pub fn of(stream: &UnixStream) -> std::io::Result<Self> {
        let cred = stream.peer_cred()?;
        let pid = cred.pid();
        Ok(Self {
            uid: cred.uid(),
            gid: cred.gid(),
            pid,
            groups: peer_groups(stream.as_raw_fd()).unwrap_or_default(),
            exe: pid.and_then(executable),
        })
    }

    /// A peer about whom nothing could be read: no rights beyond `public`.
    pub fn unknown() -> Self {
        Self { uid: u32::MAX, gid: u32::MAX, pid: None, groups: Vec::new(), exe: None }
    }
}

/// The peer's supplementary groups (`SO_PEERGROUPS`, Linux 4.13+).
fn peer_groups(fd: i32) -> std::io::Result<Vec<u32>> {
    let mut groups = vec![0 as libc::gid_t; 64];
    loop {
        let mut len = libc::socklen_t::try_from(groups.len() * size_of::<libc::gid_t>())
            .map_err(|_| std::io::Error::other("too many groups"))?;
        // SAFETY: `groups` is a live buffer of `len` bytes; the kernel writes at most `len`
        // bytes and sets `len` to what it wrote (or needs, with ERANGE).
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let needed = len as usize / size_of::<libc::gid_t>();
        if rc == 0 {
            groups.truncate(needed);
            return Ok(groups);
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ERANGE) || needed <= groups.len() {
            return Err(e);
        }
        groups.resize(needed.min(MAX_GROUPS), 0);
        if needed > MAX_GROUPS {
            // Unreadable in full; judge on none rather than on a truncated list.
            return Err(std::io::Error::other("too many groups"));
        }
    }
}

fn executable(pid: i32) -> Option<String> {
    std::fs::read_link(format!("/proc/{pid}/exe")).ok().map(|p| p.to_string_lossy().into_owned())
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "uid={} gid={}", self.uid, self.gid)?;
        if let Some(pid) = self.pid {
            write!(f, " pid={pid}")?;
        }
        if let Some(exe) = &self.exe {
            write!(f, " exe={}", exe.escape_debug())?;
        }
        Ok(())
    }
}

/// The effective uid of this process.
pub fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_our_own_credentials_groups_and_executable() {
        let (a, _b) = UnixStream::pair().expect("socketpair");
        let peer = Peer::of(&a).expect("credentials");
        // SAFETY: no preconditions.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        assert_eq!((peer.uid, peer.gid), (uid, gid));
        assert_eq!(peer.pid, Some(std::process::id() as i32));
        let exe = std::env::current_exe().expect("exe");
        assert_eq!(peer.exe.as_deref(), Some(exe.to_string_lossy().as_ref()));
        // SAFETY: a null buffer with size 0 asks only for the count.
        let n = unsafe { libc::getgroups(0, std::ptr::null_mut()) };
        assert_eq!(peer.groups.len(), usize::try_from(n).expect("count"), "{peer:?}");
    }
}
