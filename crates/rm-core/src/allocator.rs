//! mimalloc as the process's global allocator (feature `mimalloc`, which the `plumb` binary and
//! the benches turn on; a library user keeps their own allocator unless they ask for it).
//!
//! burn frees and reallocates the same large activation and gradient buffers at every step. glibc
//! malloc serves those with `mmap` and hands them back to the OS on free, so every step faults
//! them back in as freshly zeroed pages (measured at 15–20% of a MiniLM training step).
//! [`keep_freed_memory`] tells mimalloc to keep freed pages for reuse instead.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (see its `mimalloc.h`).
const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;

unsafe extern "C" {
    fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
}

/// Freed memory stays with the process for reuse (the resident size stays at its peak), unless
/// `MIMALLOC_PURGE_DELAY` is set in the environment, which then wins. Call once at start-up.
pub fn keep_freed_memory() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: `mi_option_set` only stores an integer option; any value is valid for it.
        unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    }
}
