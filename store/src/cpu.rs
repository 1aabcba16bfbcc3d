//! The store's share of a node's CPU: thread CPU time spent in commits and in making blocks,
//! counted in `strata_store_cpu_microseconds_total` (fjall's own flush and compaction threads,
//! named `fjall:*`, are visible per thread in `/proc`), so that a benchmark can tell the write
//! path's CPU per event from the store's; and the lower priority of that background work.

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

/// Nice value of the store's background threads (blocks; fjall's flushes and compactions): on a
/// busy node the scheduler runs appends, commits and reads first, and the background work takes
/// the rest, so its bursts do not show up as latency spikes of appends and subscriptions.
pub const BACKGROUND_NICE: i32 = 10;

/// Lowers the calling thread's priority to [`BACKGROUND_NICE`] (on Linux a nice value is per
/// thread); a failure leaves the priority as it was.
pub(crate) fn background_priority() {
    lower_priority(0);
}

/// Lowers thread `tid`'s priority (0: the calling thread) to [`BACKGROUND_NICE`], where the
/// platform allows it.
fn lower_priority(tid: libc::id_t) {
    // SAFETY: setpriority takes plain integers and touches no memory of ours.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, BACKGROUND_NICE) };
    if rc != 0 {
        tracing::debug!(
            tid,
            error = %std::io::Error::last_os_error(),
            "cannot lower a background thread's priority"
        );
    }
}

/// Lowers the priority of fjall's worker threads (named `fjall:*`, started when the database
/// opens) in this process to [`BACKGROUND_NICE`].
pub(crate) fn background_priority_of_fjall_workers() {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return;
    };
    for task in tasks.flatten() {
        let Ok(comm) = std::fs::read_to_string(task.path().join("comm")) else {
            continue;
        };
        if comm.starts_with("fjall:")
            && let Some(tid) = task.file_name().to_str().and_then(|t| t.parse().ok())
        {
            lower_priority(tid);
        }
    }
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

#[cfg(test)]
mod priority_tests {
    use super::*;

    /// The nice value of thread `tid` of this process (from `/proc`; after the command, which
    /// may hold spaces, nice is the 17th field), or `None` when it has exited meanwhile.
    fn nice_of(tid: &str) -> Option<i32> {
        let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).ok()?;
        let rest = stat.get(stat.rfind(')')? + 2..)?;
        rest.split(' ').nth(16)?.parse().ok()
    }

    #[test]
    fn background_threads_run_at_a_lower_priority() {
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let live = std::thread::spawn(move || {
            background_priority();
            // SAFETY: gettid takes no arguments and cannot fail.
            tx.send(unsafe { libc::gettid() }.to_string()).unwrap();
            done_rx.recv().unwrap();
        });
        let live_tid = rx.recv().unwrap();
        assert_eq!(nice_of(&live_tid).unwrap(), BACKGROUND_NICE);
        // SAFETY: gettid takes no arguments and cannot fail.
        let me = unsafe { libc::gettid() }.to_string();
        assert_eq!(
            nice_of(&me).unwrap(),
            0,
            "only the background thread is lowered"
        );
        done_tx.send(()).unwrap();
        live.join().unwrap();

        let dir = tempfile::tempdir().unwrap();
        let _store = crate::Store::open(dir.path(), crate::StoreConfig::default()).unwrap();
        // Other tests of this process open stores concurrently: a worker of theirs may be
        // caught between its start and its store's lowering pass, so look again for a while.
        let mut unlowered = Vec::new();
        for _ in 0..100 {
            unlowered.clear();
            let mut workers = 0;
            for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
                let name = task.file_name().into_string().unwrap();
                let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
                if comm.starts_with("fjall:") {
                    workers += 1;
                    if nice_of(&name).is_some_and(|n| n != BACKGROUND_NICE) {
                        unlowered.push(name);
                    }
                }
            }
            assert!(workers > 0, "fjall started no named workers");
            if unlowered.is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        assert!(
            unlowered.is_empty(),
            "fjall workers at nice 0: {unlowered:?}"
        );
    }
}
