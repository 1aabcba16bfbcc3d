//! The catalog and node status, read from their compacted topics by one thread per node; the same
//! thread adopts topics `<prefix><stream>` that have no catalog entry (made outside strata).
//!
//! The catalog counts as loaded once the reader has seen a marker record this node wrote after it
//! started reading, so nothing relies on the broker's high watermark. Catalog entries merge: a
//! stream's partition count only grows and its fields are the union of every entry's, so two nodes
//! writing at once (or an adoption racing a creation) lose nothing.

use super::KafkaConfig;
use super::delivery::{EventProducer, send_one};
use crate::Result;
use parking_lot::Mutex;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::Producer;
use rdkafka::{Message, Offset, TopicPartitionList};
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use strata_proto::{
    Catalog, Error, NodeStatus, SharedView, StreamInfo, StreamName, SubscriptionCatalog,
    SubscriptionState, ViewCatalog,
};
use tokio::sync::watch;

/// Keys of marker records start with this; they are tombstones and never entries.
const MARKER_PREFIX: &str = "__marker__/";
/// Keys of materialized view definitions start with this (a stream name never has a `/`); a
/// tombstone drops the view.
pub(crate) const VIEW_PREFIX: &str = "__view__/";
/// Keys of durable subscriptions start with this; a tombstone deletes the subscription.
pub(crate) const SUBSCRIPTION_PREFIX: &str = "__subscription__/";

pub(crate) struct Meta {
    catalog: watch::Receiver<Catalog>,
    views: watch::Receiver<ViewCatalog>,
    subscriptions: watch::Receiver<SubscriptionCatalog>,
    loaded: watch::Receiver<bool>,
    nodes: Arc<Mutex<BTreeMap<String, NodeStatus>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Default for Meta {
    fn default() -> Self {
        Self {
            catalog: watch::channel(Catalog::default()).1,
            views: watch::channel(ViewCatalog::default()).1,
            subscriptions: watch::channel(SubscriptionCatalog::default()).1,
            loaded: watch::channel(false).1,
            nodes: Arc::default(),
            stop: Arc::default(),
            thread: None,
        }
    }
}

/// Merges `entry` into `catalog`: the larger partition count, the union of fields.
fn merge_entry(catalog: &mut BTreeMap<StreamName, StreamInfo>, entry: StreamInfo) -> bool {
    match catalog.get_mut(&entry.name) {
        None => {
            catalog.insert(entry.name.clone(), entry);
            true
        }
        Some(info) => {
            let before = info.clone();
            info.partitions = info.partitions.max(entry.partitions);
            for field in entry.fields {
                if !info.fields.iter().any(|f| f.name == field.name) {
                    info.fields.push(field);
                }
            }
            *info != before
        }
    }
}

/// Applies one view record to `views`: a definition (the latest wins) or a tombstone.
fn apply_view(
    views: &mut BTreeMap<String, SharedView>,
    name: &str,
    payload: Option<&[u8]>,
) -> bool {
    match payload.map(serde_json::from_slice::<SharedView>) {
        None => views.remove(name).is_some(),
        Some(Ok(def)) if def.name == name => {
            views.insert(name.to_owned(), def.clone()) != Some(def)
        }
        Some(_) => {
            tracing::warn!(view = name, "ignoring an unreadable view definition");
            false
        }
    }
}

/// Applies a subscription's catalog record (a tombstone deletes it); whether anything changed.
fn apply_subscription(
    subscriptions: &mut BTreeMap<String, SubscriptionState>,
    name: &str,
    payload: Option<&[u8]>,
) -> bool {
    match payload.map(serde_json::from_slice::<SubscriptionState>) {
        None => subscriptions.remove(name).is_some(),
        Some(Ok(record)) => {
            let state = record.applied_over(subscriptions.get(name));
            subscriptions.insert(name.to_owned(), state.clone()) != Some(state)
        }
        Some(Err(_)) => {
            tracing::warn!(subscription = name, "ignoring an unreadable subscription");
            false
        }
    }
}

impl Meta {
    /// Starts the reader thread.
    pub(crate) async fn start(config: &KafkaConfig, producer: EventProducer) -> Result<Self> {
        let unique = format!(
            "{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        );
        let consumer: BaseConsumer = config
            .consumer_config(&format!("strata-meta-{unique}"))
            .set("fetch.wait.max.ms", "50")
            .create()
            .map_err(|e| Error::Unavailable(format!("cannot create the catalog reader: {e}")))?;
        let (catalog_topic, nodes_topic) = (config.catalog_topic(), config.nodes_topic());
        let mut tpl = TopicPartitionList::new();
        for topic in [&catalog_topic, &nodes_topic] {
            tpl.add_partition_offset(topic, 0, Offset::Beginning)
                .map_err(|e| Error::Unavailable(format!("cannot read {topic}: {e}")))?;
        }
        consumer
            .assign(&tpl)
            .map_err(|e| Error::Unavailable(format!("cannot read the catalog: {e}")))?;
        let marker = format!("{MARKER_PREFIX}{unique}");
        send_one(
            &producer,
            &catalog_topic,
            0,
            Some(&marker),
            None,
            None,
            config.timeout(),
        )
        .await?;
        // The reader thread sends adoptions through the producer on this runtime.
        let runtime = tokio::runtime::Handle::current();
        let (catalog_tx, catalog_rx) = watch::channel(Catalog::default());
        let (views_tx, views_rx) = watch::channel(ViewCatalog::default());
        let (subscriptions_tx, subscriptions_rx) = watch::channel(SubscriptionCatalog::default());
        let (loaded_tx, loaded_rx) = watch::channel(false);
        let nodes: Arc<Mutex<BTreeMap<String, NodeStatus>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let reader = Reader {
            runtime,
            config: config.clone(),
            consumer,
            producer,
            marker,
            catalog_topic,
            nodes_topic,
            catalog_tx,
            views_tx,
            subscriptions_tx,
            loaded_tx,
            nodes: nodes.clone(),
            stop: stop.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("strata-kafka-meta".into())
            .spawn(move || reader.run())
            .map_err(|e| Error::Unavailable(format!("cannot start the catalog reader: {e}")))?;
        Ok(Self {
            catalog: catalog_rx,
            views: views_rx,
            subscriptions: subscriptions_rx,
            loaded: loaded_rx,
            nodes,
            stop,
            thread: Some(thread),
        })
    }

    /// Waits until the catalog has been read up to this node's start.
    pub(crate) async fn wait_loaded(&self, timeout: Duration) -> Result<()> {
        let mut loaded = self.loaded.clone();
        match tokio::time::timeout(timeout, loaded.wait_for(|l| *l)).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(Error::Unavailable(format!(
                "the catalog topic could not be read within {timeout:?}"
            ))
            .into()),
        }
    }

    pub(crate) fn catalog(&self) -> watch::Receiver<Catalog> {
        self.catalog.clone()
    }

    pub(crate) fn views(&self) -> watch::Receiver<ViewCatalog> {
        self.views.clone()
    }

    pub(crate) fn subscriptions(&self) -> watch::Receiver<SubscriptionCatalog> {
        self.subscriptions.clone()
    }

    pub(crate) fn nodes(&self) -> BTreeMap<String, NodeStatus> {
        self.nodes.lock().clone()
    }
}

impl Drop for Meta {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct Reader {
    runtime: tokio::runtime::Handle,
    config: KafkaConfig,
    consumer: BaseConsumer,
    producer: EventProducer,
    marker: String,
    catalog_topic: String,
    nodes_topic: String,
    catalog_tx: watch::Sender<Catalog>,
    views_tx: watch::Sender<ViewCatalog>,
    subscriptions_tx: watch::Sender<SubscriptionCatalog>,
    loaded_tx: watch::Sender<bool>,
    nodes: Arc<Mutex<BTreeMap<String, NodeStatus>>>,
    stop: Arc<AtomicBool>,
}

impl Reader {
    fn run(self) {
        let mut catalog: BTreeMap<StreamName, StreamInfo> = BTreeMap::new();
        let mut views: BTreeMap<String, SharedView> = BTreeMap::new();
        let mut subscriptions: BTreeMap<String, SubscriptionState> = BTreeMap::new();
        let mut last_discovery = Instant::now();
        let mut unlisted: HashSet<String> = HashSet::new();
        let refresh = Duration::from_millis(self.config.refresh_ms.max(100));
        while !self.stop.load(Ordering::Relaxed) {
            let mut changed = false;
            let mut views_changed = false;
            let mut subscriptions_changed = false;
            let mut wait = Duration::from_millis(100);
            for _ in 0..10_000 {
                let Some(message) = self.consumer.poll(wait) else {
                    break;
                };
                wait = Duration::ZERO;
                let message = match message {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::debug!(error = %e, "catalog reader");
                        break;
                    }
                };
                let key = message
                    .key()
                    .map(|k| String::from_utf8_lossy(k).into_owned())
                    .unwrap_or_default();
                if message.topic() == self.catalog_topic {
                    if key == self.marker {
                        self.loaded_tx.send_replace(true);
                        continue;
                    }
                    if key.starts_with(MARKER_PREFIX) {
                        continue;
                    }
                    if let Some(name) = key.strip_prefix(VIEW_PREFIX) {
                        views_changed |= apply_view(&mut views, name, message.payload());
                        continue;
                    }
                    if let Some(name) = key.strip_prefix(SUBSCRIPTION_PREFIX) {
                        subscriptions_changed |=
                            apply_subscription(&mut subscriptions, name, message.payload());
                        continue;
                    }
                    let Some(payload) = message.payload() else {
                        continue;
                    };
                    match serde_json::from_slice::<StreamInfo>(payload) {
                        Ok(info) if info.name.as_str() == key => {
                            changed |= merge_entry(&mut catalog, info);
                        }
                        _ => tracing::warn!(key, "ignoring an unreadable catalog entry"),
                    }
                } else if message.topic() == self.nodes_topic {
                    match message.payload().map(serde_json::from_slice::<NodeStatus>) {
                        Some(Ok(status)) => {
                            self.nodes.lock().insert(status.node.clone(), status);
                        }
                        _ => {
                            self.nodes.lock().remove(&key);
                        }
                    }
                }
            }
            if changed {
                self.catalog_tx.send_replace(Arc::new(catalog.clone()));
            }
            if views_changed {
                self.views_tx.send_replace(Arc::new(views.clone()));
            }
            if subscriptions_changed {
                self.subscriptions_tx
                    .send_replace(Arc::new(subscriptions.clone()));
            }
            if *self.loaded_tx.borrow() && last_discovery.elapsed() >= refresh {
                last_discovery = Instant::now();
                self.discover(&catalog, &mut unlisted);
            }
        }
    }

    /// Adopts topics with a stream's name that the catalog does not list, once they have been
    /// seen twice (so that a stream being created by another node gets its own entry first).
    fn discover(&self, catalog: &BTreeMap<StreamName, StreamInfo>, unlisted: &mut HashSet<String>) {
        let metadata = match self
            .producer
            .client()
            .fetch_metadata(None, Duration::from_secs(5))
        {
            Ok(md) => md,
            Err(e) => {
                tracing::debug!(error = %e, "cannot list topics");
                return;
            }
        };
        let mut seen = HashSet::new();
        for topic in metadata.topics() {
            let Some(name) = self.config.stream_of(topic.name()) else {
                continue;
            };
            let partitions = topic.partitions().len() as u32;
            if topic.error().is_some() || partitions == 0 {
                continue;
            }
            let listed = catalog.get(&name).map(|i| i.partitions);
            if listed.is_some_and(|n| n >= partitions) {
                continue;
            }
            seen.insert(topic.name().to_owned());
            if !unlisted.contains(topic.name()) {
                continue;
            }
            let info = StreamInfo {
                name: name.clone(),
                partitions: partitions.min(StreamInfo::MAX_PARTITIONS),
                fields: Vec::new(),
            };
            let Ok(value) = serde_json::to_vec(&info) else {
                continue;
            };
            tracing::info!(
                topic = topic.name(),
                partitions,
                "adopting a topic as a stream"
            );
            let sent = self.runtime.block_on(send_one(
                &self.producer,
                &self.catalog_topic,
                0,
                Some(name.as_str()),
                Some(&value),
                None,
                Duration::from_secs(5),
            ));
            if let Err(e) = sent {
                tracing::warn!(error = %e, topic = topic.name(), "cannot adopt the topic");
            }
        }
        *unlisted = seen;
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        let _ = self.producer.flush(Duration::from_secs(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_proto::{FieldDef, FieldType};

    fn field(name: &str) -> FieldDef {
        FieldDef {
            name: name.into(),
            field_type: FieldType::Long,
            since: vec![],
        }
    }

    #[test]
    fn view_records_define_replace_and_drop() {
        let def = |query: &str| SharedView {
            name: "by_country".into(),
            stream: StreamName::new("orders").unwrap(),
            query: query.into(),
        };
        let mut views = BTreeMap::new();
        let json = |d: &SharedView| serde_json::to_vec(d).unwrap();
        assert!(apply_view(&mut views, "by_country", Some(&json(&def("a")))));
        assert!(!apply_view(
            &mut views,
            "by_country",
            Some(&json(&def("a")))
        ));
        assert!(apply_view(&mut views, "by_country", Some(&json(&def("b")))));
        assert_eq!(views["by_country"].query, "b");
        // A record whose key and name disagree, or garbage, changes nothing.
        assert!(!apply_view(&mut views, "other", Some(&json(&def("c")))));
        assert!(!apply_view(&mut views, "by_country", Some(b"{")));
        assert!(apply_view(&mut views, "by_country", None));
        assert!(views.is_empty());
        assert!(!apply_view(&mut views, "by_country", None));
    }

    #[test]
    fn entries_merge_without_loss() {
        let name = StreamName::new("orders").unwrap();
        let mut catalog = BTreeMap::new();
        let entry = |partitions, fields| StreamInfo {
            name: name.clone(),
            partitions,
            fields,
        };
        assert!(merge_entry(&mut catalog, entry(4, vec![field("a")])));
        // An adoption with no fields and a creation with more fields, in any order.
        assert!(!merge_entry(&mut catalog, entry(4, vec![])));
        assert!(merge_entry(
            &mut catalog,
            entry(4, vec![field("a"), field("b")])
        ));
        assert!(merge_entry(&mut catalog, entry(6, vec![])));
        let info = &catalog[&name];
        assert_eq!(info.partitions, 6);
        let names: Vec<_> = info.fields.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
    }
}
