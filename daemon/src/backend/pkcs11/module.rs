//! How many backends of this process use each PKCS#11 module.
//!
//! A module is initialised once per process: a second backend on the same library (a hot
//! swap from one token to another on the same HSM) shares the first one's `C_Initialize`.
//! So a backend that goes away may call `C_Finalize` only when no other backend of this
//! process still uses the module, or it would pull the module out from under the other.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

static USERS: Mutex<Option<HashMap<PathBuf, usize>>> = Mutex::new(None);

fn users() -> MutexGuard<'static, Option<HashMap<PathBuf, usize>>> {
    USERS.lock().unwrap_or_else(|p| p.into_inner())
}

/// One backend's use of a module, counted while it lives.
pub(crate) struct ModuleUse {
    path: PathBuf,
}

impl ModuleUse {
    /// Counts a new user of the module at `library` (two spellings of one file count as
    /// one module).
    pub(crate) fn register(library: &Path) -> Self {
        let path = std::fs::canonicalize(library).unwrap_or_else(|_| library.to_owned());
        *users().get_or_insert_with(HashMap::new).entry(path.clone()).or_insert(0) += 1;
        Self { path }
    }

    /// Other backends of this process that use the same module.
    pub(crate) fn others(&self) -> usize {
        users().as_ref().and_then(|m| m.get(&self.path)).map_or(0, |n| n.saturating_sub(1))
    }
}

impl Drop for ModuleUse {
    fn drop(&mut self) {
        let mut guard = users();
        if let Some(map) = guard.as_mut()
            && let Some(n) = map.get_mut(&self.path)
        {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.path);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_module_is_shared_until_its_last_user_goes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let lib = dir.path().join("libmodule.so");
        std::fs::write(&lib, b"").expect("write");
        let first = ModuleUse::register(&lib);
        assert_eq!(first.others(), 0);
        // Another spelling of the same file is the same module.
        let second = ModuleUse::register(&dir.path().join(".").join("libmodule.so"));
        assert_eq!((first.others(), second.others()), (1, 1));
        drop(second);
        assert_eq!(first.others(), 0, "the last user may finalise");
    }
}
