//! What the bench reads of the node's process: peak RSS, CPU time (and the store's share of it),
//! and whether it has gone idle.

use super::Strata;
use crate::Result;
use std::time::{Duration, Instant};

impl Strata {
    /// Resets the kernel's peak-RSS counter of the process (`/proc/PID/clear_refs`).
    pub fn reset_peak_rss(&self) {
        if let Some(pid) = self.pid() {
            let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
        }
    }

    /// Peak RSS since the last reset, in bytes (`VmHWM`).
    pub fn peak_rss(&self) -> u64 {
        let Some(pid) = self.pid() else { return 0 };
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmHWM:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|kb| kb.parse::<u64>().ok())
            })
            .map_or(0, |kb| kb * 1024)
    }

    /// CPU time (user + system) the process has used, in clock ticks.
    pub fn cpu_ticks(&self) -> Option<u64> {
        let pid = self.pid()?;
        stat_ticks(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
    }

    /// CPU seconds the process has used so far: all of it, and the store's share — its commits
    /// and blocks (`strata_store_cpu_microseconds_total`) plus fjall's flush and compaction
    /// threads (`fjall:*` in `/proc/PID/task`). Ticks are the kernel's 100 per second.
    pub async fn cpu_split(&self) -> Result<(f64, f64)> {
        let pid = self.pid().ok_or("strata is not running")?;
        let total = self.cpu_ticks().ok_or("no /proc/PID/stat")? as f64 / 100.0;
        let mut fjall_ticks = 0u64;
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).map_err(|e| e.to_string())?;
        for task in tasks.flatten() {
            let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
                continue;
            };
            // The thread's name is between the first '(' and the last ')'.
            if stat
                .split_once('(')
                .is_some_and(|(_, name)| name.starts_with("fjall"))
            {
                fjall_ticks += stat_ticks(&stat).unwrap_or(0);
            }
        }
        let metrics = self
            .http
            .get(self.url("/metrics"))
            .send()
            .await
            .map_err(|e| e.to_string())?
            .text()
            .await
            .map_err(|e| e.to_string())?;
        let commits_us: f64 = metrics
            .lines()
            .filter(|l| l.starts_with("strata_store_cpu_microseconds_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        Ok((total, fjall_ticks as f64 / 100.0 + commits_us / 1e6))
    }

    /// Waits until the process uses under 5% of a core over a second (background compaction after
    /// a bulk load has settled), for at most `limit`; returns how long it waited.
    pub async fn wait_idle(&self, limit: Duration) -> Duration {
        let started = Instant::now();
        while started.elapsed() < limit {
            let Some(before) = self.cpu_ticks() else {
                break;
            };
            tokio::time::sleep(Duration::from_secs(1)).await;
            let Some(after) = self.cpu_ticks() else { break };
            if after.saturating_sub(before) <= 5 {
                break;
            }
        }
        started.elapsed()
    }
}

/// User + system CPU time in a `/proc/…/stat` line, in clock ticks. Fields after the command name
/// (which may hold spaces) start after the last ')'.
fn stat_ticks(stat: &str) -> Option<u64> {
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}
