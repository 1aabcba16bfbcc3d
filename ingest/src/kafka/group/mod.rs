//! Store nodes as a Kafka consumer group: one thread consumes every stream topic assigned to this
//! node and applies it to the shards through a [`ShardSink`].
//!
//! The shard is the truth about progress: on assignment each partition is sought to the shard's
//! next offset; Kafka's committed offset is written after every store commit only as a progress
//! signal for lag tools. Records are buffered only between two polls and committed to the shards
//! before the next poll, and rebalances happen inside a poll, so when partitions are revoked no
//! batch of theirs is in flight; their committed offsets are written synchronously before they go.

mod bridge;
mod consume;
mod dead_letters;
mod rebalance;

use super::mapping::{ValueKind, count_value, dead_letter_reason, is_control, record_from_message};
use super::{KafkaConfig, RetentionGap};
use crate::Result;
use dead_letters::DeadLetterContext;
use parking_lot::Mutex;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::OwnedMessage;
use rdkafka::producer::BaseProducer;
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{Message, Offset, TopicPartitionList};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use strata_proto::{Error, Record, ShardSink, StreamName};

/// What a node knows of the partitions it holds.
#[derive(Default)]
struct Shared {
    /// Assigned partitions → the log end offset last seen (from client statistics), if any.
    assigned: Mutex<BTreeMap<(StreamName, u32), Option<u64>>>,
    /// Records read since the last shard commit, by topic and partition.
    buffers: Mutex<HashMap<(String, i32), Batch>>,
    /// Assigned partitions stalled because the log no longer holds their next offset.
    gaps: Mutex<BTreeMap<(StreamName, u32), RetentionGapInfo>>,
    /// Assigned partitions whose shard has caught up with the log's end as it was when this node
    /// got them: only those are served to cluster queries (a shard still catching up would give
    /// partial answers).
    ready: Mutex<HashSet<(StreamName, u32)>>,
    /// Assigned partitions not ready yet → the end offset to reach (known at the first statistics
    /// after the assignment).
    catching_up: Mutex<HashMap<(StreamName, u32), Option<u64>>>,
}

/// A partition whose next offset the log no longer holds (deleted by retention, or the topic
/// was made anew): the node stopped consuming it rather than skip or crash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetentionGapInfo {
    /// The stream.
    pub stream: StreamName,
    /// The partition.
    pub partition: u32,
    /// The shard's next offset.
    pub stored: u64,
    /// The log's first offset.
    pub log_start: u64,
    /// The log's end offset.
    pub log_end: u64,
}

impl RetentionGapInfo {
    /// What happened and what an operator can do, in one line.
    pub fn message(&self) -> String {
        if self.stored < self.log_start {
            format!(
                "the log of {} partition {} starts at offset {}, but this node has stored only up to {}: \
                 offsets {}..{} were deleted by the log's retention before they were stored. Consuming \
                 it is stopped; restore them or set log.kafka.retention_gap = \"skip\" to go on without them",
                self.stream,
                self.partition,
                self.log_start,
                self.stored,
                self.stored,
                self.log_start
            )
        } else {
            format!(
                "the log of {} partition {} ends at offset {}, but this node has stored up to {} \
                 (was the topic deleted and made anew?). Consuming it is stopped",
                self.stream, self.partition, self.log_end, self.stored
            )
        }
    }
}

/// Records of one partition read since the last shard commit.
#[derive(Default)]
struct Batch {
    records: Vec<Record>,
    /// Values stored as text and as base64, counted once the batch is stored.
    text: u64,
    binary: u64,
    /// Records set aside for the dead-letter topic, with why.
    dead: Vec<(OwnedMessage, &'static str)>,
    /// The first offset read (to read again after a failure), and the last (the shard moves
    /// past it even when it is a control record or a dead letter).
    first: Option<u64>,
    last: Option<u64>,
}

impl Batch {
    /// Adds a message read at `now_ms`: a control record only moves the batch's end; a record
    /// the store cannot take is set aside as a dead letter. Returns whether it was a record
    /// (not a control record).
    fn add(
        &mut self,
        m: &rdkafka::message::BorrowedMessage<'_>,
        now_ms: i64,
        config: &KafkaConfig,
    ) -> bool {
        let offset = u64::try_from(m.offset()).unwrap_or(0);
        self.first.get_or_insert(offset);
        self.last = Some(offset);
        if is_control(m) {
            return false;
        }
        let consumed = record_from_message(m, now_ms);
        if let Some(reason) = dead_letter_reason(m, &consumed, config) {
            self.dead.push((m.detach(), reason));
            return true;
        }
        self.records.push(consumed.record);
        match consumed.kind {
            ValueKind::Json => {}
            ValueKind::Text => self.text += 1,
            ValueKind::Binary => self.binary += 1,
        }
        true
    }

    /// Whether it holds only JSON events (nothing to set aside or count).
    fn plain(&self) -> bool {
        self.dead.is_empty() && self.text == 0 && self.binary == 0
    }
}

struct GroupContext {
    config: KafkaConfig,
    sink: Arc<dyn ShardSink>,
    shared: Arc<Shared>,
    dead_letters: BaseProducer<DeadLetterContext>,
    /// Where the held partitions are noted for a warm restart, and what is noted: what the
    /// group gave this node and did not take back (a restart that got only part of them back
    /// before it stopped again still notes them all).
    held_file: std::path::PathBuf,
    noted: Mutex<std::collections::BTreeSet<(StreamName, u32)>>,
    /// The warm-restart consumer, until the group's first assignment.
    bridge: Mutex<Option<bridge::Bridge>>,
    /// Set when the node stops.
    stopping: Arc<AtomicBool>,
}

/// Whether `e` only says that no topic matches the subscription yet.
fn no_topic_yet(e: &KafkaError) -> bool {
    e.rdkafka_error_code() == Some(RDKafkaErrorCode::UnknownTopicOrPartition)
}

impl ClientContext for GroupContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if no_topic_yet(&error) {
            tracing::debug!(%error, reason, "no stream topic yet");
        } else {
            tracing::warn!(%error, reason, "store consumer");
        }
    }

    fn stats(&self, statistics: Statistics) {
        let mut assigned = self.shared.assigned.lock();
        for (topic, t) in &statistics.topics {
            let Some(stream) = self.config.stream_of(topic) else {
                continue;
            };
            for (p, stats) in &t.partitions {
                let Ok(p) = u32::try_from(*p) else { continue };
                if let Some(end) = assigned.get_mut(&(stream.clone(), p))
                    && stats.hi_offset >= 0
                {
                    let hi = stats.hi_offset as u64;
                    *end = Some(hi);
                    self.note_progress(&stream, p, Some(hi));
                    // The same gauge the embedded log's consumers keep.
                    if let Ok(stored) = self.sink.stored_next_offset(&stream, p) {
                        metrics::gauge!("strata_store_lag_events", "stream" => stream.to_string(), "partition" => p.to_string())
                            .set(hi.saturating_sub(stored) as f64);
                    }
                }
            }
        }
    }
}

impl GroupContext {
    /// Marks an assigned partition ready once its shard has reached the log's end as first seen
    /// after the assignment (`hi`, from the statistics; `None` after a shard commit, which
    /// checks against a target already known).
    fn note_progress(&self, stream: &StreamName, p: u32, hi: Option<u64>) {
        let key = (stream.clone(), p);
        let mut catching_up = self.shared.catching_up.lock();
        let Some(target) = catching_up.get_mut(&key) else {
            return;
        };
        let target = match (*target, hi) {
            (Some(t), _) => t,
            (None, Some(hi)) => *target.insert(hi),
            (None, None) => return,
        };
        if self.sink.stored_next_offset(stream, p).unwrap_or(0) >= target {
            catching_up.remove(&key);
            tracing::info!(%stream, partition = p, "partition caught up; serving it");
            self.shared.ready.lock().insert(key);
        }
    }

    /// Stores `batch` in its shard; counts its non-JSON values once stored.
    fn store(
        &self,
        stream: &StreamName,
        partition: u32,
        batch: Batch,
    ) -> strata_proto::Result<u64> {
        let through = batch.last.map_or(0, |o| o + 1);
        let next = self
            .sink
            .commit_through(stream, partition, batch.records, through)?;
        count_value(stream.as_str(), ValueKind::Text, batch.text);
        count_value(stream.as_str(), ValueKind::Binary, batch.binary);
        Ok(next)
    }

    /// After the consumer said an assigned partition's position is not in the log: finds which
    /// (by the log's watermarks) and stalls it, or with `retention_gap = "skip"` moves it to the
    /// log's start, loudly either way.
    fn check_gaps(&self, consumer: &BaseConsumer<Self>) {
        let assigned: Vec<(StreamName, u32)> =
            self.shared.assigned.lock().keys().cloned().collect();
        for (stream, p) in assigned {
            if self.shared.gaps.lock().contains_key(&(stream.clone(), p)) {
                continue;
            }
            let topic = self.config.topic(stream.as_str());
            let Ok((low, high)) =
                consumer.fetch_watermarks(&topic, p as i32, Duration::from_secs(5))
            else {
                continue;
            };
            let (low, high) = (low.max(0) as u64, high.max(0) as u64);
            let stored = self.sink.stored_next_offset(&stream, p).unwrap_or(0);
            if (low..=high).contains(&stored) {
                continue;
            }
            let gap = RetentionGapInfo {
                stream: stream.clone(),
                partition: p,
                stored,
                log_start: low,
                log_end: high,
            };
            if stored < low && self.config.retention_gap == RetentionGap::Skip {
                tracing::error!(%stream, partition = p, skipped = low - stored,
                    "offsets {stored}..{low} were deleted by the log's retention before they were stored; \
                     going on from {low} without them (retention_gap = \"skip\")");
                metrics::counter!("strata_store_retention_skipped_events_total", "stream" => stream.to_string(), "partition" => p.to_string())
                    .increment(low - stored);
                if let Err(e) = self.reassign_at(consumer, &topic, p, low) {
                    tracing::warn!(%stream, partition = p, error = %e, "cannot move to the log's start");
                }
                continue;
            }
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(&topic, p as i32);
            if let Err(e) = consumer.pause(&tpl) {
                tracing::warn!(%stream, partition = p, error = %e, "cannot pause the partition");
            }
            tracing::error!(%stream, partition = p, "{}", gap.message());
            metrics::gauge!("strata_store_stalled_partitions", "stream" => stream.to_string(), "partition" => p.to_string())
                .set(1.0);
            self.shared.gaps.lock().insert((stream, p), gap);
        }
    }

    fn stream_partition(&self, topic: &str, partition: i32) -> Option<(StreamName, u32)> {
        Some((
            self.config.stream_of(topic)?,
            u32::try_from(partition).ok()?,
        ))
    }

    /// Takes `topic`/`partition` again at `offset` (a partition whose position failed cannot be
    /// sought): alone under the cooperative protocol, with the others where they are under the
    /// eager one.
    fn reassign_at(
        &self,
        consumer: &BaseConsumer<Self>,
        topic: &str,
        partition: u32,
        offset: u64,
    ) -> KafkaResult<()> {
        if matches!(
            consumer.rebalance_protocol(),
            rdkafka::consumer::RebalanceProtocol::Cooperative
        ) {
            let mut one = TopicPartitionList::new();
            one.add_partition_offset(topic, partition as i32, Offset::Offset(offset as i64))?;
            consumer.incremental_unassign(&one)?;
            return consumer.incremental_assign(&one);
        }
        let positions = consumer.position()?;
        let mut tpl = TopicPartitionList::new();
        for e in positions.elements() {
            let at = if e.topic() == topic && e.partition() == partition as i32 {
                Offset::Offset(offset as i64)
            } else {
                match e.offset() {
                    Offset::Offset(o) => Offset::Offset(o),
                    _ => {
                        let next = self
                            .stream_partition(e.topic(), e.partition())
                            .and_then(|(s, p)| self.sink.stored_next_offset(&s, p).ok())
                            .unwrap_or(0);
                        Offset::Offset(next as i64)
                    }
                }
            };
            tpl.add_partition_offset(e.topic(), e.partition(), at)?;
        }
        consumer.assign(&tpl)
    }

    /// Forgets stalled partitions (on a rebalance; those still behind are found again).
    fn clear_gaps(&self) {
        for ((stream, p), _) in std::mem::take(&mut *self.shared.gaps.lock()) {
            metrics::gauge!("strata_store_stalled_partitions", "stream" => stream.to_string(), "partition" => p.to_string())
                .set(0.0);
        }
    }

    /// Commits the shards' next offsets of `tpl`'s partitions to Kafka.
    fn commit_progress(
        &self,
        consumer: &BaseConsumer<Self>,
        tpl: &TopicPartitionList,
        mode: CommitMode,
    ) {
        let mut offsets = TopicPartitionList::new();
        for e in tpl.elements() {
            let Some((stream, p)) = self.stream_partition(e.topic(), e.partition()) else {
                continue;
            };
            if let Ok(next) = self.sink.stored_next_offset(&stream, p)
                && next > 0
            {
                let _ = offsets.add_partition_offset(
                    e.topic(),
                    e.partition(),
                    Offset::Offset(next as i64),
                );
            }
        }
        if offsets.count() > 0
            && let Err(e) = consumer.commit(&offsets, mode)
        {
            tracing::debug!(error = %e, "cannot commit progress to Kafka");
        }
    }
}

/// The store side of a node on Kafka: a member of the store consumer group.
pub struct StoreGroup {
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl StoreGroup {
    /// Joins the group and starts consuming into `sink`; `max_batch` caps one shard commit.
    ///
    /// `instance` is the node's stable id: with `static_membership` it is the member's
    /// `group.instance.id`, so that a node restarted within the session timeout gets its
    /// partitions back without a rebalance of the others. `state_dir` keeps which partitions
    /// the node holds, which a restart catches up before the group has assigned them again.
    pub fn start(
        config: &KafkaConfig,
        sink: Arc<dyn ShardSink>,
        max_batch: usize,
        instance: &str,
        state_dir: &std::path::Path,
    ) -> Result<Self> {
        let shared = Arc::new(Shared::default());
        let dead_letters: BaseProducer<DeadLetterContext> = config
            .producer_config()
            .create_with_context(DeadLetterContext::default())
            .map_err(|e| {
                Error::Unavailable(format!("cannot create the dead-letter producer: {e}"))
            })?;
        let stop = Arc::new(AtomicBool::new(false));
        let held_file = bridge::held_file(state_dir);
        let noted = bridge::load_held(&held_file);
        let warm = bridge::Bridge::start(
            config,
            sink.clone(),
            noted.clone(),
            max_batch,
            Duration::from_millis(config.session_timeout_ms.saturating_mul(2)),
        );
        let context = GroupContext {
            config: config.clone(),
            sink,
            shared: shared.clone(),
            dead_letters,
            held_file,
            noted: Mutex::new(noted.into_iter().collect()),
            bridge: Mutex::new(warm),
            stopping: stop.clone(),
        };
        let mut settings = config.consumer_config(&config.group_id);
        if config.static_membership {
            settings.set("group.instance.id", instance);
        }
        let consumer: BaseConsumer<GroupContext> = settings
            // Only the partitions that move stop: the others are kept through a rebalance.
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set("session.timeout.ms", config.session_timeout_ms.to_string())
            .set(
                // A member that died is noticed at another member's heartbeat: frequent ones
                // shorten the time its partitions wait beyond the session timeout.
                "heartbeat.interval.ms",
                (config.session_timeout_ms / 10).max(100).to_string(),
            )
            .set(
                // The first statistics after an assignment give the end a partition catches
                // up to before it is served.
                "statistics.interval.ms",
                config.refresh_ms.clamp(250, 1000).to_string(),
            )
            // A position the log no longer holds is an error to look into, never a silent jump.
            .set("auto.offset.reset", "error")
            .create_with_context(context)
            .map_err(|e| Error::Unavailable(format!("cannot create the store consumer: {e}")))?;
        let pattern = format!("^{}[a-z][a-z0-9_]*$", regex_escape(&config.topic_prefix));
        consumer
            .subscribe(&[&pattern])
            .map_err(|e| Error::Unavailable(format!("cannot subscribe to {pattern}: {e}")))?;
        let (flag, max_batch) = (stop.clone(), max_batch.max(1));
        let thread = std::thread::Builder::new()
            .name("strata-store-group".into())
            .spawn(move || consume::consume(consumer, max_batch, &flag))
            .map_err(|e| Error::Unavailable(format!("cannot start the store consumer: {e}")))?;
        Ok(Self {
            shared,
            stop,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// The partitions this node holds, with the log end offset last seen for each.
    pub fn assignment(&self) -> Vec<(StreamName, u32, Option<u64>)> {
        self.shared
            .assigned
            .lock()
            .iter()
            .map(|((s, p), end)| (s.clone(), *p, *end))
            .collect()
    }

    /// Assigned partitions stalled because the log no longer holds their next offset.
    pub fn gaps(&self) -> Vec<RetentionGapInfo> {
        self.shared.gaps.lock().values().cloned().collect()
    }

    /// Commits what was read, leaves the group (its partitions go to the other members) and
    /// waits for the thread. Blocking.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        let thread = self.thread.lock().take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}

/// The store consumer group as a node's [`strata_proto::Feed`].
#[async_trait::async_trait]
impl strata_proto::Feed for StoreGroup {
    fn held(&self) -> Option<Vec<strata_proto::Held>> {
        Some(self.assignment())
    }

    fn serving(&self, stream: &StreamName, partition: u32) -> bool {
        self.shared
            .ready
            .lock()
            .contains(&(stream.clone(), partition))
    }

    fn stalled(&self) -> Vec<strata_proto::Stall> {
        self.gaps()
            .into_iter()
            .map(|g| strata_proto::Stall {
                reason: g.message(),
                stream: g.stream,
                partition: g.partition,
            })
            .collect()
    }

    async fn stop(&self, limit: Duration) {
        self.stop.store(true, Ordering::Relaxed);
        let deadline = Instant::now() + limit;
        loop {
            let finished = self
                .thread
                .lock()
                .as_ref()
                .is_none_or(JoinHandle::is_finished);
            if finished {
                // Joins at once: the thread has committed and left the group.
                StoreGroup::stop(self);
                return;
            }
            if Instant::now() >= deadline {
                tracing::warn!("the store consumer group did not stop in time");
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for StoreGroup {
    fn drop(&mut self) {
        self.stop();
    }
}

fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 2);
    for c in s.chars() {
        if !c.is_ascii_alphanumeric() && c != '_' && c != '-' {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::regex_escape;

    #[test]
    fn prefix_is_escaped() {
        assert_eq!(regex_escape("strata."), "strata\\.");
        assert_eq!(regex_escape("a-b_c"), "a-b_c");
    }
}
