//! The shards as a cluster query sees them from one node: the streams of the log's catalog, and
//! the partitions this node holds now. A scan of a partition held elsewhere fails as retryable —
//! a cluster plan sends each scan to the holder, so that only happens when a partition moved.

use crate::map::ClusterMap;
use arrow::array::RecordBatch;
use std::sync::Arc;
use strata_proto::{Catalog, StreamName};
use strata_store::{ScanRequest, ShardStatus, Store};
use strata_views::{Batches, Error, Result, ShardSource};
use tokio::sync::watch;

/// This node's share of the cluster's shards.
#[derive(Debug)]
pub struct ClusterSource {
    catalog: watch::Receiver<Catalog>,
    store: Option<Arc<Store>>,
    map: Arc<ClusterMap>,
}

impl ClusterSource {
    /// The shards of `store` (if this node has one) that `map` says this node holds, with the
    /// streams of `catalog`.
    pub fn new(
        catalog: watch::Receiver<Catalog>,
        store: Option<Arc<Store>>,
        map: Arc<ClusterMap>,
    ) -> Self {
        Self {
            catalog,
            store,
            map,
        }
    }

    /// The store, if it holds `partition` of `stream` now.
    fn holding(&self, stream: &StreamName, partition: u32) -> Result<&Arc<Store>> {
        match &self.store {
            Some(store) if self.map.holds_locally(stream, partition) => Ok(store),
            _ => Err(Error::Unavailable(format!(
                "partition {partition} of {stream} is not held by node {} (it moved); retry shortly",
                self.map.local().id
            ))),
        }
    }

    /// The events a replay of one partition held here reads (see [`ReplayTicket`]).
    pub(crate) fn replay(&self, t: &crate::ReplayTicket) -> Result<Batches> {
        let stream = StreamName::new(&t.stream).map_err(|e| Error::Invalid(e.to_string()))?;
        let store = self.holding(&stream, t.partition)?;
        let mut start = t.from;
        if let Some(time) = t.from_time {
            start = start.max(store.offset_for_time(&stream, t.partition, time)?);
        }
        let request = ScanRequest {
            offsets: start..u64::MAX,
            key: t.key.clone(),
            limit: Some(t.limit),
            ..ScanRequest::all()
        };
        self.scan(&stream, t.partition, request)
    }

    fn store(&self, what: &str) -> Result<&Arc<Store>> {
        self.store
            .as_ref()
            .ok_or_else(|| Error::WrongRole(format!("this node keeps no shards, so no {what}")))
    }
}

impl ShardSource for ClusterSource {
    fn catalog(&self) -> Catalog {
        self.catalog.borrow().clone()
    }

    fn scan(&self, stream: &StreamName, partition: u32, request: ScanRequest) -> Result<Batches> {
        let scan = self
            .holding(stream, partition)?
            .scan(stream, partition, request)?;
        Ok(Box::new(scan.map(
            |b: strata_store::Result<RecordBatch>| b.map_err(Error::from),
        )))
    }

    /// Only when this node holds every partition of the stream: the row counts of a cluster-wide
    /// table are otherwise not known here (and must not be taken as exact).
    fn status(&self, stream: &StreamName) -> Result<Vec<ShardStatus>> {
        let partitions = self
            .catalog
            .borrow()
            .get(stream)
            .map(|i| i.partitions)
            .ok_or_else(|| Error::Invalid(format!("unknown stream {stream}")))?;
        for p in 0..partitions {
            self.holding(stream, p)?;
        }
        Ok(self.store("row counts")?.status(stream)?)
    }

    fn view_groups(&self, name: &str) -> Result<Vec<Vec<u8>>> {
        self.store("materialized views")?.view_groups(name)
    }

    fn view_get(&self, name: &str, keys: &[Vec<u8>]) -> Result<Vec<Vec<u8>>> {
        self.store("materialized views")?.view_get(name, keys)
    }

    fn progress(&self, stream: &StreamName, partition: u32) -> Result<watch::Receiver<u64>> {
        ShardSource::progress(self.holding(stream, partition)?.as_ref(), stream, partition)
    }

    fn views_behind(
        &self,
        stream: &StreamName,
        partition: u32,
        offset: u64,
    ) -> Option<(String, u64)> {
        self.store.as_ref()?.views_behind(stream, partition, offset)
    }
}
