//! Building a node from its configuration and running it until shutdown.

mod backend;
mod cluster;
mod serve;

use crate::http::{AppState, router};
use crate::service::{NodeInfo, Parts, Services};
use crate::{Config, Error, Result};
use metrics_exporter_prometheus::PrometheusHandle;
use std::sync::Arc;
use std::time::Duration;
use strata_ingest::{Ingest, IngestConfig};
use strata_proto::{IdLookup, Log, Membership};
use strata_store::Store;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The sockets a node serves its clients on, bound by the caller (so it can announce them).
pub struct Listeners {
    /// The HTTP API.
    pub http: tokio::net::TcpListener,
    /// PostgreSQL clients (`pg.listen`), unless off.
    pub pg: Option<tokio::net::TcpListener>,
    /// Arrow Flight SQL clients (`flight.listen`), unless off.
    pub flight: Option<tokio::net::TcpListener>,
}

/// How often log retention runs (for logs that have it).
const RETENTION_EVERY: Duration = Duration::from_secs(2);

/// How long in-flight requests may run after shutdown was asked for.
const DRAIN: Duration = Duration::from_secs(10);

/// How long the store's feed may take to finish its commit (and leave the group) at shutdown.
const FEED_STOP: Duration = Duration::from_secs(60);

/// Runs a node (its log, and as its role says the write path, the store with its consumers, SQL;
/// the HTTP API on `listener`) until `shutdown` is cancelled, then stops accepting requests, lets
/// in-flight ones finish (up to 10 s), stops the consumers after their current commit (on Kafka,
/// leaving the group), and flushes the store.
///
/// # Errors
/// Configuration that cannot be used, parts that cannot open, a listener that fails, or a store
/// that stopped being able to write ([`Error::Fatal`]).
pub async fn run(
    config: Config,
    listeners: Listeners,
    metrics: Option<PrometheusHandle>,
    shutdown: CancellationToken,
) -> Result<()> {
    let Listeners {
        http: listener,
        pg,
        flight,
    } = listeners;
    let dir = &config.data_dir;
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
    let _lock = lock_data_dir(dir)?;
    // Bad TLS files or tokens stop the node before it opens anything.
    let tls = match config.tls.files() {
        Some((cert, key)) => Some(serve::tls_config(cert, key)?),
        None => None,
    };
    let auth = Arc::new(crate::auth::Auth::new(&config.auth)?);
    let http = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| config.http.clone());
    let node_id = match &config.node_id {
        Some(id) => id.clone(),
        None => stable_node_id(dir)?,
    };
    let backend = backend::open_log(&config, dir, &node_id).await?;
    let log = backend.log.clone();
    let store = if config.role.stores() {
        let store = Store::open(&dir.join("store"), config.store.clone())?;
        store.follow_catalog(log.catalog());
        Some(store)
    } else {
        None
    };
    let runtime = strata_views::runtime_env(Some(config.limits.query_memory_bytes))?;
    let cluster = cluster::open(
        &config,
        &node_id,
        backend.membership.as_ref(),
        &log,
        store.as_ref(),
        runtime.clone(),
    )
    .await?;
    let sql = cluster::engine(cluster.as_ref(), store.as_ref(), &log, runtime)?;
    if let (Some(part), Some(engine), Some(_)) = (&cluster, &sql, &store) {
        // Peers ask this node to rebuild a view in its store (a cluster-wide rebuild).
        let engine = engine.clone();
        part.cluster
            .set_rebuilder(Arc::new(move |name| engine.rebuild_events(name)));
    }
    let background_stop = CancellationToken::new();
    if let Some(engine) = &sql {
        // Views load before the consumers start, so that their commits maintain them at once.
        engine.attach_views().await;
    }
    let views = sql
        .as_ref()
        .map(|engine| tokio::spawn(engine.clone().maintain_views(background_stop.clone())));
    let retention = match &store {
        Some(store) if log.has_retention() => Some(spawn_retention(
            log.clone(),
            store.clone(),
            background_stop.clone(),
        )),
        _ => None,
    };
    // A store that can no longer write (fjall poisoned, e.g. by a full disk) only recovers when it
    // is opened again: the node stops with an error so that its supervisor restarts it.
    let fatal = store.as_ref().map(|store| {
        let (mut failures, shutdown) = (store.failures(), shutdown.clone());
        tokio::spawn(async move {
            loop {
                if let Some(reason) = failures.borrow_and_update().clone() {
                    tracing::error!("stopping: {reason}; a restart recovers the store from its journal and the log");
                    shutdown.cancel();
                    return Some(reason);
                }
                if failures.changed().await.is_err() {
                    return None;
                }
            }
        })
    });
    let feed = match &store {
        Some(store) => Some((backend.start_feed)(store.clone())?),
        None => None,
    };
    if let (Some(part), Some(feed)) = (&cluster, &feed) {
        part.cluster.map().set_feed(feed.clone());
    }
    let ingest = config.role.ingests().then(|| {
        let ids = store.clone().map(|s| -> Arc<dyn IdLookup> { s });
        Arc::new(Ingest::new(
            log.clone(),
            ids,
            IngestConfig {
                default_partitions: config.default_partitions,
                preload_ids: log.preload_ids(),
            },
        ))
    });
    let services = Services::new(Parts {
        ingest,
        log,
        store: store.clone(),
        sql,
        cluster: cluster.as_ref().map(|c| c.cluster.clone()),
        limits: config.limits.clone(),
        default_partitions: config.default_partitions,
        node: NodeInfo {
            id: node_id,
            role: config.role,
            http,
            cluster: cluster.as_ref().map(|c| c.advertise.clone()),
            membership: backend.membership.clone(),
            feed: feed.clone(),
        },
    });
    // Requests running at once, over every front end.
    let in_flight = Arc::new(tokio::sync::Semaphore::new(
        config.limits.max_concurrent_requests,
    ));
    let state = Arc::new(AppState {
        services: services.clone(),
        metrics,
        auth: auth.clone(),
        in_flight: in_flight.clone(),
    });
    let pg = pg.map(|listener| {
        let front = Arc::new(crate::pg::Front::new(
            services.clone(),
            auth.clone(),
            in_flight.clone(),
        ));
        tokio::spawn(crate::pg::serve(
            listener,
            front,
            tls.clone().map(|mut tls| {
                // PostgreSQL 17's direct TLS negotiates this protocol name.
                tls.alpn_protocols = vec![b"postgresql".to_vec()];
                Arc::new(tls)
            }),
            config.pg.max_connections,
            shutdown.clone(),
        ))
    });
    let flight = match flight {
        Some(listener) => Some(crate::flight::spawn(
            listener,
            crate::flight::FlightSql::new(services.clone(), auth.clone(), in_flight.clone())?,
            config.tls.files(),
            shutdown.clone(),
        )?),
        None => None,
    };
    let peers = cluster.map(|part| {
        let stop = background_stop.clone();
        tokio::spawn(async move {
            let stopped = async move { stop.cancelled().await };
            if let Err(e) = part.cluster.serve(part.listener, stopped).await {
                tracing::error!(error = %e, "the node-to-node service failed");
            }
        })
    });
    let publisher = backend
        .membership
        .map(|m| spawn_publisher(m, services.clone(), background_stop.clone()));
    let served = match &tls {
        None => serve::serve_plain(listener, router(state.clone()), &shutdown).await,
        Some(tls) => {
            serve::serve_tls(
                listener,
                router(state.clone()),
                serve::http_tls(tls),
                &shutdown,
            )
            .await
        }
    };
    for task in [pg, flight].into_iter().flatten() {
        let _ = task.await;
    }
    background_stop.cancel();
    if let Some(views) = views {
        let _ = tokio::time::timeout(DRAIN, views).await;
    }
    for task in [publisher, retention, peers].into_iter().flatten() {
        let _ = task.await;
    }
    if let Some(feed) = feed {
        // Commits its last batch (on Kafka, and leaves the group, so its partitions move at once).
        feed.stop(FEED_STOP).await;
    }
    drop(state);
    drop(services);
    if let Some(reason) = store.as_ref().and_then(|s| s.failure()) {
        return Err(Error::Fatal(reason));
    }
    if let Some(fatal) = fatal {
        fatal.abort();
    }
    if let Some(store) = store {
        store.persist()?;
    }
    tracing::info!("stopped");
    served
}

/// Applies the log's retention every [`RETENTION_EVERY`], bounded by what the shards hold.
fn spawn_retention(
    log: Arc<dyn Log>,
    store: Arc<Store>,
    stop: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(RETENTION_EVERY) => {}
            }
            let (log, store) = (log.clone(), store.clone());
            let done = tokio::task::spawn_blocking(move || {
                log.enforce_retention(&|stream, p| store.stored_next_offset(stream, p).unwrap_or(0))
            })
            .await;
            match done {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "log retention failed"),
                Err(e) => tracing::error!(error = %e, "log retention task failed"),
            }
        }
    })
}

/// Publishes this node's status to the other nodes until `stop`; then, once more, that it holds
/// no partition and takes no node-to-node calls, so that peers stop sending it work at once
/// instead of when its status goes stale.
fn spawn_publisher(
    membership: Arc<dyn Membership>,
    services: Services,
    stop: CancellationToken,
) -> JoinHandle<()> {
    let every = membership.publish_every();
    tokio::spawn(async move {
        loop {
            let status = services.cluster.local_status().await;
            if let Err(e) = membership.publish(&status).await {
                tracing::debug!(error = %e, "cannot publish the node status");
            }
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(every) => {}
            }
        }
        let mut leaving = services.cluster.local_status().await;
        leaving.partitions.clear();
        // Without a node-to-node address no peer plans work for it (not even merge stages).
        leaving.cluster = None;
        let published =
            tokio::time::timeout(Duration::from_secs(5), membership.publish(&leaving)).await;
        if !matches!(published, Ok(Ok(()))) {
            tracing::debug!("cannot publish that this node is leaving");
        }
    })
}

fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// The node id kept in `<dir>/node-id`, made once (`HOST-RANDOM`): a node keeps its id across
/// restarts and address changes, which its consumer group membership relies on.
fn stable_node_id(dir: &std::path::Path) -> Result<String> {
    use std::hash::BuildHasher;
    let path = dir.join("node-id");
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => return Ok(id.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(format!("cannot read {}", path.display()), e)),
    }
    let random = std::collections::hash_map::RandomState::new()
        .hash_one((std::time::SystemTime::now(), std::process::id()));
    let id = format!("{}-{random:016x}", host_name());
    std::fs::write(&path, format!("{id}\n"))
        .map_err(|e| Error::io(format!("cannot write {}", path.display()), e))?;
    Ok(id)
}

/// Holds an exclusive lock on `<dir>/LOCK` so that two processes never share a data directory.
fn lock_data_dir(dir: &std::path::Path) -> Result<std::fs::File> {
    let path = dir.join("LOCK");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| Error::io(format!("cannot open {}", path.display()), e))?;
    file.try_lock().map_err(|_| {
        Error::Config(format!(
            "{} is in use by another strata process",
            dir.display()
        ))
    })?;
    Ok(file)
}
