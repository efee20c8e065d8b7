//! User and group lookups: names in a policy become ids once, at load, so a decision never
//! touches NSS (which may be slow, or a network service).

use std::ffi::{CString, c_char, c_int};
use std::io;
use std::mem::MaybeUninit;

/// Largest buffer offered to `get*nam_r` before giving up: far above any real entry, but a
/// bound, so a broken NSS module that always answers `ERANGE` cannot exhaust memory.
const MAX_ENTRY_BUFFER: usize = 1 << 20;

/// The uid of the user called `name`, or `None` if there is no such user.
pub fn uid_of(name: &str) -> io::Result<Option<u32>> {
    lookup(
        name,
        |name, entry: *mut libc::passwd, buf, len, result| {
            // SAFETY: `lookup` passes a NUL-terminated name, room for one entry, a writable
            // buffer of `len` bytes and a place for the result, all live for the call.
            unsafe { libc::getpwnam_r(name, entry, buf, len, result) }
        },
        |pwd| pwd.pw_uid,
    )
}

/// The gid of the group called `name`, or `None` if there is no such group.
pub fn gid_of(name: &str) -> io::Result<Option<u32>> {
    lookup(
        name,
        |name, entry: *mut libc::group, buf, len, result| {
            // SAFETY: as in `uid_of`.
            unsafe { libc::getgrnam_r(name, entry, buf, len, result) }
        },
        |grp| grp.gr_gid,
    )
}

/// Runs a reentrant `get*nam_r` call, growing its buffer while it answers `ERANGE`, and
/// reads the id out of the entry while the buffer it points into is still alive.
fn lookup<T>(
    name: &str,
    call: impl Fn(*const c_char, *mut T, *mut c_char, usize, *mut *mut T) -> c_int,
    id: impl Fn(&T) -> u32,
) -> io::Result<Option<u32>> {
    // A name with a NUL byte cannot be in the user or group database.
    let Ok(name) = CString::new(name) else { return Ok(None) };
    let mut len = 1024;
    loop {
        let mut buf = vec![0u8; len];
        let mut entry = MaybeUninit::<T>::uninit();
        let mut result: *mut T = std::ptr::null_mut();
        let rc = call(name.as_ptr(), entry.as_mut_ptr(), buf.as_mut_ptr().cast(), len, &mut result);
        match rc {
            0 if result.is_null() => return Ok(None),
            // SAFETY: on success `result` points at `entry`, which the call filled in; its
            // strings point into `buf`, which outlives this read.
            0 => return Ok(Some(id(unsafe { &*result }))),
            libc::ERANGE if len < MAX_ENTRY_BUFFER => len *= 2,
            // POSIX lets "no such entry" be reported as one of these instead of a null result.
            libc::ENOENT | libc::ESRCH => return Ok(None),
            e => return Err(io::Error::from_raw_os_error(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_user_and_group_resolve_and_nonsense_does_not() {
        assert_eq!(uid_of("root").unwrap(), Some(0));
        assert_eq!(gid_of("root").unwrap(), Some(0));
        assert!(gid_of("daemon").unwrap().is_some());
        assert_eq!(uid_of("no-such-user-xyz").unwrap(), None);
        assert_eq!(gid_of("no-such-group-xyz").unwrap(), None);
        assert_eq!(uid_of("ro\0ot").unwrap(), None);
    }
}
