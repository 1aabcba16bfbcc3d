//! The embedded on-disk log, strata's default backend.
//!
//! Layout under its directory:
//! ```text
//! catalog.json                  streams and their partition counts
//! subscriptions.json            durable subscriptions and their acknowledged cursors
//! <stream>/<partition>/<base>.log   segments of checksummed frames (see [`frame`])
//! <stream>/<partition>/<base>.idx   sparse index of a sealed segment
//! ```
//! Every partition has one writer task: appends queue up while the previous group is being
//! fsync'd and the next group shares one `fdatasync` (group commit). Readers only ever see
//! durable frames. Opening a partition truncates a torn tail of its active segment, which holds
//! nothing that was acknowledged.

pub mod frame;
mod partition;
pub mod segment;
mod subscriptions;

pub use partition::EmbeddedReader;

use partition::{PartitionLog, WriterConfig};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use strata_proto::fields::merge_fields;
use strata_proto::{
    Catalog, Error, Event, FieldSpec, Log, LogReader, OffsetRange, Result, StreamInfo, StreamName,
};
use tokio::sync::watch;

/// Settings of the embedded log.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmbeddedLogConfig {
    /// A segment is sealed and a new one started once it holds this many bytes.
    pub segment_bytes: u64,
    /// A group commit takes queued appends until it holds about this many bytes.
    pub group_commit_bytes: usize,
    /// Sealed segments are deleted, oldest first, while a partition holds more than this many
    /// bytes (none: no limit). Never one whose events are not all in the shards.
    pub retention_bytes: Option<u64>,
    /// Sealed segments last written longer ago than this (milliseconds) are deleted (none: kept
    /// forever). Never one whose events are not all in the shards.
    pub retention_ms: Option<u64>,
}

impl Default for EmbeddedLogConfig {
    fn default() -> Self {
        Self {
            segment_bytes: 64 << 20,
            group_commit_bytes: 8 << 20,
            retention_bytes: None,
            retention_ms: None,
        }
    }
}

#[derive(Default, Serialize, Deserialize)]
struct CatalogFile {
    streams: Vec<StreamInfo>,
}

/// The embedded log: partitioned segment files in one directory.
pub struct EmbeddedLog {
    dir: PathBuf,
    config: EmbeddedLogConfig,
    partitions: parking_lot::RwLock<HashMap<StreamName, Arc<Vec<PartitionLog>>>>,
    catalog: watch::Sender<Catalog>,
    create: tokio::sync::Mutex<()>,
    /// Partitions whose retention waits for the shards (logged once when that starts).
    retention_held: parking_lot::Mutex<HashSet<(StreamName, u32)>>,
    subscriptions: Arc<subscriptions::Subscriptions>,
}

impl EmbeddedLog {
    /// Opens the log in `dir` (creating it), recovering every partition of every stream.
    /// Must be called inside a tokio runtime: each partition starts a writer task.
    pub fn open(dir: &Path, config: EmbeddedLogConfig) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir.display().to_string(), e))?;
        let catalog_path = dir.join("catalog.json");
        let file: CatalogFile = match std::fs::read(&catalog_path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| Error::Corrupt(format!("{}: {e}", catalog_path.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => CatalogFile::default(),
            Err(e) => return Err(Error::io(catalog_path.display().to_string(), e)),
        };
        let mut partitions = HashMap::new();
        let mut catalog = BTreeMap::new();
        for info in file.streams {
            let logs = open_partitions(dir, &info, &config)?;
            partitions.insert(info.name.clone(), Arc::new(logs));
            catalog.insert(info.name.clone(), info);
        }
        let (catalog, _) = watch::channel(Arc::new(catalog));
        Ok(Self {
            dir: dir.to_owned(),
            config,
            partitions: parking_lot::RwLock::new(partitions),
            catalog,
            create: tokio::sync::Mutex::new(()),
            retention_held: parking_lot::Mutex::new(HashSet::new()),
            subscriptions: Arc::new(subscriptions::Subscriptions::open(dir)?),
        })
    }

    /// Whether any retention is configured.
    pub fn has_retention(&self) -> bool {
        self.config.retention_bytes.is_some() || self.config.retention_ms.is_some()
    }

    /// Applies retention to every partition. `stored` gives the offset below which a partition's
    /// events are in the shards; nothing at or after it is deleted, however old or large. Returns
    /// the segments deleted; partitions held back by the shards are logged and counted in
    /// `strata_log_retention_held_partitions`.
    pub fn enforce_retention(&self, stored: &dyn Fn(&StreamName, u32) -> u64) -> Result<usize> {
        let (bytes, ms) = (self.config.retention_bytes, self.config.retention_ms);
        let expired = |total: u64, age: Option<std::time::Duration>| {
            bytes.is_some_and(|b| total > b)
                || ms.is_some_and(|ms| age.is_some_and(|a| a.as_millis() > u128::from(ms)))
        };
        let all: Vec<(StreamName, Arc<Vec<PartitionLog>>)> = self
            .partitions
            .read()
            .iter()
            .map(|(s, l)| (s.clone(), l.clone()))
            .collect();
        let mut deleted = 0;
        let mut held = self.retention_held.lock();
        for (stream, logs) in all {
            for (p, log) in (0u32..).zip(logs.iter()) {
                let (d, kept) = log.enforce_retention(stored(&stream, p), expired)?;
                deleted += d;
                let key = (stream.clone(), p);
                if !kept {
                    held.remove(&key);
                } else if held.insert(key) {
                    // Said once per episode; the gauge tells how many are held meanwhile.
                    tracing::warn!(%stream, partition = p,
                        "a log segment past retention is kept: its events are not all in the shards yet");
                }
            }
        }
        metrics::gauge!("strata_log_retention_held_partitions").set(held.len() as f64);
        metrics::counter!("strata_log_retention_deleted_segments_total").increment(deleted as u64);
        Ok(deleted)
    }

    fn partition(&self, stream: &StreamName, partition: u32) -> Result<Arc<Vec<PartitionLog>>> {
        let logs = self
            .partitions
            .read()
            .get(stream)
            .cloned()
            .ok_or_else(|| Error::UnknownStream(stream.to_string()))?;
        if partition as usize >= logs.len() {
            return Err(Error::UnknownPartition {
                stream: stream.to_string(),
                partition,
                partitions: logs.len() as u32,
            });
        }
        Ok(logs)
    }

    /// Writes the catalog with `info` in it, then makes it current.
    fn publish(&self, info: StreamInfo) -> Result<()> {
        let mut next = (**self.catalog.borrow()).clone();
        next.insert(info.name.clone(), info);
        let next = Arc::new(next);
        self.write_catalog(&next)?;
        self.catalog.send_replace(next);
        Ok(())
    }

    fn write_catalog(&self, catalog: &Catalog) -> Result<()> {
        let file = CatalogFile {
            streams: catalog.values().cloned().collect(),
        };
        let bytes = serde_json::to_vec_pretty(&file)
            .map_err(|e| Error::Corrupt(format!("catalog does not serialize: {e}")))?;
        subscriptions::write_atomically(&self.dir.join("catalog.json"), &bytes)
    }
}

fn open_partitions(
    dir: &Path,
    info: &StreamInfo,
    config: &EmbeddedLogConfig,
) -> Result<Vec<PartitionLog>> {
    let writer = WriterConfig {
        segment_bytes: config.segment_bytes.max(1),
        group_commit_bytes: config.group_commit_bytes,
    };
    (0..info.partitions)
        .map(|p| PartitionLog::open(&dir.join(info.name.as_str()).join(p.to_string()), p, writer))
        .collect()
}

#[async_trait::async_trait]
impl Log for EmbeddedLog {
    fn preload_ids(&self) -> bool {
        true
    }

    fn subscriptions(&self) -> watch::Receiver<strata_proto::SubscriptionCatalog> {
        self.subscriptions.watch()
    }

    async fn put_subscription(
        &self,
        name: &str,
        state: Option<&strata_proto::SubscriptionState>,
    ) -> Result<()> {
        // A small file, but written with two fsyncs: off the async threads.
        let (subscriptions, name, state) =
            (self.subscriptions.clone(), name.to_owned(), state.cloned());
        tokio::task::spawn_blocking(move || subscriptions.put(&name, state.as_ref()))
            .await
            .map_err(|e| Error::Unavailable(format!("writing subscriptions failed: {e}")))?
    }

    fn has_retention(&self) -> bool {
        EmbeddedLog::has_retention(self)
    }

    fn enforce_retention(&self, stored: &dyn Fn(&StreamName, u32) -> u64) -> Result<usize> {
        EmbeddedLog::enforce_retention(self, stored)
    }

    async fn create_stream(
        &self,
        name: &StreamName,
        partitions: u32,
        fields: &[FieldSpec],
    ) -> Result<(StreamInfo, bool)> {
        StreamInfo::check_partitions(partitions)?;
        let _guard = self.create.lock().await;
        if let Some(info) = self.catalog.borrow().get(name) {
            info.expect_partitions(partitions)?;
            return Ok((info.clone(), false));
        }
        let mut declared = Vec::new();
        merge_fields(&mut declared, fields, &[])?;
        let info = StreamInfo {
            name: name.clone(),
            partitions,
            fields: declared,
        };
        let logs = open_partitions(&self.dir, &info, &self.config)?;
        // Partitions first: once the catalog names the stream, appends to it must find them.
        self.partitions.write().insert(name.clone(), Arc::new(logs));
        self.publish(info.clone())?;
        tracing::info!(stream = %name, partitions, fields = info.fields.len(), "stream created");
        Ok((info, true))
    }

    async fn add_fields(&self, name: &StreamName, fields: &[FieldSpec]) -> Result<StreamInfo> {
        let _guard = self.create.lock().await;
        let mut info = self
            .catalog
            .borrow()
            .get(name)
            .cloned()
            .ok_or_else(|| Error::UnknownStream(name.to_string()))?;
        let since: Vec<u64> = self
            .partition(name, 0)?
            .iter()
            .map(PartitionLog::end_offset)
            .collect();
        if merge_fields(&mut info.fields, fields, &since)? {
            self.publish(info.clone())?;
            tracing::info!(stream = %name, fields = info.fields.len(), "fields declared");
        }
        Ok(info)
    }

    fn catalog(&self) -> watch::Receiver<Catalog> {
        self.catalog.subscribe()
    }

    async fn append(
        &self,
        stream: &StreamName,
        partition: u32,
        events: Vec<Event>,
    ) -> Result<OffsetRange> {
        let logs = self.partition(stream, partition)?;
        logs[partition as usize].append(events).await
    }

    async fn end_offset(&self, stream: &StreamName, partition: u32) -> Result<u64> {
        Ok(self.partition(stream, partition)?[partition as usize].end_offset())
    }

    async fn open_reader(
        &self,
        stream: &StreamName,
        partition: u32,
        from: u64,
    ) -> Result<Box<dyn LogReader>> {
        Ok(Box::new(
            self.partition(stream, partition)?[partition as usize].reader(from)?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ev(i: u64) -> Event {
        Event {
            time_ms: i as i64,
            key: Some(format!("k{i}")),
            id: None,
            event_type: None,
            data: format!("{{\"i\":{i}}}"),
            condition: None,
        }
    }

    async fn read_all(log: &EmbeddedLog, s: &StreamName, p: u32, from: u64) -> Vec<Record> {
        let mut r = log.open_reader(s, p, from).await.unwrap();
        let mut out = Vec::new();
        loop {
            let batch = r.next_batch(7, Duration::from_millis(20)).await.unwrap();
            if batch.is_empty() {
                return out;
            }
            out.extend(batch);
        }
    }

    use strata_proto::Record;

    #[tokio::test]
    async fn append_read_reopen_and_roll_segments() {
        let dir = tempfile::tempdir().unwrap();
        let s = StreamName::new("orders").unwrap();
        let config = EmbeddedLogConfig {
            segment_bytes: 100,
            group_commit_bytes: 1 << 20,
            ..EmbeddedLogConfig::default()
        };
        {
            let log = EmbeddedLog::open(dir.path(), config.clone()).unwrap();
            assert!(log.create_stream(&s, 2, &[]).await.unwrap().1);
            assert!(!log.create_stream(&s, 2, &[]).await.unwrap().1);
            assert!(matches!(
                log.create_stream(&s, 3, &[]).await,
                Err(Error::PartitionMismatch { .. })
            ));
            let mut next = 0;
            for n in [1u64, 5, 3, 10, 1, 1, 20] {
                let events: Vec<_> = (next..next + n).map(ev).collect();
                let r = log.append(&s, 1, events).await.unwrap();
                assert_eq!(
                    r,
                    OffsetRange {
                        first: next,
                        last: next + n - 1
                    }
                );
                next += n;
            }
            assert_eq!(log.end_offset(&s, 1).await.unwrap(), 41);
            assert_eq!(log.end_offset(&s, 0).await.unwrap(), 0);
            assert!(matches!(
                log.append(&s, 2, vec![ev(0)]).await,
                Err(Error::UnknownPartition { .. })
            ));
        }
        let segments = segment::list_segments(&dir.path().join("orders/1")).unwrap();
        assert!(segments.len() >= 3, "{segments:?}");
        let log = EmbeddedLog::open(dir.path(), config).unwrap();
        assert_eq!(log.catalog().borrow().len(), 1);
        for from in [0, 1, 6, 17, 40, 41, 50] {
            let records = read_all(&log, &s, 1, from).await;
            let offsets: Vec<u64> = records.iter().map(|r| r.offset).collect();
            assert_eq!(
                offsets,
                (from..41.max(from)).collect::<Vec<_>>(),
                "from {from}"
            );
            assert!(records.iter().all(|r| r.event == ev(r.offset)));
        }
        // Appends continue after the recovered end.
        assert_eq!(log.append(&s, 1, vec![ev(41)]).await.unwrap().first, 41);
    }

    #[tokio::test]
    async fn torn_tail_is_truncated_on_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let s = StreamName::new("t").unwrap();
        {
            let log = EmbeddedLog::open(dir.path(), EmbeddedLogConfig::default()).unwrap();
            log.create_stream(&s, 1, &[]).await.unwrap();
            log.append(&s, 0, (0..3).map(ev).collect()).await.unwrap();
            log.append(&s, 0, (3..5).map(ev).collect()).await.unwrap();
        }
        let seg = segment::segment_path(&dir.path().join("t/0"), 0);
        let len = std::fs::metadata(&seg).unwrap().len();
        // A crash in the middle of a write leaves half a frame.
        let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
        f.set_len(len - 5).unwrap();
        drop(f);
        let log = EmbeddedLog::open(dir.path(), EmbeddedLogConfig::default()).unwrap();
        assert_eq!(log.end_offset(&s, 0).await.unwrap(), 3);
        assert_eq!(read_all(&log, &s, 0, 0).await.len(), 3);
        assert_eq!(log.append(&s, 0, vec![ev(3)]).await.unwrap().first, 3);
        drop(log);
        // Garbage after the last frame (a checksum mismatch) is cut as well.
        let mut f = std::fs::OpenOptions::new().append(true).open(&seg).unwrap();
        std::io::Write::write_all(&mut f, &[7u8; 64]).unwrap();
        drop(f);
        let log = EmbeddedLog::open(dir.path(), EmbeddedLogConfig::default()).unwrap();
        assert_eq!(log.end_offset(&s, 0).await.unwrap(), 4);
    }

    #[tokio::test]
    async fn corrupt_sealed_segment_is_reported_with_its_location() {
        let dir = tempfile::tempdir().unwrap();
        let s = StreamName::new("c").unwrap();
        let config = EmbeddedLogConfig {
            segment_bytes: 100,
            group_commit_bytes: 1 << 20,
            ..EmbeddedLogConfig::default()
        };
        {
            let log = EmbeddedLog::open(dir.path(), config.clone()).unwrap();
            log.create_stream(&s, 1, &[]).await.unwrap();
            for i in 0..5 {
                log.append(&s, 0, vec![ev(i), ev(i + 100)]).await.unwrap();
            }
        }
        let pdir = dir.path().join("c/0");
        let first = segment::segment_path(&pdir, 0);
        std::fs::remove_file(segment::index_path(&pdir, 0)).unwrap();
        let mut bytes = std::fs::read(&first).unwrap();
        bytes[30] ^= 0xff;
        std::fs::write(&first, bytes).unwrap();
        let err = EmbeddedLog::open(dir.path(), config)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("00000000000000000000.log at byte 0: checksum mismatch"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn concurrent_appends_share_fsyncs_and_keep_every_event() {
        let dir = tempfile::tempdir().unwrap();
        let s = StreamName::new("g").unwrap();
        let log = Arc::new(EmbeddedLog::open(dir.path(), EmbeddedLogConfig::default()).unwrap());
        log.create_stream(&s, 1, &[]).await.unwrap();
        let mut tasks = Vec::new();
        for t in 0..16u64 {
            let log = log.clone();
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                let mut ranges = Vec::new();
                for i in 0..20u64 {
                    ranges.push(log.append(&s, 0, vec![ev(t * 1000 + i)]).await.unwrap());
                }
                ranges
            }));
        }
        let mut offsets = Vec::new();
        for t in tasks {
            offsets.extend(t.await.unwrap().into_iter().map(|r| r.first));
        }
        offsets.sort_unstable();
        assert_eq!(offsets, (0..320).collect::<Vec<_>>());
        assert_eq!(read_all(&log, &s, 0, 0).await.len(), 320);
    }

    #[tokio::test]
    async fn reader_waits_for_new_appends() {
        let dir = tempfile::tempdir().unwrap();
        let s = StreamName::new("w").unwrap();
        let log = Arc::new(EmbeddedLog::open(dir.path(), EmbeddedLogConfig::default()).unwrap());
        log.create_stream(&s, 1, &[]).await.unwrap();
        let mut reader = log.open_reader(&s, 0, 0).await.unwrap();
        let writer = {
            let log = log.clone();
            let s = s.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                log.append(&s, 0, vec![ev(0)]).await.unwrap();
            })
        };
        let batch = reader.next_batch(10, Duration::from_secs(5)).await.unwrap();
        assert_eq!(batch.len(), 1);
        assert_eq!(reader.position(), 1);
        writer.await.unwrap();
    }

    #[tokio::test]
    async fn retention_never_deletes_what_the_shards_have_not_stored() {
        let dir = tempfile::tempdir().unwrap();
        let s = StreamName::new("r").unwrap();
        let config = EmbeddedLogConfig {
            segment_bytes: 200,
            retention_bytes: Some(1),
            ..EmbeddedLogConfig::default()
        };
        let log = EmbeddedLog::open(dir.path(), config.clone()).unwrap();
        log.create_stream(&s, 1, &[]).await.unwrap();
        for i in 0..30 {
            log.append(&s, 0, vec![ev(i)]).await.unwrap();
        }
        let segments = || segment::list_segments(&dir.path().join("r/0")).unwrap();
        let before = segments();
        assert!(before.len() > 3, "{before:?}");
        // The shards hold nothing: nothing goes, however far past retention.
        assert_eq!(log.enforce_retention(&|_, _| 0).unwrap(), 0);
        assert_eq!(segments(), before);
        // They hold offsets below 12: only segments that end at or before it go.
        let deleted = log.enforce_retention(&|_, _| 12).unwrap();
        assert!(deleted > 0);
        let after = segments();
        assert!(after[0] <= 12 && after[0] > 0, "{after:?}");
        assert_eq!(
            read_all(&log, &s, 0, after[0]).await.len() as u64,
            30 - after[0]
        );
        let gone = match log.open_reader(&s, 0, 0).await {
            Err(e) => e,
            Ok(_) => panic!("a reader of a deleted offset"),
        };
        assert!(matches!(gone, Error::OffsetGone(_)), "{gone}");
        assert!(
            gone.to_string().contains("deleted by the log's retention"),
            "{gone}"
        );
        // All stored: everything but the active segment goes; a reopened log starts there.
        log.enforce_retention(&|_, _| 30).unwrap();
        assert_eq!(segments().len(), 1);
        drop(log);
        let log = EmbeddedLog::open(dir.path(), config).unwrap();
        assert_eq!(log.end_offset(&s, 0).await.unwrap(), 30);
        let range = log.append(&s, 0, vec![ev(30)]).await.unwrap();
        assert_eq!(range.first, 30);
    }
}
