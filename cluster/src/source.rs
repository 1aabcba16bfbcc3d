//! The shards as a cluster query sees them from one node: the streams of the log's catalog, and
//! the partitions this node holds now. A scan of a partition held elsewhere fails as retryable —
//! a cluster plan sends each scan to the holder, so that only happens when a partition moved.
//! Materialized views are read from every holder and merged (see [`crate::views`]).

use crate::map::ClusterMap;
use crate::peers::{PeerTls, Peers};
use arrow::array::RecordBatch;
use std::collections::BTreeMap;
use std::sync::Arc;
use strata_proto::{Catalog, StreamName};
use strata_store::{ScanRequest, ShardStatus, Store};
use strata_views::{Batches, Error, Result, ShardSource, ViewAfter, ViewProgress};
use tokio::sync::watch;
use url::Url;

/// This node's share of the cluster's shards, and its way to the other holders' view states.
pub struct ClusterSource {
    catalog: watch::Receiver<Catalog>,
    store: Option<Arc<Store>>,
    map: Arc<ClusterMap>,
    peers: Arc<Peers>,
    runtime: tokio::runtime::Handle,
}

impl std::fmt::Debug for ClusterSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterSource")
            .field("map", &self.map)
            .finish_non_exhaustive()
    }
}

impl ClusterSource {
    /// The shards of `store` (if this node has one) that `map` says this node holds, with the
    /// streams of `catalog`; peers are called with `secret`, over TLS with `tls`. Call inside a
    /// Tokio runtime, whose handle runs the calls to peers.
    ///
    /// # Errors
    /// A secret that cannot travel in a header.
    pub fn new(
        catalog: watch::Receiver<Catalog>,
        store: Option<Arc<Store>>,
        map: Arc<ClusterMap>,
        secret: &str,
        tls: Option<PeerTls>,
    ) -> crate::Result<Self> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|e| crate::Error::Config(format!("the cluster needs a runtime: {e}")))?;
        Ok(Self {
            catalog,
            store,
            map,
            peers: Arc::new(Peers::new(secret, tls)?),
            runtime,
        })
    }

    pub(crate) fn map(&self) -> &Arc<ClusterMap> {
        &self.map
    }

    pub(crate) fn peers(&self) -> &Arc<Peers> {
        &self.peers
    }

    pub(crate) fn runtime(&self) -> &tokio::runtime::Handle {
        &self.runtime
    }

    /// The partitions of `stream`.
    pub(crate) fn partitions(&self, stream: &StreamName) -> Result<Vec<u32>> {
        self.catalog
            .borrow()
            .get(stream)
            .map(|i| (0..i.partitions).collect())
            .ok_or_else(|| Error::Invalid(format!("unknown stream {stream}")))
    }

    /// Every partition of `stream` by the node holding it: `None` for this node, else the
    /// holder's URL.
    ///
    /// # Errors
    /// [`Error::Unavailable`] naming a partition without a live holder.
    pub(crate) fn spread(&self, stream: &StreamName) -> Result<Vec<(Option<Url>, Vec<u32>)>> {
        let holders = self
            .map
            .holders(stream.as_str(), &self.partitions(stream)?)?;
        self.located(holders)
    }

    /// [`ClusterSource::spread`] of the `partitions` that have a live holder (the rest left out).
    pub(crate) fn spread_live(
        &self,
        stream: &StreamName,
        partitions: &[u32],
    ) -> Vec<(Option<Url>, Vec<u32>)> {
        let mut holders: BTreeMap<String, Vec<u32>> = BTreeMap::new();
        for &p in partitions {
            if let Ok(h) = self.map.holders(stream.as_str(), &[p]) {
                for (node, ps) in h {
                    holders.entry(node).or_default().extend(ps);
                }
            }
        }
        self.located(holders).unwrap_or_default()
    }

    /// Node ids by the URL to reach them at (`None`: this node).
    ///
    /// # Errors
    /// [`Error::Unavailable`] for a node that is gone.
    pub(crate) fn located(
        &self,
        holders: BTreeMap<String, Vec<u32>>,
    ) -> Result<Vec<(Option<Url>, Vec<u32>)>> {
        holders
            .into_iter()
            .map(|(node, partitions)| {
                if node == self.map.local().id {
                    return Ok((None, partitions));
                }
                let url = self.map.url_of(&node).ok_or_else(|| {
                    Error::Unavailable(format!(
                        "node {node}, which holds partitions {partitions:?}, is gone; retry shortly"
                    ))
                })?;
                Ok((Some(url), partitions))
            })
            .collect()
    }

    /// The store, if it holds `partition` of `stream` now.
    pub(crate) fn holding(&self, stream: &StreamName, partition: u32) -> Result<&Arc<Store>> {
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
        let mut request = ScanRequest {
            offsets: start..u64::MAX,
            key: t.key.clone(),
            limit: Some(t.limit),
            ..ScanRequest::all()
        };
        if t.fields {
            let columns = strata_store::schema::stream_schema(&store.stream(&stream)?);
            request.projection = (0..columns.fields().len()).collect();
        }
        self.scan(&stream, t.partition, request)
    }

    pub(crate) fn store(&self, what: &str) -> Result<&Arc<Store>> {
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

    fn view_groups(
        &self,
        stream: &StreamName,
        name: &str,
        after: &ViewAfter,
    ) -> Result<Vec<Vec<u8>>> {
        self.read_view(stream, name, None, after)
    }

    fn view_get(
        &self,
        stream: &StreamName,
        name: &str,
        keys: &[Vec<u8>],
        after: &ViewAfter,
    ) -> Result<Vec<Vec<u8>>> {
        self.read_view(stream, name, Some(keys), after)
    }

    fn view_progress(&self, stream: &StreamName, name: &str) -> Result<Vec<ViewProgress>> {
        self.view_progress_all(stream, name)
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
