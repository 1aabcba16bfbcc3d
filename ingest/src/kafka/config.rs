//! The Kafka log's settings (`[log.kafka]`), and the client configurations made from them.

use rdkafka::ClientConfig;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;
use strata_proto::StreamName;

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
    /// Producer `linger.ms`: how long a batch may wait to fill. An append is answered only once
    /// the brokers acknowledged it, so this wait is added to every append; 1 ms lets the records
    /// of one append go out in one batch per partition, and appends that arrive while others are
    /// in flight still share batches.
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
            linger_ms: 1,
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
