//! Store consumers: one task per partition applies the log to its shard.

use crate::Store;
use async_trait::async_trait;
use parking_lot::Mutex;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use strata_proto::{Feed, Held, Log, Stall, StreamName};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

/// A store's consumers of every partition of a log it reads whole (the embedded log), as a
/// [`Feed`]: [`run_consumers`] on a task of its own.
pub struct Consumers {
    task: Mutex<Option<JoinHandle<()>>>,
    stop: CancellationToken,
}

impl Consumers {
    /// Starts consuming `log` into `store`.
    pub fn start(store: Arc<Store>, log: Arc<dyn Log>) -> Self {
        let stop = CancellationToken::new();
        let task = tokio::spawn(run_consumers(store, log, stop.clone()));
        Self {
            task: Mutex::new(Some(task)),
            stop,
        }
    }
}

#[async_trait]
impl Feed for Consumers {
    fn held(&self) -> Option<Vec<Held>> {
        None
    }

    fn stalled(&self) -> Vec<Stall> {
        Vec::new()
    }

    async fn stop(&self, limit: Duration) {
        self.stop.cancel();
        let task = self.task.lock().take();
        if let Some(task) = task
            && tokio::time::timeout(limit, task).await.is_err()
        {
            tracing::warn!("store consumers did not stop in time");
        }
    }
}

/// Makes the store follow the log's catalog and runs one consumer per partition of every stream until `shutdown` is cancelled; returns once every consumer has finished its commit.
pub async fn run_consumers(store: Arc<Store>, log: Arc<dyn Log>, shutdown: CancellationToken) {
    let mut catalog_rx = log.catalog();
    store.follow_catalog(log.catalog());
    let mut running = HashSet::new();
    let mut tasks = JoinSet::new();
    loop {
        let catalog = catalog_rx.borrow_and_update().clone();
        for info in catalog.values() {
            for p in 0..info.partitions {
                if running.insert((info.name.clone(), p)) {
                    tasks.spawn(consume(
                        store.clone(),
                        log.clone(),
                        info.name.clone(),
                        p,
                        shutdown.clone(),
                    ));
                }
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            changed = catalog_rx.changed() => if changed.is_err() { break },
            Some(Err(e)) = tasks.join_next() => tracing::error!(error = %e, "store consumer task failed"),
        }
    }
    while tasks.join_next().await.is_some() {}
}

async fn consume(
    store: Arc<Store>,
    log: Arc<dyn Log>,
    stream: StreamName,
    partition: u32,
    shutdown: CancellationToken,
) {
    let max = store.config().commit_max_events.max(1);
    let lag = metrics::gauge!("strata_store_lag_events", "stream" => stream.to_string(), "partition" => partition.to_string());
    let mut failures = 0u32;
    'reopen: while !shutdown.is_cancelled() {
        if failures > 0 {
            let backoff = Duration::from_millis(100 * u64::from(failures.min(50)));
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(backoff) => {}
            }
        }
        let from = match store.next_offset(&stream, partition) {
            Ok(from) => from,
            Err(e) => {
                tracing::error!(%stream, partition, error = %e, "cannot read the shard's offset");
                failures += 1;
                continue;
            }
        };
        let mut reader = match log.open_reader(&stream, partition, from).await {
            Ok(reader) => reader,
            Err(e) => {
                tracing::warn!(%stream, partition, error = %e, "cannot open the log partition");
                failures += 1;
                continue;
            }
        };
        while !shutdown.is_cancelled() {
            let batch = match reader.next_batch(max, Duration::from_millis(200)).await {
                Ok(batch) => batch,
                Err(e) => {
                    tracing::error!(%stream, partition, error = %e, "reading the log failed");
                    failures += 1;
                    continue 'reopen;
                }
            };
            if !batch.is_empty() {
                let (s, st) = (store.clone(), stream.clone());
                let committed =
                    tokio::task::spawn_blocking(move || s.commit(&st, partition, batch)).await;
                match committed {
                    Ok(Ok(_)) => failures = 0,
                    Ok(Err(e)) => {
                        tracing::error!(%stream, partition, error = %e, "store commit failed");
                        failures += 1;
                        continue 'reopen;
                    }
                    Err(e) => {
                        tracing::error!(%stream, partition, error = %e, "store commit task failed");
                        failures += 1;
                        continue 'reopen;
                    }
                }
            }
            if let (Ok(end), Ok(stored)) = (
                log.end_offset(&stream, partition).await,
                store.next_offset(&stream, partition),
            ) {
                lag.set(end.saturating_sub(stored) as f64);
            }
        }
    }
}
