//! The daemon's side of systemd's service protocols: the listening socket systemd may
//! pass ([`activation`]) and the notification socket it listens on ([`notify`]).
//! Everything here also works without systemd: no `LISTEN_FDS` means bind the socket
//! ourselves, no `NOTIFY_SOCKET` means say nothing.

pub mod activation;
pub mod notify;
