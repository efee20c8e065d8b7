//! Socket activation (`sd_listen_fds(3)`): take the listening socket systemd passed.
//!
//! `harpocrates.socket` holds the socket while the daemon starts (and restarts), so
//! clients queue in its backlog instead of finding no socket. The daemon takes exactly one
//! descriptor, and only a listening Unix stream socket: anything else is a unit-file
//! mistake, refused at start with a sentence that says which.

use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::net::UnixListener;

/// The listening socket systemd passed to this process, if it passed one.
pub fn listener_from_env() -> Result<Option<UnixListener>, String> {
    let fds: Vec<RawFd> = sd_notify::listen_fds()
        .map_err(|e| format!("socket activation: LISTEN_FDS is unusable: {e}"))?
        .collect();
    match fds.as_slice() {
        [] => Ok(None),
        [fd] => {
            check_listener(*fd)?;
            // SAFETY: systemd passed this descriptor to this process (LISTEN_PID names
            // us) and nothing else in the daemon owns it; it is taken exactly once.
            let listener = unsafe { UnixListener::from_raw_fd(*fd) };
            listener
                .set_nonblocking(true)
                .map_err(|e| format!("socket activation: cannot use the socket: {e}"))?;
            Ok(Some(listener))
        }
        more => Err(format!(
            "socket activation: systemd passed {} sockets; harpocratesd takes exactly one \
             (one ListenStream= in harpocrates.socket)",
            more.len()
        )),
    }
}

fn sockopt(fd: RawFd, name: libc::c_int) -> Result<libc::c_int, String> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` and `len` are valid for writes of a c_int; the call only reads the
    // descriptor's options.
    let rc = unsafe {
        libc::getsockopt(fd, libc::SOL_SOCKET, name, (&raw mut value).cast(), &raw mut len)
    };
    if rc == 0 {
        Ok(value)
    } else {
        Err(format!(
            "socket activation: descriptor {fd} is not a socket ({})",
            std::io::Error::last_os_error()
        ))
    }
}

/// Accepts only a listening Unix-domain stream socket.
pub fn check_listener(fd: RawFd) -> Result<(), String> {
    let (domain, kind, listening) = (
        sockopt(fd, libc::SO_DOMAIN)?,
        sockopt(fd, libc::SO_TYPE)?,
        sockopt(fd, libc::SO_ACCEPTCONN)?,
    );
    if domain != libc::AF_UNIX {
        return Err(format!(
            "socket activation: the socket passed is not a Unix-domain socket (family {domain}); \
             harpocrates.socket needs ListenStream=/path/to.sock"
        ));
    }
    if kind != libc::SOCK_STREAM {
        return Err(format!(
            "socket activation: the socket passed is not a stream socket (type {kind}); \
             use ListenStream=, not ListenDatagram= or ListenSequentialPacket="
        ));
    }
    if listening == 0 {
        return Err(
            "socket activation: the socket passed is not listening (Accept=no is needed)".into()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixDatagram;

    use super::*;

    #[test]
    fn only_a_listening_unix_stream_socket_is_taken() {
        let dir = tempfile::tempdir().expect("tempdir");
        let listener = UnixListener::bind(dir.path().join("s")).expect("bind");
        check_listener(listener.as_raw_fd()).expect("a listening unix stream socket");

        let datagram = UnixDatagram::bind(dir.path().join("d")).expect("bind");
        let err = check_listener(datagram.as_raw_fd()).expect_err("datagram refused");
        assert!(err.contains("not a stream socket"), "{err}");

        let tcp = std::net::TcpListener::bind("127.0.0.1:0").expect("tcp");
        let err = check_listener(tcp.as_raw_fd()).expect_err("tcp refused");
        assert!(err.contains("not a Unix-domain socket"), "{err}");

        let file = std::fs::File::create(dir.path().join("f")).expect("file");
        let err = check_listener(file.as_raw_fd()).expect_err("a file refused");
        assert!(err.contains("not a socket"), "{err}");

        let (a, _b) = std::os::unix::net::UnixStream::pair().expect("pair");
        let err = check_listener(a.as_raw_fd()).expect_err("a connected stream refused");
        assert!(err.contains("not listening"), "{err}");
    }
}
