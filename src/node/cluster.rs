//! A node's part in cluster-wide SQL (Kafka with `cluster.listen`): its node-to-node listener,
//! the map of who holds what, and the SQL engine whose queries span the cluster. With `tls.cert`
//! and `tls.key`, node-to-node calls use TLS with that certificate, which peers trust.

use crate::{Config, Error, Result};
use std::sync::Arc;
use strata_cluster::{Cluster, ClusterMap, ClusterSource, LocalNode, PeerTls, node_url};
use strata_proto::{Log, Membership};
use strata_store::Store;
use strata_views::{EngineParts, SqlEngine};
use tokio::net::TcpListener;

/// The cluster part of a node, before it serves.
pub(super) struct ClusterPart {
    /// The planner hooks and the worker.
    pub(super) cluster: Cluster,
    /// The node-to-node listener.
    pub(super) listener: TcpListener,
    /// The address other nodes use (published in the node status).
    pub(super) advertise: String,
    /// The shards as cluster queries read them here.
    pub(super) source: Arc<ClusterSource>,
}

/// Binds the node-to-node listener, if `cluster.listen` is set on a log with membership.
///
/// # Errors
/// An address that cannot be bound or advertised.
pub(super) async fn open(
    config: &Config,
    node_id: &str,
    membership: Option<&Arc<dyn Membership>>,
    log: &Arc<dyn Log>,
    store: Option<&Arc<Store>>,
    runtime: Arc<datafusion::execution::runtime_env::RuntimeEnv>,
) -> Result<Option<ClusterPart>> {
    let (Some(listen), Some(membership)) = (&config.cluster.listen, membership) else {
        return Ok(None);
    };
    let secret = config.cluster.secret.as_deref().unwrap_or_default();
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| Error::io(format!("cannot listen on {listen} (cluster.listen)"), e))?;
    let bound = listener
        .local_addr()
        .map_err(|e| Error::io("cluster listener", e))?;
    let advertise = match &config.cluster.advertise {
        Some(a) => a.clone(),
        None if bound.ip().is_unspecified() => format!("{}:{}", super::host_name(), bound.port()),
        None => bound.to_string(),
    };
    let map = Arc::new(ClusterMap::new(
        LocalNode {
            id: node_id.to_owned(),
            url: node_url(&advertise)?,
        },
        membership.clone(),
    ));
    let tls = match config.tls.files() {
        Some((cert, key)) => Some(PeerTls {
            cert: std::fs::read(cert)
                .map_err(|e| Error::io(format!("cannot read {}", cert.display()), e))?,
            key: std::fs::read(key)
                .map_err(|e| Error::io(format!("cannot read {}", key.display()), e))?,
        }),
        None => None,
    };
    let over_tls = tls.is_some();
    let source = Arc::new(ClusterSource::new(
        log.catalog(),
        store.cloned(),
        map.clone(),
        secret,
        tls,
    )?);
    let cluster = Cluster::new(map, source.clone(), runtime)?;
    tracing::info!(%bound, %advertise, tls = over_tls, "taking node-to-node calls for cluster queries");
    Ok(Some(ClusterPart {
        cluster,
        listener,
        advertise,
        source,
    }))
}

/// The SQL engine of a node: over the cluster when it takes part in one, over its own store
/// otherwise, none on a node without either.
///
/// # Errors
/// DataFusion refusing the configuration.
pub(super) fn engine(
    cluster: Option<&ClusterPart>,
    store: Option<&Arc<Store>>,
    log: &Arc<dyn Log>,
    runtime: Arc<datafusion::execution::runtime_env::RuntimeEnv>,
) -> Result<Option<Arc<SqlEngine>>> {
    let parts = match (cluster, store) {
        (Some(part), _) => EngineParts {
            store: store.cloned(),
            tables: part.source.clone(),
            log: Some(log.clone()),
            runtime,
            distribute: Some(part.cluster.hook()),
            explain: Some(part.cluster.explain()),
        },
        (None, Some(store)) => EngineParts {
            store: Some(store.clone()),
            tables: store.clone(),
            log: Some(log.clone()),
            runtime,
            distribute: None,
            explain: None,
        },
        (None, None) => return Ok(None),
    };
    Ok(Some(Arc::new(SqlEngine::open(parts)?)))
}
