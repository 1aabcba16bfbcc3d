//! Building a node from its configuration and running it until shutdown.

use crate::api::{AppState, router};
use crate::config::LogBackend;
use crate::{Config, Error, Result};
use axum::serve::ListenerExt;
use metrics_exporter_prometheus::PrometheusHandle;
use std::sync::Arc;
use std::time::Duration;
use strata_ingest::{EmbeddedLog, Ingest, IngestConfig};
use strata_proto::{IdLookup, Log};
use strata_store::Store;
use strata_views::SqlEngine;
use tokio_util::sync::CancellationToken;

/// How long in-flight requests may run after shutdown was asked for.
const DRAIN: Duration = Duration::from_secs(10);

/// Runs a node (log, store consumers, SQL, HTTP API on `listener`) until `shutdown` is cancelled,
/// then stops accepting requests, lets in-flight ones finish (up to 10 s), stops the consumers
/// after their current commit, and flushes the store.
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
    let log: Arc<dyn Log> = match config.log.backend {
        LogBackend::Embedded => Arc::new(EmbeddedLog::open(
            &dir.join("log"),
            config.log.embedded.clone(),
        )?),
    };
    let store = Store::open(&dir.join("store"), config.store.clone())?;
    store.follow_catalog(log.catalog());
    let consumers_stop = CancellationToken::new();
    let consumers = tokio::spawn(strata_store::run_consumers(
        store.clone(),
        log.clone(),
        consumers_stop.clone(),
    ));
    let ids: Arc<dyn IdLookup> = store.clone();
    let ingest = Arc::new(Ingest::new(
        log.clone(),
        Some(ids),
        IngestConfig {
            default_partitions: config.default_partitions,
        },
    ));
    let sql = Arc::new(SqlEngine::new(store.clone())?);
    let state = Arc::new(AppState {
        ingest,
        log,
        store: store.clone(),
        sql,
        metrics,
        limits: config.limits.clone(),
    });
    // Answers are streamed in several writes; without TCP_NODELAY the last one waits for the
    // client's delayed ACK (40 ms per request on a kept-alive connection).
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    let server = axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown.clone().cancelled_owned());
    let served = tokio::select! {
        served = server => served.map_err(|e| Error::io("the HTTP server failed", e)),
        () = async { shutdown.cancelled().await; tokio::time::sleep(DRAIN).await } => {
            tracing::warn!("requests still running {DRAIN:?} after shutdown began; closing them");
            Ok(())
        }
    };
    consumers_stop.cancel();
    if tokio::time::timeout(DRAIN, consumers).await.is_err() {
        tracing::warn!("store consumers did not stop in time");
    }
    store.persist()?;
    tracing::info!("stopped");
    served
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
