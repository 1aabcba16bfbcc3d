//! strata store nodes: consume log partitions into fjall shards and read them back.
//!
//! Each partition of each stream is one shard, a set of fjall keyspaces; those written once per
//! block by bulk ingestion (`blocks`, `ids`, `keys`, `kver`) are in a second database (see `bulk.rs`):
//!
//! | keyspace | key | value |
//! |---|---|---|
//! | `meta` (shared) | `<stream>/<partition>` | next offset, rows stored, rows in the tail, tail start |
//! | `<shard>.tail` | first offset (u64 BE) | one commit's events: metadata, then their stored columns as Arrow IPC |
//! | `<shard>.blocks` | first offset (u64 BE), column (u16 BE) | one column of [`StoreConfig::block_rows`] events, as Arrow IPC |
//! | `<shard>.bmeta` | first offset (u64 BE) | offset range, time range and row count of the block |
//! | `<shard>.ids` | event id (of events in blocks) | offset |
//! | `<shard>.keys` | key length (u16 BE), key, offset (u64 BE) (of events in blocks) | — |
//! | `<shard>.kver` | key length (u16 BE), key (of events in blocks) | the key's version at its last event in a block, the offset after that block (u64 BE each) |
//! | `<shard>.decisions` | first offset of a conditional batch (u64 BE) | the decision (JSON) |
//! | `view.<name>.<generation>` | a view's encoded group key | the group's encoded state |
//!
//! A commit writes a batch of events as one tail chunk and the shard's next offset in one fjall
//! write batch, so a restart resumes exactly where the shard left off; the ids and keys of tail
//! rows are indexed in memory (rebuilt from the tail on open). Once the tail holds a block's worth
//! of rows, a background thread bulk-writes their columns and `ids` and `keys` entries as sorted
//! tables, and one more batch turns them into a columnar block (delta plus main, as column stores
//! do) while commits go on (see `blocks.rs`). Scans read blocks and tail chunks,
//! skipping those outside offset and time filters; the query layer sees only [`Store::scan`] and
//! Arrow record batches.

mod block;
mod blocks;
mod bulk;
mod consumer;
mod cpu;
mod error;
mod index;
mod key_versions;
mod keys;
pub mod ndjson;
mod scan;
pub mod schema;
mod shard;
mod store;
mod versions;
mod views;

pub use consumer::{Consumers, run_consumers};
pub use error::{Error, Result};
pub use scan::{ScanRequest, ShardScan};
pub use shard::ShardStatus;
pub use store::{Store, StoreConfig};
pub use views::{ReadGroup, ViewDef, ViewFold, ViewPartition, ViewSet, ViewStatus};

#[cfg(test)]
mod tests;
#[cfg(test)]
mod versions_tests;
