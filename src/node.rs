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

/// How often the embedded log's retention runs.
const RETENTION_EVERY: Duration = Duration::from_secs(2);

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
    // Bad TLS files or tokens stop the node before it opens anything.
    let tls = match config.tls.files() {
        Some((cert, key)) => Some(tls_config(cert, key)?),
        None => None,
    };
    let auth = Arc::new(crate::auth::Auth::new(&config.auth)?);
    let http = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| config.http.clone());
    let node_id = config
        .node_id
        .clone()
        .unwrap_or_else(|| format!("{}/{http}", host_name()));
    let mut embedded = None;
    let (log, kafka): (Arc<dyn Log>, Option<Arc<KafkaLog>>) = match config.log.backend {
        LogBackend::Embedded => {
            let log = Arc::new(EmbeddedLog::open(
                &dir.join("log"),
                config.log.embedded.clone(),
            )?);
            embedded = Some(log.clone());
            (log, None)
        }
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
        Some(store) => Some(Arc::new(SqlEngine::with_memory_limit(
            store.clone(),
            Some(log.clone()),
            Some(config.limits.query_memory_bytes),
        )?)),
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
    // Retention of the embedded log, bounded by what the shards hold.
    let retention = match (&embedded, &store) {
        (Some(log), Some(store)) if log.has_retention() => {
            let (log, store, stop) = (log.clone(), store.clone(), consumers_stop.clone());
            Some(tokio::spawn(async move {
                loop {
                    tokio::select! {
                        () = stop.cancelled() => break,
                        () = tokio::time::sleep(RETENTION_EVERY) => {}
                    }
                    let (log, store) = (log.clone(), store.clone());
                    let done = tokio::task::spawn_blocking(move || {
                        log.enforce_retention(&|stream, p| {
                            store.stored_next_offset(stream, p).unwrap_or(0)
                        })
                    })
                    .await;
                    match done {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => tracing::error!(error = %e, "log retention failed"),
                        Err(e) => tracing::error!(error = %e, "log retention task failed"),
                    }
                }
            }))
        }
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
        auth,
        in_flight: Arc::new(tokio::sync::Semaphore::new(
            config.limits.max_concurrent_requests,
        )),
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
    let served = match tls {
        None => serve_plain(listener, router(state.clone()), &shutdown).await,
        Some(tls) => serve_tls(listener, router(state.clone()), tls, &shutdown).await,
    };
    consumers_stop.cancel();
    if let Some(views) = views {
        let _ = tokio::time::timeout(DRAIN, views).await;
    }
    if let Some(publisher) = publisher {
        let _ = publisher.await;
    }
    if let Some(retention) = retention {
        let _ = retention.await;
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

async fn serve_plain(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    shutdown: &CancellationToken,
) -> Result<()> {
    // Answers are streamed in several writes; without TCP_NODELAY the last one waits for the
    // client's delayed ACK (40 ms per request on a kept-alive connection).
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    let server =
        axum::serve(listener, app).with_graceful_shutdown(shutdown.clone().cancelled_owned());
    tokio::select! {
        served = server => served.map_err(|e| Error::io("the HTTP server failed", e)),
        () = async { shutdown.cancelled().await; tokio::time::sleep(DRAIN).await } => {
            tracing::warn!("requests still running {DRAIN:?} after shutdown began; closing them");
            Ok(())
        }
    }
}

async fn serve_tls(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    tls: axum_server::tls_rustls::RustlsConfig,
    shutdown: &CancellationToken,
) -> Result<()> {
    let listener = listener
        .into_std()
        .map_err(|e| Error::io("the HTTPS listener", e))?;
    let handle = axum_server::Handle::new();
    let stopper = {
        let (handle, shutdown) = (handle.clone(), shutdown.clone());
        tokio::spawn(async move {
            shutdown.cancelled().await;
            handle.graceful_shutdown(Some(DRAIN));
        })
    };
    let served = axum_server::from_tcp_rustls(listener, tls)
        .handle(handle)
        .serve(app.into_make_service())
        .await
        .map_err(|e| Error::io("the HTTPS server failed", e));
    stopper.abort();
    served
}

/// The rustls configuration of the HTTP listener from PEM files.
fn tls_config(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<axum_server::tls_rustls::RustlsConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |what: &std::path::Path, e: &dyn std::fmt::Display| {
        Error::Config(format!("TLS: cannot read {}: {e}", what.display()))
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| bad(cert, &e))?
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| bad(cert, &e))?;
    if chain.is_empty() {
        return Err(bad(cert, &"no certificate in the file"));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| bad(key, &e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Config(format!("TLS: {e}")))?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|e| Error::Config(format!("TLS: the certificate and key do not fit: {e}")))?;
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(axum_server::tls_rustls::RustlsConfig::from_config(
        Arc::new(server),
    ))
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
