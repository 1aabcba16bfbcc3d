//! The `Log` contract: what the write path appends to and what store nodes consume from.
//!
//! The embedded on-disk log and the Kafka log both implement [`Log`]; ingest and store only ever
//! see this trait.

use crate::{Event, FieldDef, FieldSpec, Record, Result, StreamName};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// A stream as the catalog knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamInfo {
    /// The stream's name.
    pub name: StreamName,
    /// How many partitions it has (fixed at creation).
    pub partitions: u32,
    /// Declared fields of `data`, in declaration order (fields are only ever added).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<FieldDef>,
}

impl StreamInfo {
    /// The largest partition count a stream may have.
    pub const MAX_PARTITIONS: u32 = 256;

    /// Checks that `partitions` is in `1..=MAX_PARTITIONS`.
    pub fn check_partitions(partitions: u32) -> Result<()> {
        if (1..=Self::MAX_PARTITIONS).contains(&partitions) {
            Ok(())
        } else {
            Err(crate::Error::InvalidPartitions(partitions))
        }
    }

    /// Fails with [`crate::Error::PartitionMismatch`] unless the stream has `requested`
    /// partitions (creating an existing stream again with another count).
    pub fn expect_partitions(&self, requested: u32) -> Result<()> {
        if self.partitions == requested {
            Ok(())
        } else {
            Err(crate::Error::PartitionMismatch {
                name: self.name.to_string(),
                existing: self.partitions,
                requested,
            })
        }
    }

    /// Fails with [`crate::Error::UnknownPartition`] unless `partition` exists.
    pub fn check_partition(&self, partition: u32) -> Result<()> {
        if partition < self.partitions {
            Ok(())
        } else {
            Err(crate::Error::UnknownPartition {
                stream: self.name.to_string(),
                partition,
                partitions: self.partitions,
            })
        }
    }
}

/// Every stream of a log, by name. Cheap to clone.
pub type Catalog = Arc<BTreeMap<StreamName, StreamInfo>>;

/// A materialized view's definition in a log's shared catalog (`<prefix>__catalog` on Kafka), so
/// that every node of a cluster knows it and every store node maintains it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedView {
    /// The view's name (a SQL table name).
    pub name: String,
    /// The stream it aggregates.
    pub stream: StreamName,
    /// Its `SELECT`, as written.
    pub query: String,
}

/// Every view of a log's shared catalog, by name. Cheap to clone.
pub type ViewCatalog = Arc<BTreeMap<String, SharedView>>;

/// A named durable subscription as the log's catalog keeps it (`<prefix>__catalog` on Kafka, so
/// that any node serves it): what it follows, how far its consumer acknowledged, and who
/// consumes it now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionState {
    /// The stream it follows.
    pub stream: StreamName,
    /// Only events of this type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_type: Option<String>,
    /// Only events for which this SQL expression is true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
    /// The acknowledged cursor (a consistency token's text): delivery starts right after it.
    pub cursor: String,
    /// When it was created (epoch ms).
    pub created_ms: i64,
    /// Its consumer now, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer: Option<SubscriptionConsumer>,
    /// Set on a record that only moves the cursor (an acknowledgement): its `consumer` is what
    /// its writer knew, not a change of the hold (see [`SubscriptionState::applied_over`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hold_unchanged: bool,
}

impl SubscriptionState {
    /// This catalog record of a subscription, applied where `previous` was known under its
    /// name. Within one subscription (same stream, same creation time) the acknowledged cursor
    /// only moves forward, per partition, and a record with [`Self::hold_unchanged`] keeps the
    /// consumer known before. Nodes that write from a stale view of the catalog (on Kafka each
    /// learns it asynchronously) then cannot drop a hold or move a cursor back, and every node
    /// that applies the catalog in order agrees.
    #[must_use]
    pub fn applied_over(mut self, previous: Option<&Self>) -> Self {
        let hold_unchanged = std::mem::take(&mut self.hold_unchanged);
        let Some(previous) =
            previous.filter(|p| p.stream == self.stream && p.created_ms == self.created_ms)
        else {
            return self;
        };
        if let (Ok(mut cursor), Ok(given)) = (
            previous.cursor.parse::<crate::ConsistencyToken>(),
            self.cursor.parse::<crate::ConsistencyToken>(),
        ) && cursor.stream == given.stream
        {
            cursor.merge(&given);
            self.cursor = cursor.to_string();
        }
        if hold_unchanged {
            self.consumer.clone_from(&previous.consumer);
        }
        self
    }

    /// Whether `entry` (a node's state of this subscription's name) already reflects this
    /// record: applying it again would change nothing. How a writer knows its record was read.
    #[must_use]
    pub fn absorbed_in(&self, entry: Option<&Self>) -> bool {
        entry.is_some_and(|e| self.clone().applied_over(Some(e)) == *e)
    }
}

/// The one consumer of a durable subscription: it holds it until `until_ms` unless it renews.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionConsumer {
    /// A random id of this consumer's connection.
    pub id: String,
    /// The node serving it.
    pub node: String,
    /// When it connected (epoch ms).
    pub since_ms: i64,
    /// Its hold ends then unless renewed (epoch ms).
    pub until_ms: i64,
}

/// Every durable subscription of a log, by name. Cheap to clone.
pub type SubscriptionCatalog = Arc<BTreeMap<String, SubscriptionState>>;

/// The offsets one append took in a partition, both ends inclusive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OffsetRange {
    /// Offset of the first appended event.
    pub first: u64,
    /// Offset of the last appended event.
    pub last: u64,
}

/// A partitioned, durable, append-only log of events.
#[async_trait]
pub trait Log: Send + Sync + 'static {
    /// Creates `name` with `partitions` partitions and declared `fields`. Returns the stream and
    /// whether it was created now; an existing stream with the same partition count is returned as
    /// is (its fields unchanged), one with another count is [`crate::Error::PartitionMismatch`].
    async fn create_stream(
        &self,
        name: &StreamName,
        partitions: u32,
        fields: &[FieldSpec],
    ) -> Result<(StreamInfo, bool)>;

    /// Declares more fields on an existing stream (see [`crate::fields::merge_fields`]); each new
    /// field applies from every partition's current end offset on.
    async fn add_fields(&self, name: &StreamName, fields: &[FieldSpec]) -> Result<StreamInfo>;

    /// The catalog, kept current as streams are created.
    fn catalog(&self) -> watch::Receiver<Catalog>;

    /// The materialized views defined in the log's shared catalog, kept current; `None` when the
    /// log has no shared catalog of views (the embedded log: its one store keeps its views).
    fn shared_views(&self) -> Option<watch::Receiver<ViewCatalog>> {
        None
    }

    /// Writes view `name`'s definition into the shared catalog (`Some`), or removes it (`None`),
    /// and returns once this node's catalog shows the change.
    ///
    /// # Errors
    /// [`crate::Error::Unavailable`] when the log has no shared catalog or cannot be written.
    async fn put_view(&self, name: &str, _def: Option<&SharedView>) -> Result<()> {
        Err(crate::Error::Unavailable(format!(
            "this log keeps no shared view catalog, so view {name} cannot be written to it"
        )))
    }

    /// The durable subscriptions of the log's catalog, kept current.
    fn subscriptions(&self) -> watch::Receiver<SubscriptionCatalog>;

    /// Writes subscription `name`'s state into the catalog (`Some`), or removes it (`None`), and
    /// returns once this node's catalog shows the change. Durable when it returns.
    ///
    /// # Errors
    /// [`crate::Error::Unavailable`] when the catalog cannot be written.
    async fn put_subscription(&self, name: &str, state: Option<&SubscriptionState>) -> Result<()>;

    /// Appends `events` to one partition, in order, and returns once they are durable.
    async fn append(
        &self,
        stream: &StreamName,
        partition: u32,
        events: Vec<Event>,
    ) -> Result<OffsetRange>;

    /// The offset the next durable append to the partition will get (its end).
    async fn end_offset(&self, stream: &StreamName, partition: u32) -> Result<u64>;

    /// Whether [`Log::end_offset`] is exact enough to end a read at. When it is not (Kafka, whose
    /// brokers' watermarks strata only shows), a read from the log ends once the log goes idle.
    fn end_offsets_are_exact(&self) -> bool {
        true
    }

    /// Whether the write path should read, on first use of a partition, the ids of records the
    /// store has not applied yet, to drop retried ids (cheap on a local log; on Kafka the store
    /// drops them at commit instead).
    fn preload_ids(&self) -> bool {
        false
    }

    /// Whether the log deletes old records by its own retention settings (see
    /// [`Log::enforce_retention`]).
    fn has_retention(&self) -> bool {
        false
    }

    /// Deletes what retention allows, never a record at or after `stored(stream, partition)` (the
    /// next offset the shards have not applied); returns how many segments went. Blocking. Logs
    /// whose retention is the brokers' do nothing.
    ///
    /// # Errors
    /// Deleting failed.
    fn enforce_retention(&self, _stored: &dyn Fn(&StreamName, u32) -> u64) -> Result<usize> {
        Ok(0)
    }

    /// Opens a reader of one partition positioned at `from`.
    async fn open_reader(
        &self,
        stream: &StreamName,
        partition: u32,
        from: u64,
    ) -> Result<Box<dyn LogReader>>;
}

/// A cursor over one partition of a [`Log`].
#[async_trait]
pub trait LogReader: Send {
    /// Returns up to `max` durable records at the cursor and advances past them, waiting at most
    /// `wait` for the first one; an empty vector means nothing arrived in time.
    async fn next_batch(&mut self, max: usize, wait: Duration) -> Result<Vec<Record>>;

    /// The offset the next record returned will have (at least).
    fn position(&self) -> u64;
}

/// What the write path asks the store to deduplicate event ids (implemented by store nodes).
pub trait IdLookup: Send + Sync + 'static {
    /// The next offset the store has not yet applied for the partition.
    fn stored_next_offset(&self, stream: &StreamName, partition: u32) -> Result<u64>;

    /// For each id, the offset at which the partition's store already holds it.
    fn lookup_ids(
        &self,
        stream: &StreamName,
        partition: u32,
        ids: &[&str],
    ) -> Result<Vec<Option<u64>>>;
}

/// Where a log consumer that is not a per-partition task (Kafka's consumer group) applies what it
/// reads: implemented by store nodes. [`IdLookup::stored_next_offset`] says where each shard
/// resumes (0 for a shard not yet written).
pub trait ShardSink: IdLookup {
    /// Applies consecutive reads of one partition atomically and returns the shard's next offset,
    /// which moves to at least `through` (the reads may end with records that are not events —
    /// control records, dead letters — which the shard then never asks for again);
    /// [`crate::Error::UnknownStream`] while the stream is not in the store's catalog yet.
    fn commit_through(
        &self,
        stream: &StreamName,
        partition: u32,
        records: Vec<Record>,
        through: u64,
    ) -> Result<u64>;

    /// [`ShardSink::commit_through`] up to the last record.
    fn commit(&self, stream: &StreamName, partition: u32, records: Vec<Record>) -> Result<u64> {
        self.commit_through(stream, partition, records, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(cursor: &str, consumer: Option<&str>, created_ms: i64) -> SubscriptionState {
        SubscriptionState {
            stream: StreamName::new("orders").unwrap(),
            event_type: None,
            filter: None,
            cursor: cursor.into(),
            created_ms,
            consumer: consumer.map(|id| SubscriptionConsumer {
                id: id.into(),
                node: "n".into(),
                since_ms: 1,
                until_ms: 2,
            }),
            hold_unchanged: false,
        }
    }

    fn ack_record(s: &SubscriptionState) -> SubscriptionState {
        SubscriptionState {
            consumer: None,
            hold_unchanged: true,
            ..s.clone()
        }
    }

    #[test]
    fn stale_records_neither_move_a_cursor_back_nor_drop_a_hold() {
        let known = state("v1.orders.0-5.1-2", Some("c1"), 1);
        // A renewal written before its node saw the acknowledgement of partition 0.
        let renewal = state("v1.orders.0-3.1-4", Some("c1"), 1).applied_over(Some(&known));
        assert_eq!(renewal.cursor, "v1.orders.0-5.1-4");
        // An acknowledgement written by a node that had not seen the hold.
        let acked = ack_record(&state("v1.orders.0-6.1-2", None, 1)).applied_over(Some(&renewal));
        assert_eq!(acked.cursor, "v1.orders.0-6.1-4");
        assert_eq!(acked.consumer, renewal.consumer);
        assert!(!acked.hold_unchanged);
        assert!(ack_record(&acked).absorbed_in(Some(&acked)));
        assert!(!state("v1.orders.0-7", None, 1).absorbed_in(Some(&acked)));
        // A release does drop it; a new subscription of the same name starts over.
        let released = state("v1.orders.0-6.1-4", None, 1).applied_over(Some(&acked));
        assert_eq!(released.consumer, None);
        let again = state("v1.orders", None, 9).applied_over(Some(&acked));
        assert_eq!((again.cursor.as_str(), again.consumer), ("v1.orders", None));
    }

    #[test]
    fn old_records_without_the_flag_still_read() {
        let json = r#"{"stream":"orders","cursor":"v1.orders.0-1","created_ms":1}"#;
        let s: SubscriptionState = serde_json::from_str(json).unwrap();
        assert!(!s.hold_unchanged);
        assert!(
            !serde_json::to_string(&s)
                .unwrap()
                .contains("hold_unchanged")
        );
    }
}
