//! The front-end-neutral service layer: what strata does for a caller, whatever protocol asked.
//!
//! Every front end (the HTTP API today; PostgreSQL wire, Flight SQL, node-to-node calls and
//! subscriptions next) is a thin adapter: it authenticates the caller into a
//! [`Principal`](crate::auth::Principal), turns its request into a call of one of these services,
//! and maps the one [`Error`] type to its own status by [`Error::kind`]. The services check every
//! [`Operation`](crate::auth::Operation) they carry out, so every front end gets the same rules.
//!
//! | service | what it does |
//! |---|---|
//! | [`StreamService`] | lists, describes and creates streams |
//! | [`AppendService`] | decodes, validates and appends events (answers once durable) |
//! | [`QueryService`] | SQL: `after` tokens, the time limit, grants checked on the plan |
//! | [`ReplayService`] | replays stored events from the shards or straight from the log |
//! | [`SubscribeService`] | follows a stream live from the shards, with resumable cursors |
//! | [`DurableService`] | named durable subscriptions: acknowledged cursors, one consumer |
//! | [`ViewChangesService`] | a materialized view's rows as they change |
//! | [`ViewService`] | lists materialized views and rebuilds them with progress |
//! | [`ClusterService`] | this node's status and the cluster's partition map |

mod append;
mod cluster;
mod conditional;
mod durable;
mod error;
mod query;
mod replay;
mod streams;
mod subscribe;
mod view_changes;
mod views;

pub use append::{AppendService, BodyFormat, WriteTarget};
pub use cluster::{ClusterNode, ClusterPartition, ClusterService, ClusterView};
pub use durable::{ConsumerView, CreateSubscription, DurableService, LEASE, SubscriptionView};
pub use error::{Error, Kind, Result};
pub use query::{QueryRequest, QueryResult, QueryService, wait_applied};
pub use replay::{Chunks, ReplayRequest, ReplayService, Source};
pub use streams::{CreateStream, CreatedStream, PartitionOffsets, StreamService, StreamView};
pub use subscribe::{
    CLUSTER_POLL, Cursor, Deliveries, Delivery, FollowRequest, MAX_HEARTBEAT, READ_ROWS, Start,
    SubscribeService,
};
pub use view_changes::{MAX_VIEW_ROWS, ViewChangesService, ViewDeliveries, ViewDelivery};
pub use views::{RebuildEvent, ViewService};

use crate::config::{Limits, Role};
use std::sync::Arc;
use strata_ingest::Ingest;
use strata_proto::{Feed, Log, Membership};
use strata_store::Store;
use strata_views::SqlEngine;

/// Who this node is, for the cluster listing.
pub struct NodeInfo {
    /// The node's id.
    pub id: String,
    /// What it does.
    pub role: Role,
    /// Its HTTP address.
    pub http: String,
    /// Its node-to-node address, when it takes part in cluster queries.
    pub cluster: Option<String>,
    /// The other nodes, on a log that spans machines.
    pub membership: Option<Arc<dyn Membership>>,
    /// How the partitions this node holds reach its store (store nodes).
    pub feed: Option<Arc<dyn Feed>>,
}

/// The parts of a node the services work with.
pub struct Parts {
    /// The write path (`None` on store-only nodes).
    pub ingest: Option<Arc<Ingest>>,
    /// The log (for the catalog and end offsets).
    pub log: Arc<dyn Log>,
    /// The store (`None` on ingest-only nodes).
    pub store: Option<Arc<Store>>,
    /// The SQL engine (with the store).
    pub sql: Option<Arc<SqlEngine>>,
    /// This node's part in cluster-wide queries and replays (Kafka with `cluster.listen`).
    pub cluster: Option<strata_cluster::Cluster>,
    /// Request limits.
    pub limits: Limits,
    /// Partition count of streams created without one.
    pub default_partitions: u32,
    /// This node.
    pub node: NodeInfo,
}

impl Parts {
    fn ingest(&self) -> Result<&Arc<Ingest>> {
        self.ingest.as_ref().ok_or_else(|| {
            Error::WrongRole(format!(
                "this node has role {}; send appends to an ingest node",
                self.node.role.name()
            ))
        })
    }

    fn store(&self) -> Result<&Arc<Store>> {
        self.store.as_ref().ok_or_else(|| {
            Error::WrongRole(format!(
                "this node has role {} and keeps no shards; ask a store node (or replay with source=log)",
                self.node.role.name()
            ))
        })
    }

    fn sql(&self) -> Result<&Arc<SqlEngine>> {
        self.sql.as_ref().ok_or_else(|| {
            Error::WrongRole(format!(
                "this node has role {} and answers no SQL; ask a store node",
                self.node.role.name()
            ))
        })
    }

    /// The catalog entry of `name`, or [`strata_proto::Error::UnknownStream`].
    fn stream_info(&self, name: &strata_proto::StreamName) -> Result<strata_proto::StreamInfo> {
        Ok(self
            .log
            .catalog()
            .borrow()
            .get(name)
            .cloned()
            .ok_or_else(|| strata_proto::Error::UnknownStream(name.to_string()))?)
    }
}

/// Every service of a node, over the same parts.
#[derive(Clone)]
pub struct Services {
    /// Streams: list, describe, create.
    pub streams: StreamService,
    /// Appends.
    pub append: AppendService,
    /// SQL.
    pub query: QueryService,
    /// Replay.
    pub replay: ReplayService,
    /// Subscriptions.
    pub subscribe: SubscribeService,
    /// Named durable subscriptions.
    pub durable: DurableService,
    /// Materialized views' changes, followed.
    pub view_changes: ViewChangesService,
    /// Materialized views.
    pub views: ViewService,
    /// The cluster map.
    pub cluster: ClusterService,
    parts: Arc<Parts>,
}

impl Services {
    /// The services of a node made of `parts`.
    pub fn new(parts: Parts) -> Self {
        let parts = Arc::new(parts);
        let (query, subscribe) = (
            QueryService::new(parts.clone()),
            SubscribeService::new(parts.clone()),
        );
        Self {
            streams: StreamService::new(parts.clone()),
            append: AppendService::new(parts.clone()),
            durable: DurableService::new(parts.clone(), subscribe.clone()),
            view_changes: ViewChangesService::new(parts.clone(), query.clone()),
            query,
            replay: ReplayService::new(parts.clone()),
            subscribe,
            views: ViewService::new(parts.clone()),
            cluster: ClusterService::new(parts.clone()),
            parts,
        }
    }

    /// Why the node can no longer work (its store refuses writes), or `None` while it works.
    pub fn failure(&self) -> Option<String> {
        self.parts.store.as_ref().and_then(|s| s.failure())
    }

    /// The request limits the node was configured with.
    pub fn limits(&self) -> &Limits {
        &self.parts.limits
    }
}

/// Parses a stream name from a request.
fn stream_name(name: &str) -> Result<strata_proto::StreamName> {
    Ok(strata_proto::StreamName::new(name)?)
}

#[cfg(test)]
mod tests;
