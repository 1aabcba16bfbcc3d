//! The allocator's settings, for the binaries that make mimalloc their global allocator (`strata`,
//! and `strata-bench`, whose in-process scenarios measure strata's code as the server runs it).

/// mimalloc's `purge_delay` option (the C enum's value; libmimalloc-sys 0.1.49 does not name it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Freed memory goes back to the OS after 10 ms instead of mimalloc's default second: a query
/// that the memory limit stops (a hash table doubling, say) otherwise leaves every superseded
/// buffer resident meanwhile, and the process's RSS went to 4–5× `limits.query_memory_bytes`.
/// Call it first thing in `main`; it has no effect on another allocator.
pub fn tune() {
    // SAFETY: sets one integer option of the allocator; no pointers are involved.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 10) };
}
