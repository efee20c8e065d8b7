//! One [`EnvelopeKey`] in memory of its own: page-aligned, whole pages, `mlock`ed so it is
//! never written to swap, kept out of core dumps where the OS allows, and wiped before it
//! is unlocked and freed.

use std::alloc::Layout;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};

use harpocrates_protocol::envelope::EnvelopeKey;
use zeroize::Zeroize;

/// Whether the "cannot mlock" warning was given (once per process).
static WARNED: AtomicBool = AtomicBool::new(false);

/// An [`EnvelopeKey`] alone in page-aligned, page-sized, locked (where possible) memory.
pub(crate) struct LockedKey {
    ptr: NonNull<EnvelopeKey>,
    layout: Layout,
    locked: bool,
}

// SAFETY: a LockedKey owns its EnvelopeKey exclusively, like a Box, and EnvelopeKey is
// Send and Sync (checked below); the raw pointer is only an allocation handle.
unsafe impl Send for LockedKey {}
// SAFETY: as above; shared access only ever hands out `&EnvelopeKey`.
unsafe impl Sync for LockedKey {}

const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<EnvelopeKey>();
};

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(n).ok().filter(|n| n.is_power_of_two()).unwrap_or(4096)
}

impl LockedKey {
    /// Moves `key` into memory of its own and locks that memory. If locking fails (the
    /// RLIMIT_MEMLOCK budget is spent), the key is kept unlocked, a warning is logged once
    /// per process, and [`is_locked`](Self::is_locked) says so.
    pub(crate) fn new(key: EnvelopeKey) -> Self {
        let page = page_size();
        let size = std::mem::size_of::<EnvelopeKey>().div_ceil(page).max(1) * page;
        let layout = Layout::from_size_align(size, page).expect("a page-aligned layout");
        // SAFETY: the layout has a non-zero size.
        let raw = unsafe { std::alloc::alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(raw.cast::<EnvelopeKey>()) else {
            std::alloc::handle_alloc_error(layout)
        };
        // SAFETY: `raw` is `size` bytes we own; mlock and madvise only change how the OS
        // treats those pages, and read or write none of them.
        let locked = unsafe {
            #[cfg(target_os = "linux")]
            libc::madvise(raw.cast(), size, libc::MADV_DONTDUMP);
            libc::mlock(raw.cast(), size) == 0
        };
        if !locked && !WARNED.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                error = %std::io::Error::last_os_error(),
                "cannot mlock the local envelope keys (RLIMIT_MEMLOCK?); they stay in \
                 unlocked memory and may be swapped"
            );
        }
        // SAFETY: the allocation is large enough and aligned for an EnvelopeKey (a page is
        // aligned for any Rust type), and holds nothing to drop.
        unsafe { ptr.as_ptr().write(key) };
        Self { ptr, layout, locked }
    }

    /// Whether the key's memory is locked against swapping.
    pub(crate) fn is_locked(&self) -> bool {
        self.locked
    }
}

impl std::ops::Deref for LockedKey {
    type Target = EnvelopeKey;

    fn deref(&self) -> &EnvelopeKey {
        // SAFETY: `ptr` holds an initialised EnvelopeKey until drop.
        unsafe { self.ptr.as_ref() }
    }
}

impl Drop for LockedKey {
    fn drop(&mut self) {
        let raw = self.ptr.as_ptr().cast::<u8>();
        let size = self.layout.size();
        // SAFETY: the key is initialised and dropped exactly once (EnvelopeKey wipes its
        // key material when dropped); then every byte of the allocation is wiped, the pages
        // unlocked and the allocation freed with the layout it was made with.
        unsafe {
            std::ptr::drop_in_place(self.ptr.as_ptr());
            std::slice::from_raw_parts_mut(raw, size).zeroize();
            if self.locked {
                libc::munlock(raw.cast(), size);
            }
            std::alloc::dealloc(raw, self.layout);
        }
    }
}

impl std::fmt::Debug for LockedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockedKey")
            .field("kek", (**self).kek())
            .field("locked", &self.locked)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use harpocrates_protocol::KekId;

    use super::*;

    #[test]
    fn the_key_works_from_its_page_and_debug_shows_no_key_material() {
        let kek = KekId { name: "orders".into(), version: 3 };
        let key = LockedKey::new(EnvelopeKey::new(kek.clone(), &[0x42; 32]).expect("key"));
        let addr = (&*key as *const EnvelopeKey) as usize;
        assert_eq!(addr % page_size(), 0, "page-aligned");
        let ct = key.seal(b"ctx", b"hello", b"").expect("seal");
        assert_eq!(key.open(&ct, b"ctx", b"").expect("open").as_slice(), b"hello");
        let shown = format!("{key:?}");
        assert!(shown.contains("orders") && !shown.contains("66"), "{shown}");
        // Whether mlock worked depends on RLIMIT_MEMLOCK; either way the answer is stable.
        assert_eq!(key.is_locked(), key.is_locked());
        drop(key);
    }
}
