//! The one place that knows the log backends: it opens the log a configuration asks for and
//! says how that log's partitions reach a store and what it knows of other nodes. The rest of
//! the node works with the traits only.

use crate::config::{Config, LogBackend};
use crate::{Error, Result};
use std::path::Path;
use std::sync::Arc;
use strata_ingest::{EmbeddedLog, KafkaLog, StoreGroup};
use strata_proto::{Feed, Log, Membership, ShardSink};
use strata_store::{Consumers, Store};

/// Starts feeding the log's partitions into a store.
type StartFeed = Box<dyn FnOnce(Arc<Store>) -> Result<Arc<dyn Feed>> + Send>;

/// An open log and what comes with it.
pub(super) struct Backend {
    /// The log.
    pub log: Arc<dyn Log>,
    /// The other nodes, where the log spans machines.
    pub membership: Option<Arc<dyn Membership>>,
    /// How a store node consumes the log.
    pub start_feed: StartFeed,
}

/// Opens the log of `config` (the embedded log under `dir/log`, or Kafka); `node_id` is this
/// node's stable id.
pub(super) async fn open_log(config: &Config, dir: &Path, node_id: &str) -> Result<Backend> {
    Ok(match config.log.backend {
        LogBackend::Embedded => {
            let log: Arc<dyn Log> = Arc::new(EmbeddedLog::open(
                &dir.join("log"),
                config.log.embedded.clone(),
            )?);
            let feed_log = log.clone();
            Backend {
                log,
                membership: None,
                start_feed: Box::new(move |store| {
                    Ok(Arc::new(Consumers::start(store, feed_log)) as Arc<dyn Feed>)
                }),
            }
        }
        LogBackend::Kafka => {
            let kafka = KafkaLog::connect(config.log.kafka.clone()).await?;
            let max_batch = config.store.commit_max_events;
            let group_kafka = kafka.clone();
            let instance = node_id.to_owned();
            let state_dir = dir.join("store");
            Backend {
                log: kafka.clone(),
                membership: Some(kafka),
                start_feed: Box::new(move |store| {
                    let sink: Arc<dyn ShardSink> = store;
                    let group = StoreGroup::start(
                        group_kafka.config(),
                        sink,
                        max_batch,
                        &instance,
                        &state_dir,
                    )
                    .map_err(Error::from)?;
                    Ok(Arc::new(group) as Arc<dyn Feed>)
                }),
            }
        }
    })
}
