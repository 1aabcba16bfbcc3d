//! The Kafka log: streams are topics `<prefix><stream>`, the catalog is a compacted topic every
//! node reads, appends go through an idempotent `acks=all` producer, and store nodes consume the
//! topics as a consumer group ([`StoreGroup`]).
//!
//! strata never relies on the broker's high watermark or `offsets_for_times` for correctness (some
//! Kafka-protocol brokers answer them wrongly): the shards' own next offsets say where to resume,
//! the catalog is "loaded" once its topic has been read to idle, and a replay straight from the log
//! ends when the log stays idle. The watermark is only shown (lag, `next_offset`).

mod config;
mod delivery;
mod group;
pub mod mapping;
mod meta;
mod reader;

pub use config::{KafkaConfig, NonJson, RetentionGap};
pub use group::{RetentionGapInfo, StoreGroup};

use crate::Result;
use async_trait::async_trait;
use delivery::EventProducer;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, Producer};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use strata_proto::fields::merge_fields;
use strata_proto::{
    Catalog, Error, Event, FieldSpec, Log, LogReader, NodeStatus, OffsetRange, SharedView,
    StreamInfo, StreamName, SubscriptionCatalog, SubscriptionState, ViewCatalog,
};
use tokio::sync::watch;

/// Maps a Kafka failure to the log error a client sees (503 with the reason).
pub(crate) fn unavailable(what: &str, e: &KafkaError) -> Error {
    let hint = match e.rdkafka_error_code() {
        Some(
            RDKafkaErrorCode::MessageTimedOut
            | RDKafkaErrorCode::AllBrokersDown
            | RDKafkaErrorCode::BrokerTransportFailure
            | RDKafkaErrorCode::OperationTimedOut,
        ) => " (are the Kafka brokers reachable?)",
        _ => "",
    };
    Error::Unavailable(format!("{what}: {e}{hint}"))
}

/// The Kafka log (see the module documentation).
pub struct KafkaLog {
    config: KafkaConfig,
    /// Every record goes through this producer: one delivery callback per record into the
    /// [`delivery::Pending`] of its append.
    producer: EventProducer,
    admin: AdminClient<DefaultClientContext>,
    meta: meta::Meta,
    create_lock: tokio::sync::Mutex<()>,
}

impl KafkaLog {
    /// Connects: makes the catalog and status topics if missing and reads the catalog to the end
    /// (bounded by the delivery timeout).
    pub async fn connect(config: KafkaConfig) -> Result<Arc<Self>> {
        let producer: EventProducer = config
            .producer_config()
            .create_with_context(delivery::DeliveryContext)
            .map_err(|e| Error::Unavailable(format!("cannot create the Kafka producer: {e}")))?;
        let admin: AdminClient<DefaultClientContext> =
            config.client_config().create().map_err(|e| {
                Error::Unavailable(format!("cannot create the Kafka admin client: {e}"))
            })?;
        let mut log = Self {
            meta: meta::Meta::default(),
            config,
            producer,
            admin,
            create_lock: tokio::sync::Mutex::new(()),
        };
        for topic in [log.config.catalog_topic(), log.config.nodes_topic()] {
            log.ensure_topic(&topic, 1, true).await?;
        }
        log.ensure_topic(&log.config.dead_letter_topic(), 1, false)
            .await?;
        log.meta = meta::Meta::start(&log.config, log.producer.clone()).await?;
        log.meta.wait_loaded(log.config.timeout()).await?;
        Ok(Arc::new(log))
    }

    /// The settings.
    pub fn config(&self) -> &KafkaConfig {
        &self.config
    }

    /// The latest status every node published, by node id.
    pub fn nodes(&self) -> BTreeMap<String, NodeStatus> {
        self.meta.nodes()
    }

    /// Publishes this node's status (keyed by its id in the compacted status topic).
    pub async fn publish_status(&self, status: &NodeStatus) -> Result<()> {
        let value = serde_json::to_vec(status)
            .map_err(|e| Error::Unavailable(format!("cannot encode the node status: {e}")))?;
        self.send_meta(&self.config.nodes_topic(), &status.node, &value)
            .await
    }

    async fn send_meta(&self, topic: &str, key: &str, value: &[u8]) -> Result<()> {
        let timeout = self.config.timeout();
        delivery::send_one(
            &self.producer,
            topic,
            0,
            Some(key),
            Some(value),
            None,
            timeout,
        )
        .await?;
        Ok(())
    }

    /// Partition count of `topic` if it exists.
    async fn topic_partitions(&self, topic: &str) -> Result<Option<u32>> {
        let producer = self.producer.clone();
        let timeout = self.config.timeout();
        let topic = topic.to_owned();
        tokio::task::spawn_blocking(move || {
            // All topics: asking for one by name may auto-create it on some brokers.
            let md = producer
                .client()
                .fetch_metadata(None, timeout)
                .map_err(|e| unavailable("cannot read the Kafka metadata", &e))?;
            Ok(md
                .topics()
                .iter()
                .find(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())
                .map(|t| t.partitions().len() as u32))
        })
        .await
        .map_err(|e| Error::Unavailable(format!("metadata task failed: {e}")))?
    }

    /// Makes `topic` with `partitions` unless it exists; returns its partition count.
    async fn ensure_topic(&self, topic: &str, partitions: u32, compacted: bool) -> Result<u32> {
        if let Some(n) = self.topic_partitions(topic).await? {
            return Ok(n);
        }
        let isr = self.config.min_insync_replicas.to_string();
        let mut new = NewTopic::new(
            topic,
            partitions as i32,
            TopicReplication::Fixed(self.config.replication_factor),
        )
        .set("min.insync.replicas", &isr);
        if compacted {
            new = new.set("cleanup.policy", "compact");
        }
        let options = AdminOptions::new().operation_timeout(Some(self.config.timeout()));
        let results = self
            .admin
            .create_topics([&new], &options)
            .await
            .map_err(|e| unavailable(&format!("cannot create topic {topic}"), &e))?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((_, RDKafkaErrorCode::InvalidReplicationFactor)) => {
                    return Err(Error::Unavailable(format!(
                        "cannot create topic {topic}: replication factor {} is more than the brokers \
                         available (set log.kafka.replication_factor)",
                        self.config.replication_factor
                    ))
                    .into());
                }
                Err((_, code)) => {
                    return Err(
                        Error::Unavailable(format!("cannot create topic {topic}: {code}")).into(),
                    );
                }
            }
        }
        // The new topic's metadata can lag its creation briefly.
        for _ in 0..50 {
            if let Some(n) = self.topic_partitions(topic).await? {
                return Ok(n);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(partitions)
    }

    /// Writes `info` to the catalog topic and waits until this node's catalog shows it.
    async fn publish_stream(&self, info: &StreamInfo) -> Result<()> {
        let value = serde_json::to_vec(info)
            .map_err(|e| Error::Unavailable(format!("cannot encode the catalog entry: {e}")))?;
        self.send_meta(&self.config.catalog_topic(), info.name.as_str(), &value)
            .await?;
        let mut rx = self.meta.catalog();
        // Entries merge (see `meta`): wait until the catalog holds at least this one.
        let wait = rx.wait_for(|c| {
            c.get(&info.name).is_some_and(|have| {
                info.fields
                    .iter()
                    .all(|f| have.fields.iter().any(|h| h.name == f.name))
            })
        });
        match tokio::time::timeout(self.config.timeout(), wait).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(Error::Unavailable(format!(
                "the catalog entry of {} was written but not read back in time",
                info.name
            ))
            .into()),
        }
    }
}

impl KafkaLog {
    /// Writes a control record to every partition of `info`'s topic; returns, per partition, the
    /// offset after it.
    async fn mark_partitions(&self, info: &StreamInfo) -> strata_proto::Result<Vec<u64>> {
        let topic = self.config.topic(info.name.as_str());
        let sends = (0..info.partitions).map(|p| {
            let headers = mapping::control_headers("fields");
            let timeout = self.config.timeout();
            delivery::send_one(
                &self.producer,
                &topic,
                p,
                None,
                None,
                Some(headers),
                timeout,
            )
        });
        futures::future::join_all(sends)
            .await
            .into_iter()
            .map(|offset| Ok(offset? + 1))
            .collect()
    }
}

fn to_proto(e: crate::Error) -> Error {
    match e {
        crate::Error::Log(e) => e,
        other => Error::Unavailable(other.to_string()),
    }
}

/// The other nodes, as they publish themselves in `<prefix>__nodes`.
#[async_trait::async_trait]
impl strata_proto::Membership for KafkaLog {
    fn peers(&self) -> BTreeMap<String, NodeStatus> {
        self.nodes()
    }

    fn publish_every(&self) -> Duration {
        Duration::from_millis(self.config.refresh_ms.max(200))
    }

    fn stale_after(&self) -> Duration {
        Duration::from_millis((self.config.refresh_ms.max(200) * 3).max(10_000))
    }

    async fn publish(&self, status: &NodeStatus) -> strata_proto::Result<()> {
        self.publish_status(status).await.map_err(|e| match e {
            crate::Error::Log(e) => e,
            other => strata_proto::Error::Unavailable(other.to_string()),
        })
    }
}

impl KafkaLog {
    /// Writes `value` (a tombstone when `None`) under `key` in the catalog topic and waits until
    /// this node's reader shows it (`shown` holds on `rx`).
    async fn put_entry<T>(
        &self,
        key: &str,
        value: Option<Vec<u8>>,
        mut rx: watch::Receiver<T>,
        shown: impl Fn(&T) -> bool,
        what: &str,
    ) -> strata_proto::Result<()> {
        delivery::send_one(
            &self.producer,
            &self.config.catalog_topic(),
            0,
            Some(key),
            value.as_deref(),
            None,
            self.config.timeout(),
        )
        .await?;
        match tokio::time::timeout(self.config.timeout(), rx.wait_for(|v| shown(v))).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(Error::Unavailable(format!(
                "{what} was written but not read back in time"
            ))),
        }
    }
}

#[async_trait]
impl Log for KafkaLog {
    async fn create_stream(
        &self,
        name: &StreamName,
        partitions: u32,
        fields: &[FieldSpec],
    ) -> strata_proto::Result<(StreamInfo, bool)> {
        StreamInfo::check_partitions(partitions)?;
        let mut declared = Vec::new();
        merge_fields(&mut declared, fields, &[])?;
        let _guard = self.create_lock.lock().await;
        if let Some(info) = self.meta.catalog().borrow().get(name) {
            info.expect_partitions(partitions)?;
            return Ok((info.clone(), false));
        }
        // An existing topic (made by another node or outside strata) is adopted as it is.
        let topic = self.config.topic(name.as_str());
        let partitions = self
            .ensure_topic(&topic, partitions, false)
            .await
            .map_err(to_proto)?
            .clamp(1, StreamInfo::MAX_PARTITIONS);
        let info = StreamInfo {
            name: name.clone(),
            partitions,
            fields: declared,
        };
        self.publish_stream(&info).await.map_err(to_proto)?;
        let info = self
            .meta
            .catalog()
            .borrow()
            .get(name)
            .cloned()
            .unwrap_or(info);
        Ok((info, true))
    }

    async fn add_fields(
        &self,
        name: &StreamName,
        fields: &[FieldSpec],
    ) -> strata_proto::Result<StreamInfo> {
        let _guard = self.create_lock.lock().await;
        let mut info = self
            .meta
            .catalog()
            .borrow()
            .get(name)
            .cloned()
            .ok_or_else(|| Error::UnknownStream(name.to_string()))?;
        let mut merged = info.fields.clone();
        if merge_fields(&mut merged, fields, &[])? {
            // New fields apply after a control record written to each partition now: its
            // offset is where they start, with no reliance on the broker's end offsets.
            let since = self.mark_partitions(&info).await?;
            merge_fields(&mut info.fields, fields, &since)?;
            self.publish_stream(&info).await.map_err(to_proto)?;
        }
        Ok(self
            .meta
            .catalog()
            .borrow()
            .get(name)
            .cloned()
            .unwrap_or(info))
    }

    fn catalog(&self) -> watch::Receiver<Catalog> {
        self.meta.catalog()
    }

    fn shared_views(&self) -> Option<watch::Receiver<ViewCatalog>> {
        Some(self.meta.views())
    }

    async fn put_view(&self, name: &str, def: Option<&SharedView>) -> strata_proto::Result<()> {
        let value = def
            .map(serde_json::to_vec)
            .transpose()
            .map_err(|e| Error::Unavailable(format!("cannot encode view {name}: {e}")))?;
        let key = format!("{}{name}", meta::VIEW_PREFIX);
        let what = format!("the definition of view {name}");
        self.put_entry(
            &key,
            value,
            self.meta.views(),
            |views| views.get(name) == def,
            &what,
        )
        .await
    }

    fn subscriptions(&self) -> watch::Receiver<SubscriptionCatalog> {
        self.meta.subscriptions()
    }

    async fn put_subscription(
        &self,
        name: &str,
        state: Option<&SubscriptionState>,
    ) -> strata_proto::Result<()> {
        let value = state
            .map(serde_json::to_vec)
            .transpose()
            .map_err(|e| Error::Unavailable(format!("cannot encode subscription {name}: {e}")))?;
        let key = format!("{}{name}", meta::SUBSCRIPTION_PREFIX);
        let what = format!("subscription {name}");
        let wanted = |all: &SubscriptionCatalog| match state {
            Some(record) => record.absorbed_in(all.get(name)),
            None => !all.contains_key(name),
        };
        self.put_entry(&key, value, self.meta.subscriptions(), wanted, &what)
            .await
    }

    async fn append(
        &self,
        stream: &StreamName,
        partition: u32,
        events: Vec<Event>,
    ) -> strata_proto::Result<OffsetRange> {
        let topic = self.config.topic(stream.as_str());
        if events.is_empty() {
            return Err(Error::Unavailable("an append needs events".into()));
        }
        let pending = Arc::new(delivery::Pending::new(events.len()));
        for event in &events {
            let mut record = BaseRecord::with_opaque_to(&topic, pending.clone())
                .partition(partition as i32)
                .payload(event.data.as_bytes())
                .timestamp(event.time_ms);
            if let Some(key) = &event.key {
                record = record.key(key.as_bytes());
            }
            if let Some(headers) = mapping::headers_for(event) {
                record = record.headers(headers);
            }
            delivery::queue(&self.producer, record, self.config.timeout()).await?;
        }
        // Every delivery report is awaited, so that nothing is reported before all are known.
        delivery::delivered(&pending, self.config.timeout()).await
    }

    async fn end_offset(&self, stream: &StreamName, partition: u32) -> strata_proto::Result<u64> {
        let producer = self.producer.clone();
        let topic = self.config.topic(stream.as_str());
        let timeout = self.config.timeout();
        tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_watermarks(&topic, partition as i32, timeout)
                .map(|(_, high)| u64::try_from(high).unwrap_or(0))
                .map_err(|e| unavailable("cannot read the partition's end offset", &e))
        })
        .await
        .map_err(|e| Error::Unavailable(format!("watermark task failed: {e}")))?
    }

    fn end_offsets_are_exact(&self) -> bool {
        false
    }

    async fn open_reader(
        &self,
        stream: &StreamName,
        partition: u32,
        from: u64,
    ) -> strata_proto::Result<Box<dyn LogReader>> {
        let info = self
            .meta
            .catalog()
            .borrow()
            .get(stream)
            .cloned()
            .ok_or_else(|| Error::UnknownStream(stream.to_string()))?;
        info.check_partition(partition)?;
        Ok(Box::new(reader::KafkaReader::open(
            &self.config,
            stream,
            partition,
            from,
        )?))
    }
}

impl Drop for KafkaLog {
    fn drop(&mut self) {
        let _ = self.producer.flush(Duration::from_secs(5));
    }
}
