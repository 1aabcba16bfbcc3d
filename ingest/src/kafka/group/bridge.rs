//! Warm restart. A restarted store node gets its partitions back from the group only after a
//! join and a sync, which some brokers make slow (Tansu holds every join for half the session
//! timeout, and a static member's join and sync for at least 3 s). Until the group's first
//! assignment arrives, a plain consumer (no group membership, no commits) catches up the
//! partitions the node held when it stopped, so that the node's shards — and everything a single
//! node answers — are current within a second or so of the restart.
//!
//! Safety: shard commits are ordered by offset and skip what is stored, and the bridge is stopped
//! (and joined) before the group's assignment reads the shards' next offsets, so the group's
//! consumer always starts where the bridge ended. Partitions served to cluster queries are still
//! only those the group assigned (see `Shared::ready`). Anything the bridge does not handle
//! simply — a value that is not JSON, a dead letter, a failed commit — ends the bridge for that
//! partition and is left to the group.

use super::*;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The file that keeps the partitions a node holds, one `STREAM PARTITION` per line.
pub(super) fn held_file(dir: &Path) -> PathBuf {
    dir.join("kafka-held")
}

/// Writes the held partitions (best effort: without it a restart only waits for the group).
pub(super) fn save_held(path: &Path, held: &BTreeSet<(StreamName, u32)>) {
    let text: String = held.iter().map(|(s, p)| format!("{s} {p}\n")).collect();
    let tmp = path.with_extension("tmp");
    if let Err(e) = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, path)) {
        tracing::debug!(error = %e, "cannot note the held partitions");
    }
}

/// The partitions noted in `path` (none when it is missing or unreadable).
pub(super) fn load_held(path: &Path) -> Vec<(StreamName, u32)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let (s, p) = line.split_once(' ')?;
            Some((StreamName::new(s).ok()?, p.parse().ok()?))
        })
        .collect()
}

/// A running warm-restart consumer.
pub(super) struct Bridge {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Bridge {
    /// Starts catching up `held` into `sink`, for at most `limit`.
    pub(super) fn start(
        config: &KafkaConfig,
        sink: Arc<dyn ShardSink>,
        held: Vec<(StreamName, u32)>,
        max_batch: usize,
        limit: Duration,
    ) -> Option<Self> {
        if held.is_empty() {
            return None;
        }
        let consumer: BaseConsumer = match config
            .consumer_config(&config.group_id)
            // Never jump over offsets the log's retention deleted: the group's consumer decides
            // what to do about those (`retention_gap`).
            .set("auto.offset.reset", "error")
            .create()
        {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "no warm-restart consumer");
                return None;
            }
        };
        let mut tpl = TopicPartitionList::new();
        for (stream, p) in &held {
            let next = sink.stored_next_offset(stream, *p).unwrap_or(0);
            let topic = config.topic(stream.as_str());
            if tpl
                .add_partition_offset(&topic, *p as i32, Offset::Offset(next as i64))
                .is_err()
            {
                return None;
            }
        }
        if let Err(e) = consumer.assign(&tpl) {
            tracing::debug!(error = %e, "no warm-restart consumer");
            return None;
        }
        tracing::info!(
            partitions = held.len(),
            "catching up the partitions held before the restart while the group assigns them"
        );
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let config = config.clone();
        let thread = std::thread::Builder::new()
            .name("strata-warm-restart".into())
            .spawn(move || run(&consumer, &config, sink.as_ref(), max_batch, &flag, limit))
            .ok()?;
        Some(Self {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops and waits for the thread: after this no shard commit of the bridge is in flight.
    pub(super) fn stop(self) {
        drop(self);
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Polls and commits each partition's share to its shard until stopped, until `limit`, or until
/// every partition was left to the group.
fn run(
    consumer: &BaseConsumer,
    config: &KafkaConfig,
    sink: &dyn ShardSink,
    max_batch: usize,
    stop: &AtomicBool,
    limit: Duration,
) {
    let deadline = Instant::now() + limit;
    let mut left: HashSet<(String, i32)> = HashSet::new();
    let mut stored = 0u64;
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        let mut batches: HashMap<(String, i32), Batch> = HashMap::new();
        let now = chrono::Utc::now().timestamp_millis();
        let mut wait = Duration::from_millis(100);
        for _ in 0..max_batch {
            let m = match consumer.poll(wait) {
                None => break,
                Some(Ok(m)) => m,
                Some(Err(e))
                    if e.rdkafka_error_code() == Some(RDKafkaErrorCode::AutoOffsetReset) =>
                {
                    tracing::info!(error = %e, "warm restart ends: the log no longer holds a partition's next offset");
                    return;
                }
                Some(Err(_)) => break,
            };
            wait = Duration::ZERO;
            let key = (m.topic().to_owned(), m.partition());
            if !left.contains(&key) {
                batches.entry(key).or_default().add(&m, now, config);
            }
        }
        for ((topic, partition), batch) in batches {
            let (Some(stream), Ok(p)) = (config.stream_of(&topic), u32::try_from(partition)) else {
                continue;
            };
            // Dead letters and values stored as strings are the group's to handle and count.
            if !batch.plain() {
                left.insert((topic, partition));
                continue;
            }
            let through = batch.last.map_or(0, |o| o + 1);
            let n = batch.records.len() as u64;
            match sink.commit_through(&stream, p, batch.records, through) {
                Ok(_) => {
                    stored += n;
                    metrics::counter!("strata_store_warm_restart_events_total", "stream" => stream.to_string())
                        .increment(n);
                }
                Err(e) => {
                    tracing::debug!(%stream, partition = p, error = %e, "warm restart leaves the partition to the group");
                    left.insert((topic, partition));
                }
            }
        }
    }
    tracing::info!(stored, "warm restart catch-up ended");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_partitions_survive_a_restart_and_bad_lines_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = held_file(dir.path());
        assert!(load_held(&path).is_empty());
        let held: BTreeSet<(StreamName, u32)> = [
            (StreamName::new("orders").unwrap(), 0),
            (StreamName::new("orders").unwrap(), 3),
            (StreamName::new("clicks").unwrap(), 1),
        ]
        .into_iter()
        .collect();
        save_held(&path, &held);
        let loaded: BTreeSet<_> = load_held(&path).into_iter().collect();
        assert_eq!(loaded, held);
        std::fs::write(
            &path,
            "orders 1\nnot a line\nBAD-NAME 2\norders x\n\norders 2\n",
        )
        .unwrap();
        let loaded = load_held(&path);
        assert_eq!(
            loaded,
            vec![
                (StreamName::new("orders").unwrap(), 1),
                (StreamName::new("orders").unwrap(), 2)
            ]
        );
    }
}
