//! What `SHOW VIEWS` and `GET /v1/views` list: each view once, with its rows, and per partition
//! the offset applied, the lag behind the log and (in a cluster) the node holding it.

use crate::source::{ViewAfter, ViewProgress};
use crate::{Error, Result, SqlEngine};
use serde::Serialize;
use strata_proto::StreamName;

/// A view's progress on one partition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ViewPartitionLag {
    /// The partition.
    pub partition: u32,
    /// The next offset the view has applied.
    pub applied: u64,
    /// The next offset the shard has stored.
    pub stored: u64,
    /// The log's end offset (what has been appended).
    pub log_end: u64,
    /// Offsets appended and not yet in the view.
    pub lag: u64,
    /// The node holding the partition (in a cluster).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// One view, as `SHOW VIEWS` and `GET /v1/views` list it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ViewListing {
    /// The view's name.
    pub name: String,
    /// The stream it aggregates.
    pub stream: String,
    /// Its `SELECT`.
    pub definition: String,
    /// Groups (rows) it holds.
    pub rows: u64,
    /// Offsets appended to the stream and not yet in the view, over all partitions.
    pub lag: u64,
    /// `ready`, `catching up`, `rebuilding`, `not loaded: …` or `failed: …`.
    pub status: String,
    /// Progress per partition.
    pub partitions: Vec<ViewPartitionLag>,
}

impl SqlEngine {
    /// Every view's name, stream and `SELECT`: the shared catalog's, or this store's.
    pub(crate) fn view_definitions(&self) -> Vec<(String, StreamName, String)> {
        match self.shared_views() {
            Some(catalog) => catalog
                .borrow()
                .values()
                .map(|d| (d.name.clone(), d.stream.clone(), d.query.clone()))
                .collect(),
            None => match self.local_store() {
                Some(own) => own
                    .views()
                    .defs()
                    .into_iter()
                    .map(|d| (d.name, d.stream, d.query))
                    .collect(),
                None => Vec::new(),
            },
        }
    }

    /// Every view with its size, progress and lag behind the log: the shared catalog's views
    /// (each partition as its holder reports it), or this store's.
    pub async fn view_listing(&self) -> Result<Vec<ViewListing>> {
        let defs = self.view_definitions();
        let mut out = Vec::new();
        for (name, stream, query) in defs {
            let (tables, s, n) = (self.tables.clone(), stream.clone(), name.clone());
            let (store, plan) = (self.local_store().cloned(), self.views.get(&name));
            let read = tokio::task::spawn_blocking(move || {
                let progress = tables.view_progress(&s, &n)?;
                // Distinct groups: counted in this node's store when it holds every partition
                // (keys only), otherwise by reading the view from the holders.
                let rows = match (store, plan) {
                    (Some(store), _) if progress.iter().all(|p| p.node.is_none()) => {
                        store.view_status(&n)?.rows
                    }
                    (_, Some(plan)) => match tables.view_groups(&s, &n, &ViewAfter::default()) {
                        Ok(groups) => plan.count_groups(groups.iter().map(Vec::as_slice))?,
                        Err(_) => 0,
                    },
                    _ => 0,
                };
                Ok::<_, Error>((progress, rows))
            })
            .await
            .map_err(|e| Error::Execution(format!("view task failed: {e}")))?;
            let (progress, rows) = match read {
                Ok(read) => read,
                Err(Error::Store(strata_store::Error::UnknownView(_))) => continue,
                Err(e) => return Err(e),
            };
            out.push(self.listing(name, &stream, query, rows, progress).await);
        }
        Ok(out)
    }

    async fn listing(
        &self,
        name: String,
        stream: &StreamName,
        definition: String,
        rows: u64,
        progress: Vec<ViewProgress>,
    ) -> ViewListing {
        let mut partitions = Vec::new();
        for p in &progress {
            let log_end = match &self.log {
                Some(log) => log
                    .end_offset(stream, p.partition)
                    .await
                    .unwrap_or(p.stored),
                None => p.stored,
            }
            .max(p.stored);
            partitions.push(ViewPartitionLag {
                partition: p.partition,
                applied: p.applied,
                stored: p.stored,
                log_end,
                lag: log_end.saturating_sub(p.applied),
                node: p.node.clone(),
            });
        }
        let behind = partitions.iter().any(|p| p.applied < p.stored);
        let status = if let Some(e) = progress.iter().find_map(|p| p.error.as_ref()) {
            format!("failed: {e}")
        } else if let Some(why) = self.unloaded.lock().get(&name) {
            format!("not loaded: {why}")
        } else if let Some(p) = progress.iter().find(|p| !p.maintained) {
            match &p.node {
                Some(node) => format!("starting on node {node}"),
                None => format!("unavailable: partition {} has no live holder", p.partition),
            }
        } else if progress.iter().any(|p| p.rebuilding) {
            "rebuilding".to_owned()
        } else if behind {
            "catching up".to_owned()
        } else {
            "ready".to_owned()
        };
        ViewListing {
            name,
            stream: stream.to_string(),
            definition,
            rows,
            lag: partitions.iter().map(|p| p.lag).sum(),
            status,
            partitions,
        }
    }
}
