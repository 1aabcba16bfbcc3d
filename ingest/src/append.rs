//! The append service: partitions a decoded batch, drops ids the partition already holds, and
//! appends each partition's share to the log.

use crate::Result;
use crate::pending::{Id, PendingIds};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use strata_proto::{
    ConsistencyToken, Event, IdLookup, Log, StreamInfo, StreamName, partition_for_key,
};
use tokio::sync::Mutex;

/// Ids per partition a node without a store remembers (its stores drop older retried ids when
/// they apply the log).
const RECENT_IDS_WITHOUT_STORE: usize = 100_000;

/// Settings of the append service.
#[derive(Clone, Debug)]
pub struct IngestConfig {
    /// Partition count of streams created by a first append.
    pub default_partitions: u32,
    /// Whether, on first use of a partition, the ids of log records the store has not applied yet
    /// are read from the log (the embedded log; on Kafka the store drops retried ids at commit).
    pub preload_ids: bool,
}

/// What one partition took of an append.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct PartitionAppend {
    /// The partition.
    pub partition: u32,
    /// Offset of its first appended event.
    pub first_offset: u64,
    /// Offset of its last appended event.
    pub last_offset: u64,
    /// Events appended to it.
    pub count: usize,
}

/// The result of an append, reported once every appended event is durable.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct AppendOutcome {
    /// Events appended.
    pub appended: usize,
    /// Events not appended because their id was already in the partition (or earlier in the batch).
    pub duplicates: usize,
    /// Per partition that received events, ascending.
    pub partitions: Vec<PartitionAppend>,
    /// A consistency token: pass it as `after` to a read to see these events (see
    /// [`ConsistencyToken`]).
    pub token: String,
    /// For an append with expected versions: each key's version after it (set once the store
    /// has decided).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub versions: BTreeMap<String, u64>,
}

/// The pending ids of one partition, locked across the store lookup and the reservation.
type SharedPending = Arc<Mutex<PendingIds>>;

/// The write path: one per node, shared by every request.
pub struct Ingest {
    log: Arc<dyn Log>,
    ids: Option<Arc<dyn IdLookup>>,
    config: IngestConfig,
    pending: parking_lot::Mutex<HashMap<(StreamName, u32), SharedPending>>,
    sticky: AtomicU32,
}

impl Ingest {
    /// A write path over `log`. With `ids`, retried event ids are detected against the store;
    /// without, only ids seen since this process started are.
    pub fn new(log: Arc<dyn Log>, ids: Option<Arc<dyn IdLookup>>, config: IngestConfig) -> Self {
        Self {
            log,
            ids,
            config,
            pending: parking_lot::Mutex::new(HashMap::new()),
            sticky: AtomicU32::new(0),
        }
    }

    /// Partition count of streams created by a first append.
    pub fn default_partitions(&self) -> u32 {
        self.config.default_partitions
    }

    /// The log this write path appends to.
    pub fn log(&self) -> &Arc<dyn Log> {
        &self.log
    }

    /// The stream `name`, created with the default partition count if it does not exist.
    pub async fn stream(&self, name: &StreamName) -> Result<StreamInfo> {
        if let Some(info) = self.log.catalog().borrow().get(name) {
            return Ok(info.clone());
        }
        match self
            .log
            .create_stream(name, self.config.default_partitions, &[])
            .await
        {
            Ok((info, _)) => Ok(info),
            // Created concurrently with another count: use what exists.
            Err(strata_proto::Error::PartitionMismatch { .. }) => self
                .log
                .catalog()
                .borrow()
                .get(name)
                .cloned()
                .ok_or_else(|| strata_proto::Error::UnknownStream(name.to_string()).into()),
            Err(e) => Err(e.into()),
        }
    }

    /// Appends a validated batch to `stream` (creating it if needed). Events with a key go to the
    /// key's partition (Kafka's murmur2), events without a key but with an id to the id's, the
    /// rest of the batch to one partition chosen round-robin per request.
    ///
    /// A batch in which an event states an expected version is *conditional*: all of it goes to
    /// one partition (the keys' partition; events without a key follow) as one batch of
    /// consecutive records, each carrying its place and its key's condition (see
    /// [`strata_proto::condition`]). The store decides it; the caller learns the decision from
    /// the store (this returns once the records are durable, decided or not).
    pub async fn append(&self, stream: &StreamName, events: Vec<Event>) -> Result<AppendOutcome> {
        let info = self.stream(stream).await?;
        let total = events.len();
        let sticky = self.sticky.fetch_add(1, Ordering::Relaxed) % info.partitions;
        let mut by_partition: BTreeMap<u32, Vec<Event>> = BTreeMap::new();
        let conditional = events.iter().any(|e| e.condition.is_some());
        if conditional {
            let p = conditional_partition(&events, info.partitions)?;
            // Refused before any id is reserved (a retry's subset is checked again after).
            let stated: Vec<_> = events
                .iter()
                .map(|e| (e.key.as_deref(), e.condition.and_then(|c| c.expect)))
                .collect();
            strata_proto::condition::request_conditions(&stated)?;
            by_partition.insert(p, events);
        } else {
            for event in events {
                let p = match (&event.key, &event.id) {
                    (Some(key), _) => partition_for_key(key.as_bytes(), info.partitions),
                    (None, Some(id)) => partition_for_key(id.as_bytes(), info.partitions),
                    (None, None) => sticky,
                };
                by_partition.entry(p).or_default().push(event);
            }
        }
        let appends = by_partition
            .into_iter()
            .map(|(p, events)| self.append_partition(stream, p, events));
        let results = futures::future::join_all(appends).await;
        let mut outcome = AppendOutcome {
            appended: 0,
            duplicates: 0,
            partitions: Vec::new(),
            token: String::new(),
            versions: BTreeMap::new(),
        };
        let mut first_error = None;
        for result in results {
            match result {
                Ok(Some(part)) => {
                    outcome.appended += part.count;
                    outcome.partitions.push(part);
                }
                Ok(None) => {}
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        outcome.duplicates = total - outcome.appended;
        outcome.token = ConsistencyToken {
            stream: stream.clone(),
            offsets: outcome
                .partitions
                .iter()
                .map(|p| (p.partition, p.last_offset + 1))
                .collect(),
        }
        .to_string();
        metrics::counter!("strata_events_appended_total", "stream" => stream.to_string())
            .increment(outcome.appended as u64);
        if outcome.duplicates > 0 {
            metrics::counter!("strata_events_deduplicated_total", "stream" => stream.to_string())
                .increment(outcome.duplicates as u64);
        }
        Ok(outcome)
    }

    async fn append_partition(
        &self,
        stream: &StreamName,
        partition: u32,
        events: Vec<Event>,
    ) -> Result<Option<PartitionAppend>> {
        let bytes: usize = events.iter().map(Event::approx_size).sum();
        let has_ids = events.iter().any(|e| e.id.is_some());
        let pending = if has_ids {
            let pending = self
                .pending
                .lock()
                .entry((stream.clone(), partition))
                .or_default()
                .clone();
            Some(pending)
        } else {
            None
        };
        let (events, ids) = match &pending {
            Some(pending) => self.reserve_ids(stream, partition, pending, events).await?,
            None => (events, Vec::new()),
        };
        if events.is_empty() {
            return Ok(None);
        }
        let events = match with_batch_places(events) {
            Ok(events) => events,
            Err(e) => {
                if let Some(pending) = &pending {
                    let mut pending = pending.lock().await;
                    for id in ids.iter().flatten() {
                        pending.forget(id);
                    }
                }
                return Err(e);
            }
        };
        let count = events.len();
        let result = self.log.append(stream, partition, events).await;
        if let Some(pending) = pending {
            let mut pending = pending.lock().await;
            for (i, id) in ids.into_iter().enumerate() {
                let Some(id) = id else { continue };
                match &result {
                    Ok(range) => pending.record(id, range.first + i as u64),
                    Err(_) => pending.forget(&id),
                }
            }
        }
        let range = result?;
        metrics::counter!("strata_bytes_appended_total", "stream" => stream.to_string())
            .increment(bytes as u64);
        Ok(Some(PartitionAppend {
            partition,
            first_offset: range.first,
            last_offset: range.last,
            count,
        }))
    }

    /// Forgets `ids` appended to `partition` that the store then rejected (a conditional batch),
    /// so that a retry of them is not taken for a duplicate.
    pub async fn forget_ids(&self, stream: &StreamName, partition: u32, ids: &[String]) {
        let pending = self
            .pending
            .lock()
            .get(&(stream.clone(), partition))
            .cloned();
        if let Some(pending) = pending {
            let mut pending = pending.lock().await;
            for id in ids {
                pending.forget(id);
            }
        }
    }

    /// Drops events whose id the partition holds (stored, appended, in flight, or earlier in this
    /// batch) and marks the remaining ids as in flight; returns the kept events and, beside each,
    /// its id as the pending set holds it.
    async fn reserve_ids(
        &self,
        stream: &StreamName,
        partition: u32,
        pending: &Mutex<PendingIds>,
        events: Vec<Event>,
    ) -> Result<(Vec<Event>, Vec<Option<Id>>)> {
        let mut pending = pending.lock().await;
        let stored = match &self.ids {
            Some(ids) => ids.stored_next_offset(stream, partition)?,
            None => 0,
        };
        if !pending.loaded {
            self.load_unstored_ids(stream, partition, stored, &mut pending)
                .await?;
        }
        if self.ids.is_some() {
            pending.prune(stored);
        } else {
            pending.cap(RECENT_IDS_WITHOUT_STORE);
        }
        let in_store: Vec<Option<u64>> = match &self.ids {
            Some(ids) => {
                let list: Vec<&str> = events.iter().filter_map(|e| e.id.as_deref()).collect();
                ids.lookup_ids(stream, partition, &list)?
            }
            None => Vec::new(),
        };
        let mut in_store = in_store.into_iter();
        let mut kept = Vec::with_capacity(events.len());
        let mut ids = Vec::with_capacity(events.len());
        for event in events {
            let held = match &event.id {
                Some(id) => {
                    let stored_already = in_store.next().flatten().is_some();
                    // An id earlier in this batch is already reserved here, so it counts as held.
                    if stored_already {
                        continue;
                    }
                    match pending.reserve(id) {
                        Some(held) => Some(held),
                        None => continue,
                    }
                }
                None => None,
            };
            kept.push(event);
            ids.push(held);
        }
        Ok((kept, ids))
    }

    /// Reads the ids of the log's records the store has not applied yet (the log's tail after a
    /// restart), so that a retry of one of them is still caught.
    async fn load_unstored_ids(
        &self,
        stream: &StreamName,
        partition: u32,
        stored: u64,
        pending: &mut PendingIds,
    ) -> Result<()> {
        if !self.config.preload_ids || self.ids.is_none() {
            pending.loaded = true;
            return Ok(());
        }
        let end = self.log.end_offset(stream, partition).await?;
        if stored < end {
            let mut reader = self.log.open_reader(stream, partition, stored).await?;
            let mut rounds = 0usize;
            while reader.position() < end && rounds < 1_000_000 {
                rounds += 1;
                let batch = reader.next_batch(65_536, Duration::from_secs(1)).await?;
                if batch.is_empty() {
                    break;
                }
                for record in batch {
                    if let Some(id) = record.event.id {
                        let id = pending.id(&id);
                        pending.record(id, record.offset);
                    }
                }
            }
        }
        pending.loaded = true;
        Ok(())
    }
}

/// The one partition of a conditional batch: its keys' (and its ids' when it has no key).
fn conditional_partition(events: &[Event], partitions: u32) -> Result<u32> {
    if events.len() > strata_proto::condition::MAX_BATCH as usize {
        return Err(strata_proto::Error::InvalidCondition(format!(
            "a request with expected versions holds at most {} events, this one {}",
            strata_proto::condition::MAX_BATCH,
            events.len()
        ))
        .into());
    }
    let mut chosen: Option<(u32, &str)> = None;
    for key in events.iter().filter_map(|e| e.key.as_deref()) {
        let p = partition_for_key(key.as_bytes(), partitions);
        match chosen {
            None => chosen = Some((p, key)),
            Some((q, other)) if q != p => {
                return Err(strata_proto::Error::InvalidCondition(format!(
                    "the events of a request with expected versions must share a partition (they \
                     are decided as one batch): key {other:?} is in partition {q}, key {key:?} in \
                     partition {p}; send them in separate requests"
                ))
                .into());
            }
            Some(_) => {}
        }
    }
    Ok(chosen.map_or(0, |(p, _)| p))
}

/// Gives each event of a conditional batch its place (`index` of `count`) and moves each key's
/// condition to the key's first event (see [`strata_proto::condition::request_conditions`]);
/// a plain batch is returned as it is.
fn with_batch_places(mut events: Vec<Event>) -> Result<Vec<Event>> {
    if events.iter().all(|e| e.condition.is_none()) {
        return Ok(events);
    }
    let stated: Vec<(Option<&str>, Option<strata_proto::Expect>)> = events
        .iter()
        .map(|e| (e.key.as_deref(), e.condition.and_then(|c| c.expect)))
        .collect();
    let expects = strata_proto::condition::request_conditions(&stated)?;
    let count = u32::try_from(events.len()).unwrap_or(u32::MAX);
    let batch_id = new_batch_id();
    for (index, (event, expect)) in events.iter_mut().zip(expects).enumerate() {
        event.condition = Some(strata_proto::Condition {
            expect,
            index: u32::try_from(index).unwrap_or(u32::MAX),
            count,
            batch_id,
        });
    }
    Ok(events)
}

/// A conditional batch's tag (see [`strata_proto::Condition::batch_id`]): a count of this
/// process's batches hashed with keys drawn at random per process, never 0.
fn new_batch_id() -> u64 {
    use std::hash::BuildHasher;
    use std::sync::LazyLock;
    use std::sync::atomic::{AtomicU64, Ordering};
    static KEYS: LazyLock<std::collections::hash_map::RandomState> =
        LazyLock::new(std::collections::hash_map::RandomState::new);
    static BATCHES: AtomicU64 = AtomicU64::new(0);
    KEYS.hash_one(BATCHES.fetch_add(1, Ordering::Relaxed))
        .max(1)
}
