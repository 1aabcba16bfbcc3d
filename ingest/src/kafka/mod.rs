//! The Kafka log: streams are topics `<prefix><stream>`, the catalog is a compacted topic every
//! node reads, appends go through an idempotent `acks=all` producer, and store nodes consume the
//! topics as a consumer group ([`StoreGroup`]).
//!
//! strata never relies on the broker's high watermark or `offsets_for_times` for correctness (some
//! Kafka-protocol brokers answer them wrongly): the shards' own next offsets say where to resume,
//! the catalog is "loaded" once its topic has been read to idle, and a replay straight from the log
//! ends when the log stays idle. The watermark is only shown (lag, `next_offset`).

mod delivery;
mod group;
pub mod mapping;
mod meta;
mod reader;

pub use group::{RetentionGapInfo, StoreGroup};

use crate::Result;
use async_trait::async_trait;
use delivery::EventProducer;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, Producer};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use strata_proto::fields::merge_fields;
use strata_proto::{
    Catalog, Error, Event, FieldSpec, Log, LogReader, NodeStatus, OffsetRange, SharedView,
    StreamInfo, StreamName, SubscriptionCatalog, SubscriptionState, ViewCatalog,
};
use tokio::sync::watch;

/// What store nodes do with record values that are not JSON.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NonJson {
    /// Copy the record to the dead-letter topic, count it, and go on without it.
    #[default]
    DeadLetter,
    /// Store it: UTF-8 text as a JSON string of the text, other bytes as a JSON string of base64.
    Store,
}

/// What a store node does when retention deleted offsets it has not stored yet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RetentionGap {
    /// Stop consuming that partition, log an error and show it in the stream listing.
    #[default]
    Stall,
    /// Go on from the log's start; the skipped offsets are logged and counted.
    Skip,
}

/// Settings of the Kafka log (`[log.kafka]` in the config file).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap brokers, `HOST:PORT[,…]`.
    pub brokers: String,
    /// Topic of stream `s` is `<topic_prefix>s`; the catalog is `<topic_prefix>__catalog` and node
    /// status `<topic_prefix>__nodes`.
    pub topic_prefix: String,
    /// Replication factor of topics strata creates.
    pub replication_factor: i32,
    /// `min.insync.replicas` of topics strata creates.
    pub min_insync_replicas: u32,
    /// Consumer group of store nodes.
    pub group_id: String,
    /// How long an append may wait for the brokers' acknowledgement before it fails with 503
    /// (librdkafka `message.timeout.ms`), in milliseconds.
    pub delivery_timeout_ms: u64,
    /// Consumer group session timeout (librdkafka `session.timeout.ms`), in milliseconds: how
    /// long the partitions of a store node that stopped answering wait before the others take
    /// them (with static membership, also after a graceful shutdown).
    pub session_timeout_ms: u64,
    /// Store nodes join the group as static members (`group.instance.id` = the node id): a node
    /// restarted within the session timeout gets its partitions back without a rebalance, and a
    /// graceful shutdown does not hand them over (the others take them after the session
    /// timeout). Off by default: Tansu 0.6's coordinator does not expire a static member that
    /// died, so its partitions would stay unserved; turn it on with Apache Kafka (≥ 2.3).
    /// Dynamic members hand over at once on a graceful shutdown and, after a crash, after the
    /// session timeout and a rebalance.
    pub static_membership: bool,
    /// How often new topics and status are looked for, in milliseconds.
    pub refresh_ms: u64,
    /// Producer `linger.ms`: how long a batch may wait to fill.
    pub linger_ms: u64,
    /// What store nodes do with a record whose value is not JSON (written by another client):
    /// set it aside in the dead-letter topic (the default) or store it as a JSON string.
    pub non_json: NonJson,
    /// A record value larger than this (bytes) is set aside in the dead-letter topic.
    pub max_value_bytes: usize,
    /// What a store node does when the log's retention deleted offsets it has not stored:
    /// `stall` the partition and say so (the default), or `skip` to the log's start, counting
    /// what was lost.
    pub retention_gap: RetentionGap,
    /// Any other librdkafka settings, passed to every client as given (e.g. `security.protocol`,
    /// `sasl.mechanisms`, `sasl.username`, `ssl.ca.location`).
    pub properties: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".to_owned(),
            topic_prefix: "strata.".to_owned(),
            replication_factor: 3,
            min_insync_replicas: 2,
            group_id: "strata-store".to_owned(),
            delivery_timeout_ms: 15_000,
            session_timeout_ms: 10_000,
            static_membership: false,
            refresh_ms: 2_000,
            linger_ms: 5,
            non_json: NonJson::default(),
            max_value_bytes: 1 << 20,
            retention_gap: RetentionGap::default(),
            properties: BTreeMap::new(),
        }
    }
}

impl KafkaConfig {
    /// The topic of `stream`.
    pub fn topic(&self, stream: &str) -> String {
        format!("{}{stream}", self.topic_prefix)
    }

    /// The stream whose topic is `topic`, if it is one.
    pub fn stream_of(&self, topic: &str) -> Option<StreamName> {
        topic
            .strip_prefix(&self.topic_prefix)
            .and_then(|s| StreamName::new(s).ok())
    }

    /// The catalog topic.
    pub fn catalog_topic(&self) -> String {
        format!("{}__catalog", self.topic_prefix)
    }

    /// The dead-letter topic: records store nodes set aside, with where they came from.
    pub fn dead_letter_topic(&self) -> String {
        format!("{}__dead_letters", self.topic_prefix)
    }

    /// The node status topic.
    pub fn nodes_topic(&self) -> String {
        format!("{}__nodes", self.topic_prefix)
    }

    /// A client configuration with the brokers and the pass-through properties.
    pub fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            .set("client.id", "strata")
            .set("allow.auto.create.topics", "false")
            .set(
                "topic.metadata.refresh.interval.ms",
                self.refresh_ms.to_string(),
            )
            .set("log_level", "4");
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c
    }

    /// A consumer in `group` that commits nothing by itself and reads from the beginning when
    /// it has no offset.
    pub(crate) fn consumer_config(&self, group: &str) -> ClientConfig {
        let mut c = self.client_config();
        c.set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("fetch.wait.max.ms", "100");
        c
    }

    /// The producer settings of appends: idempotent, `acks=all`, Java-compatible key
    /// partitioning, batching for throughput, `delivery_timeout_ms` per record.
    pub fn producer_config(&self) -> ClientConfig {
        let mut c = self.client_config();
        c.set("enable.idempotence", "true")
            .set("acks", "all")
            .set("partitioner", "murmur2_random")
            .set("linger.ms", self.linger_ms.to_string())
            .set("batch.num.messages", "10000")
            .set("batch.size", "4000000")
            .set("queue.buffering.max.messages", "1000000")
            .set("queue.buffering.max.kbytes", "1048576")
            .set("message.timeout.ms", self.delivery_timeout_ms.to_string());
        c
    }

    pub(crate) fn timeout(&self) -> Duration {
        Duration::from_millis(self.delivery_timeout_ms.max(1000))
    }
}

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
        let wanted = |all: &SubscriptionCatalog| all.get(name) == state;
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
