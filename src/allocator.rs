//! The allocator's settings, for the binaries that make mimalloc their global allocator (`strata`,
//! and `strata-bench`, whose in-process scenarios measure strata's code as the server runs it).

/// mimalloc's `purge_delay` option (the C enum's value; libmimalloc-sys 0.1.49 does not name it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// How long mimalloc keeps memory that was freed before handing it back to the OS (its own default
/// since v3, stated here so that an upgrade does not change it).
///
/// Memory kept is reused by the next allocations without a page fault. Handing it back after
/// 10 ms instead cost a query 20k page faults per million rows answered and about a quarter of
/// its CPU (BENCHMARKS.md 2a). What the delay would otherwise cost — a query that the memory limit stops
/// leaving every buffer it had outgrown resident for a second, so that a few such queries in a row
/// took the process to 4–5× `limits.query_memory_bytes` — is handed back when the query ends
/// ([`release_freed`]).
const PURGE_DELAY_MS: std::os::raw::c_long = 1000;

/// Sets the allocator's options. Call it first thing in `main`; it has no effect on another
/// allocator.
pub fn tune() {
    // SAFETY: sets one integer option of the allocator; no pointers are involved.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS) };
}

/// Hands memory that was freed back to the OS now rather than after [`PURGE_DELAY_MS`]: for a
/// query that failed (stopped by a limit, most often, with the buffers it had outgrown freed).
/// Tens of microseconds when little is free (too many to spend on every query); no effect on
/// another allocator.
pub fn release_freed() {
    // SAFETY: asks the allocator to purge what it holds free; no pointers are involved.
    unsafe { libmimalloc_sys::mi_collect(true) };
}
