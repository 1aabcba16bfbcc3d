//! What a node reports about itself for `GET /v1/cluster`.

use serde::{Deserialize, Serialize};

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
    /// When it published this, milliseconds since the Unix epoch.
    pub updated_ms: i64,
    /// The partitions it holds (store nodes), ascending.
    pub partitions: Vec<HeldPartition>,
}
