//! The cluster: this node's status (the partitions it holds, their stored offsets and lag) and
//! the map of which live node holds which partition.

use super::{Parts, Result};
use crate::auth::{Operation, Principal};
use serde::Serialize;
use std::sync::Arc;
use strata_proto::{Held, HeldPartition, NodeStatus};

/// A node as the cluster listing shows it.
#[derive(Clone, Debug, Serialize)]
pub struct ClusterNode {
    /// Its last published status (this node's is current).
    #[serde(flatten)]
    pub status: NodeStatus,
    /// Whether the node published its status recently.
    pub alive: bool,
}

/// A partition and the live node holding it.
#[derive(Clone, Debug, Serialize)]
pub struct ClusterPartition {
    /// The stream.
    pub stream: String,
    /// The partition.
    pub partition: u32,
    /// The node holding it.
    pub node: String,
    /// How far that node's store has applied it.
    pub stored_offset: u64,
    /// The log's end, where known.
    pub log_end_offset: Option<u64>,
    /// Offsets not yet stored, where known.
    pub lag: Option<u64>,
}

/// The nodes, and per partition the live node that holds it.
#[derive(Clone, Debug, Serialize)]
pub struct ClusterView {
    /// Every node known.
    pub nodes: Vec<ClusterNode>,
    /// Partitions held by live nodes, by stream and partition.
    pub partitions: Vec<ClusterPartition>,
}

/// This node's status and the cluster map.
#[derive(Clone)]
pub struct ClusterService {
    parts: Arc<Parts>,
}

impl ClusterService {
    pub(super) fn new(parts: Arc<Parts>) -> Self {
        Self { parts }
    }

    /// This node's status: the partitions it holds with their stored offsets and lag.
    pub async fn local_status(&self) -> NodeStatus {
        let parts = &self.parts;
        let mut partitions = Vec::new();
        if let Some(store) = &parts.store {
            let held: Vec<Held> = match parts.node.feed.as_ref().and_then(|f| f.held()) {
                Some(held) => held,
                None => {
                    let catalog = parts.log.catalog().borrow().clone();
                    let mut held = Vec::new();
                    for info in catalog.values() {
                        for p in 0..info.partitions {
                            let end = parts.log.end_offset(&info.name, p).await.ok();
                            held.push((info.name.clone(), p, end));
                        }
                    }
                    held
                }
            };
            for (stream, partition, end) in held {
                let stored_offset = store.next_offset(&stream, partition).unwrap_or(0);
                partitions.push(HeldPartition {
                    stream: stream.to_string(),
                    partition,
                    stored_offset,
                    log_end_offset: end,
                    lag: end.map(|e| e.saturating_sub(stored_offset)),
                    serving: parts
                        .node
                        .feed
                        .as_ref()
                        .is_none_or(|f| f.serving(&stream, partition)),
                });
            }
        }
        NodeStatus {
            node: parts.node.id.clone(),
            role: parts.node.role.name().to_owned(),
            http: parts.node.http.clone(),
            cluster: parts.node.cluster.clone(),
            updated_ms: chrono::Utc::now().timestamp_millis(),
            partitions,
        }
    }

    /// The nodes (as each last published itself; this node's status is current) and, per
    /// partition, the live node that holds it; only the streams `who` may use.
    ///
    /// # Errors
    /// Forbidden without `read`.
    pub async fn view(&self, who: &Principal) -> Result<ClusterView> {
        who.authorize(Operation::Browse)?;
        let membership = self.parts.node.membership.as_ref();
        let local = self.local_status().await;
        let mut nodes = membership.map(|m| m.peers()).unwrap_or_default();
        let stale_after = membership.map_or(0, |m| m.stale_after().as_millis() as i64);
        nodes.insert(local.node.clone(), local);
        let now = chrono::Utc::now().timestamp_millis();
        let mut list = Vec::with_capacity(nodes.len());
        let mut partitions = Vec::new();
        for mut status in nodes.into_values() {
            status.partitions.retain(|p| who.may_use(&p.stream));
            let alive = now - status.updated_ms <= stale_after;
            if alive {
                for p in &status.partitions {
                    partitions.push(ClusterPartition {
                        stream: p.stream.clone(),
                        partition: p.partition,
                        node: status.node.clone(),
                        stored_offset: p.stored_offset,
                        log_end_offset: p.log_end_offset,
                        lag: p.lag,
                    });
                }
            }
            list.push(ClusterNode { status, alive });
        }
        partitions.sort_by(|a, b| (&a.stream, a.partition).cmp(&(&b.stream, b.partition)));
        Ok(ClusterView {
            nodes: list,
            partitions,
        })
    }
}
