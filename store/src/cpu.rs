//! The store's share of a node's CPU: thread CPU time spent in commits and in making blocks,
//! counted in `strata_store_cpu_microseconds_total` (fjall's own flush and compaction threads,
//! named `fjall:*`, are visible per thread in `/proc`), so that a benchmark can tell the write
//! path's CPU per event from the store's.

use std::time::Duration;

/// CPU time the calling thread has used so far (zero where the clock is unavailable).
fn thread_cpu() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a pointer to a live local.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(
        u64::try_from(now.tv_sec).unwrap_or(0),
        u32::try_from(now.tv_nsec).unwrap_or(0),
    )
}

/// Runs `work` on this thread and adds the CPU time it took to the store's CPU counter.
pub(crate) fn counted<T>(work: impl FnOnce() -> T) -> T {
    let started = thread_cpu();
    let out = work();
    let used = thread_cpu().saturating_sub(started);
    metrics::counter!("strata_store_cpu_microseconds_total")
        .increment(u64::try_from(used.as_micros()).unwrap_or(u64::MAX));
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn thread_cpu_grows_with_work_on_the_thread() {
        let before = super::thread_cpu();
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
        }
        assert!(super::thread_cpu() > before, "{x}");
    }
}
