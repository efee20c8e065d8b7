//! Who is on the other end of a connection, read once from the kernel (SO_PEERCRED).

use tokio::net::UnixStream;

/// The credentials of a connected process, as the kernel reports them at connect time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// Effective user id.
    pub uid: u32,
    /// Effective group id.
    pub gid: u32,
    /// Process id, when the kernel knows it.
    pub pid: Option<i32>,
}

impl Peer {
    /// Reads the peer's credentials from a connected socket.
    pub fn of(stream: &UnixStream) -> std::io::Result<Self> {
        let cred = stream.peer_cred()?;
        Ok(Self { uid: cred.uid(), gid: cred.gid(), pid: cred.pid() })
    }
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.pid {
            Some(pid) => write!(f, "uid={} gid={} pid={pid}", self.uid, self.gid),
            None => write!(f, "uid={} gid={}", self.uid, self.gid),
        }
    }
}
