//! How a cluster query is spread: each stream scan runs as one task per node holding some of its
//! partitions (each task reading that node's partitions only), and each such task is sent to its
//! node. Stages without a stream scan are left to datafusion-distributed's own routing.

use crate::map::ClusterMap;
use async_trait::async_trait;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::error::{DataFusionError, Result};
use datafusion::physical_plan::ExecutionPlan;
use datafusion_distributed::{
    DesiredTaskCountEvent, DesiredTaskCountEventResponse, DesiredTaskCountHandler,
    DistributedLeafExec, NetworkBoundaryExt, RouteTasksEvent, RouteTasksEventResponse,
    RouteTasksHandler, ScaleUpLeafNodeEvent, ScaleUpLeafNodeEventResponse, ScaleUpLeafNodeHandler,
};
use std::collections::BTreeMap;
use std::sync::Arc;
use strata_views::StreamScanExec;
use url::Url;

fn unavailable(e: strata_views::Error) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

/// The nodes holding the shards of `scan`, by node id.
fn holders(map: &ClusterMap, scan: &StreamScanExec) -> Result<BTreeMap<String, Vec<u32>>> {
    let spec = scan.spec();
    map.holders(&spec.stream, &spec.shards).map_err(unavailable)
}

/// How many tasks a stream scan asks for: none spread when this node holds every shard; otherwise
/// one per holding node, and at least two, so that the scan never runs here by default.
pub(crate) struct TaskCount(pub(crate) Arc<ClusterMap>);

#[async_trait]
impl DesiredTaskCountHandler for TaskCount {
    async fn handle(
        &self,
        ev: DesiredTaskCountEvent<'_>,
    ) -> Option<Result<DesiredTaskCountEventResponse>> {
        let scan = ev.plan.downcast_ref::<StreamScanExec>()?;
        Some(holders(&self.0, scan).map(|holders| {
            let local = self.0.local().id.as_str();
            if holders.keys().all(|id| id == local) {
                DesiredTaskCountEventResponse::maximum(1)
            } else {
                DesiredTaskCountEventResponse::desired(holders.len().max(2))
            }
        }))
    }
}

/// Splits a stream scan into one share per holding node (padded with empty shares up to the task
/// count, all of the same width).
pub(crate) struct Shares(pub(crate) Arc<ClusterMap>);

impl ScaleUpLeafNodeHandler for Shares {
    fn handle(&self, ev: ScaleUpLeafNodeEvent) -> Option<Result<ScaleUpLeafNodeEventResponse>> {
        let scan = ev.plan.downcast_ref::<StreamScanExec>()?;
        Some(shares(&self.0, scan, ev.plan, ev.task_count))
    }
}

fn shares(
    map: &ClusterMap,
    scan: &StreamScanExec,
    plan: &Arc<dyn ExecutionPlan>,
    tasks: usize,
) -> Result<ScaleUpLeafNodeEventResponse> {
    let holders = holders(map, scan)?;
    if holders.len() > tasks {
        return Err(unavailable(strata_views::Error::Unavailable(format!(
            "the partitions of {} are spread over {} nodes but this query's stage can run on {tasks}; retry shortly",
            scan.spec().stream,
            holders.len()
        ))));
    }
    let width = holders.values().map(Vec::len).max().unwrap_or(0).max(1);
    let mut variants: Vec<Arc<dyn ExecutionPlan>> = Vec::with_capacity(tasks);
    for (node, shards) in holders {
        variants.push(Arc::new(scan.share(shards, width, Some(node))?));
    }
    while variants.len() < tasks {
        variants.push(Arc::new(scan.share(Vec::new(), width, None)?));
    }
    let leaf = DistributedLeafExec::try_new(Arc::clone(plan), variants)?;
    Ok(ScaleUpLeafNodeEventResponse::new(Arc::new(leaf)))
}

/// Sends each task of a stage reading streams to the node its shares name; tasks with only empty
/// shares run on this node.
pub(crate) struct Route(pub(crate) Arc<ClusterMap>);

impl RouteTasksHandler for Route {
    fn handle(&self, ev: RouteTasksEvent) -> Option<Result<RouteTasksEventResponse>> {
        let mut wanted: Vec<Option<String>> = vec![None; ev.task_count];
        let mut found = false;
        let walked = ev.plan.apply(|node| {
            if node.is_network_boundary() {
                // The stages below are routed on their own.
                return Ok(TreeNodeRecursion::Jump);
            }
            let Some(leaf) = node.downcast_ref::<DistributedLeafExec>() else {
                return Ok(TreeNodeRecursion::Continue);
            };
            if leaf.original().downcast_ref::<StreamScanExec>().is_none() {
                return Ok(TreeNodeRecursion::Continue);
            }
            found = true;
            for (task, variant) in leaf.variants().iter().enumerate() {
                let holder = variant
                    .downcast_ref::<StreamScanExec>()
                    .and_then(|s| s.spec().holder.clone());
                let (Some(holder), Some(slot)) = (holder, wanted.get_mut(task)) else {
                    continue;
                };
                match slot {
                    Some(other) if *other != holder => {
                        return Err(unavailable(strata_views::Error::Unavailable(format!(
                            "one task of this query would need partitions held by both {other} and {holder}; retry shortly"
                        ))));
                    }
                    _ => *slot = Some(holder),
                }
            }
            Ok(TreeNodeRecursion::Continue)
        });
        if let Err(e) = walked {
            return Some(Err(e));
        }
        if !found {
            return None;
        }
        Some(route(&self.0, wanted))
    }
}

fn route(map: &ClusterMap, wanted: Vec<Option<String>>) -> Result<RouteTasksEventResponse> {
    let urls: Result<Vec<Url>> = wanted
        .into_iter()
        .map(|holder| match holder {
            None => Ok(map.local().url.clone()),
            Some(id) => map.url_of(&id).ok_or_else(|| {
                unavailable(strata_views::Error::Unavailable(format!(
                    "node {id}, which holds partitions this query reads, is gone; retry shortly"
                )))
            }),
        })
        .collect();
    Ok(RouteTasksEventResponse::new(urls?))
}
