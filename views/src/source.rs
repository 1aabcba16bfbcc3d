//! The seam between the query layer and the shards: [`ShardSource`]. The local store implements
//! it; a source that reads a partition from the node holding it can stand beside it.

use crate::Result;
use arrow::array::RecordBatch;
use std::fmt::Debug;
use std::time::Duration;
use strata_proto::{Catalog, StreamName};
use strata_store::{ScanRequest, ShardStatus, Store};
use tokio::sync::watch;

/// Record batches of one shard scan, read as they are pulled (blocking).
pub type Batches = Box<dyn Iterator<Item = Result<RecordBatch>> + Send>;

/// What the query layer reads from shards: the streams, scans of a partition, how far each
/// partition is stored, a materialized view's stored groups, and a watch on a partition's progress.
/// Reads may block; callers run them on blocking threads.
pub trait ShardSource: Send + Sync + Debug {
    /// Every stream known.
    fn catalog(&self) -> Catalog;

    /// Scans one partition of `stream`.
    ///
    /// # Errors
    /// An unknown stream or partition; storage failures.
    fn scan(&self, stream: &StreamName, partition: u32, request: ScanRequest) -> Result<Batches>;

    /// The stored offset and row counts of every partition of `stream`.
    ///
    /// # Errors
    /// An unknown stream.
    fn status(&self, stream: &StreamName) -> Result<Vec<ShardStatus>>;

    /// The encoded state of every group of view `name`.
    ///
    /// # Errors
    /// An unknown view; storage failures.
    fn view_groups(&self, name: &str) -> Result<Vec<Vec<u8>>>;

    /// The encoded state of the groups of view `name` with the given encoded keys (absent groups
    /// are left out).
    ///
    /// # Errors
    /// An unknown view; storage failures.
    fn view_get(&self, name: &str, keys: &[Vec<u8>]) -> Result<Vec<Vec<u8>>>;

    /// A watch on the next offset partition `partition` of `stream` has stored.
    ///
    /// # Errors
    /// An unknown stream or partition.
    fn progress(&self, stream: &StreamName, partition: u32) -> Result<watch::Receiver<u64>>;

    /// A view of `stream` that has not applied `partition` up to `offset`, with how far it has.
    fn views_behind(
        &self,
        stream: &StreamName,
        partition: u32,
        offset: u64,
    ) -> Option<(String, u64)>;
}

impl ShardSource for Store {
    fn catalog(&self) -> Catalog {
        Store::catalog(self)
    }

    fn scan(&self, stream: &StreamName, partition: u32, request: ScanRequest) -> Result<Batches> {
        let scan = Store::scan(self, stream, partition, request)?;
        Ok(Box::new(scan.map(|b| b.map_err(crate::Error::from))))
    }

    fn status(&self, stream: &StreamName) -> Result<Vec<ShardStatus>> {
        Ok(Store::status(self, stream)?)
    }

    fn view_groups(&self, name: &str) -> Result<Vec<Vec<u8>>> {
        Ok(self
            .views()
            .groups(name)?
            .into_iter()
            .map(|(_, v)| v)
            .collect())
    }

    fn view_get(&self, name: &str, keys: &[Vec<u8>]) -> Result<Vec<Vec<u8>>> {
        Ok(self.views().get(name, keys)?)
    }

    fn progress(&self, stream: &StreamName, partition: u32) -> Result<watch::Receiver<u64>> {
        Ok(Store::subscribe(self, stream, partition)?)
    }

    fn views_behind(
        &self,
        stream: &StreamName,
        partition: u32,
        offset: u64,
    ) -> Option<(String, u64)> {
        self.views().behind(stream, partition, offset)
    }
}

/// Waits until `source` has stored partition `partition` of `stream` up to `offset` (exclusive),
/// for at most `wait`.
///
/// # Errors
/// [`crate::Error::Timeout`] naming the partition and how far it is stored; an unknown stream or
/// partition.
pub async fn wait_stored(
    source: &dyn ShardSource,
    stream: &StreamName,
    partition: u32,
    offset: u64,
    wait: Duration,
) -> Result<()> {
    let mut progress = source.progress(stream, partition)?;
    let reached = tokio::time::timeout(wait, progress.wait_for(|n| *n >= offset))
        .await
        .is_ok_and(|r| r.is_ok());
    if reached {
        return Ok(());
    }
    let applied = *progress.borrow();
    Err(crate::Error::Timeout(format!(
        "waited {} ms for `after`: partition {partition} of {stream} is applied up to offset {applied}, not yet {offset} (is this node holding that partition? see /v1/cluster)",
        wait.as_millis()
    )))
}
