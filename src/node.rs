//! Building a node from its configuration and running it until shutdown.

use crate::api::{AppState, NodeInfo, router};
use crate::config::LogBackend;
use crate::{Config, Error, Result};
use axum::serve::ListenerExt;
use metrics_exporter_prometheus::PrometheusHandle;
use std::sync::Arc;
use std::time::Duration;
use strata_ingest::{EmbeddedLog, Ingest, IngestConfig, KafkaLog, StoreGroup};
use strata_proto::{IdLookup, Log, ShardSink};
use strata_store::Store;
use strata_views::SqlEngine;
use tokio_util::sync::CancellationToken;

/// How long in-flight requests may run after shutdown was asked for.
const DRAIN: Duration = Duration::from_secs(10);

/// Runs a node (its log, and as its role says the write path, the store with its consumers, SQL;
/// the HTTP API on `listener`) until `shutdown` is cancelled, then stops accepting requests, lets
/// in-flight ones finish (up to 10 s), stops the consumers after their current commit (on Kafka,
/// leaving the group), and flushes the store.
pub async fn run(
    config: Config,
    listener: tokio::net::TcpListener,
    metrics: Option<PrometheusHandle>,
    shutdown: CancellationToken,
) -> Result<()> {
    let dir = &config.data_dir;
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
    let _lock = lock_data_dir(dir)?;
    let http = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| config.http.clone());
    let node_id = config
        .node_id
        .clone()
        .unwrap_or_else(|| format!("{}/{http}", host_name()));
    let (log, kafka): (Arc<dyn Log>, Option<Arc<KafkaLog>>) = match config.log.backend {
        LogBackend::Embedded => (
            Arc::new(EmbeddedLog::open(
                &dir.join("log"),
                config.log.embedded.clone(),
            )?),
            None,
        ),
        LogBackend::Kafka => {
            let kafka = KafkaLog::connect(config.log.kafka.clone()).await?;
            (kafka.clone(), Some(kafka))
        }
    };
    let store = if config.role.stores() {
        let store = Store::open(&dir.join("store"), config.store.clone())?;
        store.follow_catalog(log.catalog());
        Some(store)
    } else {
        None
    };
    let sql = match &store {
        Some(store) => Some(Arc::new(SqlEngine::new(store.clone(), Some(log.clone()))?)),
        None => None,
    };
    let consumers_stop = CancellationToken::new();
    if let Some(engine) = &sql {
        // Views load before the consumers start, so that their commits maintain them at once.
        engine.attach_views().await;
    }
    let views = sql
        .as_ref()
        .map(|engine| tokio::spawn(engine.clone().maintain_views(consumers_stop.clone())));
    let mut consumers = None;
    let mut group = None;
    if let Some(store) = &store {
        match &kafka {
            None => {
                consumers = Some(tokio::spawn(strata_store::run_consumers(
                    store.clone(),
                    log.clone(),
                    consumers_stop.clone(),
                )));
            }
            Some(kafka) => {
                let sink: Arc<dyn ShardSink> = store.clone();
                group = Some(Arc::new(StoreGroup::start(
                    kafka.config(),
                    sink,
                    config.store.commit_max_events,
                )?));
            }
        }
    }
    let ingest = config.role.ingests().then(|| {
        let ids = store.clone().map(|s| -> Arc<dyn IdLookup> { s });
        Arc::new(Ingest::new(
            log.clone(),
            ids,
            IngestConfig {
                default_partitions: config.default_partitions,
                preload_ids: kafka.is_none(),
            },
        ))
    });
    let state = Arc::new(AppState {
        ingest,
        log,
        store: store.clone(),
        sql,
        metrics,
        limits: config.limits.clone(),
        default_partitions: config.default_partitions,
        node: NodeInfo {
            id: node_id,
            role: config.role,
            http,
            kafka: kafka.clone(),
            group: group.clone(),
        },
    });
    let publisher = kafka.as_ref().map(|kafka| {
        let (state, kafka, stop) = (state.clone(), kafka.clone(), consumers_stop.clone());
        let every = Duration::from_millis(kafka.config().refresh_ms.max(200));
        tokio::spawn(async move {
            loop {
                let status = crate::api::local_status(&state).await;
                if let Err(e) = kafka.publish_status(&status).await {
                    tracing::debug!(error = %e, "cannot publish the node status");
                }
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(every) => {}
                }
            }
        })
    });
    // Answers are streamed in several writes; without TCP_NODELAY the last one waits for the
    // client's delayed ACK (40 ms per request on a kept-alive connection).
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    let server = axum::serve(listener, router(state.clone()))
        .with_graceful_shutdown(shutdown.clone().cancelled_owned());
    let served = tokio::select! {
        served = server => served.map_err(|e| Error::io("the HTTP server failed", e)),
        () = async { shutdown.cancelled().await; tokio::time::sleep(DRAIN).await } => {
            tracing::warn!("requests still running {DRAIN:?} after shutdown began; closing them");
            Ok(())
        }
    };
    consumers_stop.cancel();
    if let Some(views) = views {
        let _ = tokio::time::timeout(DRAIN, views).await;
    }
    if let Some(publisher) = publisher {
        let _ = publisher.await;
    }
    if let Some(consumers) = consumers
        && tokio::time::timeout(DRAIN, consumers).await.is_err()
    {
        tracing::warn!("store consumers did not stop in time");
    }
    if let Some(group) = group {
        // Commits its last batch and leaves the group, so its partitions move at once.
        let _ = tokio::task::spawn_blocking(move || group.stop()).await;
    }
    drop(state);
    if let Some(store) = store {
        store.persist()?;
    }
    tracing::info!("stopped");
    served
}

fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
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
