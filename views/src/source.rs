//! The seam between the query layer and the shards: [`ShardSource`]. The local store implements
//! it; a source that reads a partition from the node holding it can stand beside it.

use crate::Result;
use arrow::array::RecordBatch;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::time::{Duration, Instant};
use strata_proto::{Catalog, StreamName};
use strata_store::{ScanRequest, ShardStatus, Store, ViewStatus};
use tokio::sync::watch;

/// Record batches of one shard scan, read as they are pulled (blocking).
pub type Batches = Box<dyn Iterator<Item = Result<RecordBatch>> + Send>;

/// What a view read waits for first: per partition, the next offset the view must have applied
/// (read-your-writes with `after`), for at most `wait`. Empty: no wait.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewAfter {
    /// Per partition, the offset the view must have applied up to (exclusive).
    pub offsets: BTreeMap<u32, u64>,
    /// How long the read may wait.
    pub wait: Duration,
}

impl ViewAfter {
    /// Waits (blocking) until `applied` reaches every offset of `self` on its partition.
    ///
    /// # Errors
    /// [`crate::Error::Timeout`] naming the view and partition that is behind; `applied`'s error.
    pub fn wait_for(&self, view: &str, applied: impl Fn(u32) -> Result<u64>) -> Result<()> {
        let deadline = Instant::now() + self.wait;
        let mut poll = Duration::from_millis(1);
        for (&partition, &offset) in &self.offsets {
            loop {
                let at = applied(partition)?;
                if at >= offset {
                    break;
                }
                if Instant::now() + poll > deadline {
                    return Err(crate::Error::Timeout(format!(
                        "waited {} ms for `after`: view {view} has applied partition {partition} up to offset {at}, not yet {offset} (see SHOW VIEWS)",
                        self.wait.as_millis()
                    )));
                }
                std::thread::sleep(poll);
                poll = (poll * 2).min(Duration::from_millis(50));
            }
        }
        Ok(())
    }
}

/// A view's progress on one partition, as the node holding the partition reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewProgress {
    /// The partition.
    pub partition: u32,
    /// The next offset the view has applied.
    pub applied: u64,
    /// The next offset the shard has stored.
    pub stored: u64,
    /// The node holding the partition (`None` on a single node, or when no live node holds it).
    pub node: Option<String>,
    /// Whether the view is set up and maintained there.
    pub maintained: bool,
    /// Why the view is not maintained there, if it is not.
    pub error: Option<String>,
    /// Whether a rebuild of the view runs there.
    pub rebuilding: bool,
}

impl ViewProgress {
    /// A partition on which the view is not maintained (yet): not set up on its holder `node`,
    /// or without a live holder.
    pub fn missing(partition: u32, node: Option<String>) -> Self {
        Self {
            partition,
            applied: 0,
            stored: 0,
            node,
            maintained: false,
            error: None,
            rebuilding: false,
        }
    }

    /// The progress of `status` on the partitions `keep` selects, held by `node`.
    pub fn of(status: &ViewStatus, node: Option<&str>, keep: impl Fn(u32) -> bool) -> Vec<Self> {
        status
            .partitions
            .iter()
            .filter(|p| keep(p.partition))
            .map(|p| Self {
                partition: p.partition,
                applied: p.applied,
                stored: p.stored,
                node: node.map(str::to_owned),
                maintained: true,
                error: status.error.clone(),
                rebuilding: status.rebuilding,
            })
            .collect()
    }
}

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

    /// The encoded states of every group of view `name` (over `stream`), once the view has
    /// applied `after`: one per partition holding rows of the group, for the reader to merge.
    ///
    /// # Errors
    /// An unknown view; storage failures; a partition whose holder cannot answer; a timeout
    /// waiting for `after`.
    fn view_groups(
        &self,
        stream: &StreamName,
        name: &str,
        after: &ViewAfter,
    ) -> Result<Vec<Vec<u8>>>;

    /// The encoded states of the groups of view `name` (over `stream`) with the given encoded
    /// keys, once the view has applied `after`; one point read per partition (absent groups are
    /// left out).
    ///
    /// # Errors
    /// As [`ShardSource::view_groups`].
    fn view_get(
        &self,
        stream: &StreamName,
        name: &str,
        keys: &[Vec<u8>],
        after: &ViewAfter,
    ) -> Result<Vec<Vec<u8>>>;

    /// View `name`'s progress on each partition of `stream`, as the node holding it reports.
    ///
    /// # Errors
    /// An unknown view or stream.
    fn view_progress(&self, stream: &StreamName, name: &str) -> Result<Vec<ViewProgress>>;

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

    fn view_groups(
        &self,
        _stream: &StreamName,
        name: &str,
        after: &ViewAfter,
    ) -> Result<Vec<Vec<u8>>> {
        after.wait_for(name, |p| Ok(self.views().applied(name, p)?))?;
        Ok(self.views().groups(name, None)?)
    }

    fn view_get(
        &self,
        _stream: &StreamName,
        name: &str,
        keys: &[Vec<u8>],
        after: &ViewAfter,
    ) -> Result<Vec<Vec<u8>>> {
        after.wait_for(name, |p| Ok(self.views().applied(name, p)?))?;
        Ok(self.views().get(name, keys, None)?)
    }

    fn view_progress(&self, _stream: &StreamName, name: &str) -> Result<Vec<ViewProgress>> {
        let status = Store::view_progress(self, name)?;
        Ok(ViewProgress::of(&status, None, |_| true))
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
