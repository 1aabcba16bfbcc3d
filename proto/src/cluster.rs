//! What a node reports about itself for `GET /v1/cluster`, and the contracts between a node and
//! the part of its log backend that spans nodes: [`Membership`] (the other nodes) and [`Feed`]
//! (how the partitions a store node holds reach its shards).

use crate::{Result, StreamName};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// One partition a store node holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldPartition {
    /// The stream.
    pub stream: String,
    /// The partition.
    pub partition: u32,
    /// The shard's next offset (what SQL and replay see ends below it).
    pub stored_offset: u64,
    /// The log's end offset as last seen, if known.
    pub log_end_offset: Option<u64>,
    /// `log_end_offset - stored_offset`, if the end is known.
    pub lag: Option<u64>,
    /// Whether the node answers queries for it (false while its shard catches up after the node
    /// got the partition).
    #[serde(default = "yes")]
    pub serving: bool,
}

fn yes() -> bool {
    true
}

/// A node's status, as it last published it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// The node's id (config `node_id`).
    pub node: String,
    /// `all`, `ingest` or `store`.
    pub role: String,
    /// The node's HTTP address.
    pub http: String,
    /// Where other nodes reach it for node-to-node calls (cluster queries), if it takes them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// When it published this, milliseconds since the Unix epoch.
    pub updated_ms: i64,
    /// The partitions it holds (store nodes), ascending.
    pub partitions: Vec<HeldPartition>,
}

/// A partition a store node holds: the stream, the partition, and the log's end offset as last
/// seen (if known).
pub type Held = (StreamName, u32, Option<u64>);

/// A held partition its feed stopped consuming, and why (with what an operator can do).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stall {
    /// The stream.
    pub stream: StreamName,
    /// The partition.
    pub partition: u32,
    /// Why, in one line.
    pub reason: String,
}

/// What a log backend that spans machines (Kafka) knows of the other nodes: the statuses they
/// published, and how this node publishes its own.
#[async_trait]
pub trait Membership: Send + Sync {
    /// The latest status each node published, by node id.
    fn peers(&self) -> BTreeMap<String, NodeStatus>;

    /// How often a node publishes its status.
    fn publish_every(&self) -> Duration;

    /// How old a status may be before its node counts as gone.
    fn stale_after(&self) -> Duration;

    /// Publishes this node's status.
    ///
    /// # Errors
    /// The log cannot be written.
    async fn publish(&self, status: &NodeStatus) -> Result<()>;
}

/// A running feed of log partitions into a store node's shards: per-partition consumers of the
/// embedded log, or a consumer group's share on Kafka.
#[async_trait]
pub trait Feed: Send + Sync {
    /// The partitions this node holds, when the log assigns them (`None`: every partition of
    /// every stream).
    fn held(&self) -> Option<Vec<Held>>;

    /// Held partitions the feed stopped consuming.
    fn stalled(&self) -> Vec<Stall>;

    /// Whether this node serves queries for a partition it holds: its shard has caught up with
    /// the log as it was when the node got the partition.
    fn serving(&self, _stream: &StreamName, _partition: u32) -> bool {
        true
    }

    /// Stops after the current commit (on Kafka, leaving the group so its partitions move at
    /// once), waiting at most `limit`.
    async fn stop(&self, limit: Duration);
}
