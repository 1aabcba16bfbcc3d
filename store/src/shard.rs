//! The store: one fjall database holding a shard per stream partition.

use crate::block::{
    BlockMeta, column_key, decode_tail, encode_block, encode_tail, rows_to_stored, stored_offsets,
    stored_schema, widen,
};
use crate::scan::{ScanRequest, ShardScan};
use crate::views::{ViewEntry, commit_views};
use crate::{Error, Result};
use fjall::{Database, Keyspace, KeyspaceCreateOptions, KvSeparationOptions, Readable};
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use strata_proto::{Catalog, FieldDef, IdLookup, Record, ShardSink, StreamInfo, StreamName};
use tokio::sync::watch;

/// Settings of a store node.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Events per columnar block.
    pub block_rows: usize,
    /// Most events applied in one store commit.
    pub commit_max_events: usize,
    /// fjall block cache, in bytes.
    pub cache_bytes: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            block_rows: 16_384,
            commit_max_events: 8_192,
            cache_bytes: 128 << 20,
        }
    }
}

/// What a shard holds, for listings and lag.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ShardStatus {
    /// The partition.
    pub partition: u32,
    /// The next offset the shard has not applied.
    pub stored_offset: u64,
    /// Events still in row form.
    pub tail_rows: u64,
    /// Events stored.
    pub rows: u64,
}

/// Progress of one shard, persisted in `meta` with every commit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ShardState {
    /// Next offset to apply.
    pub next: u64,
    /// Rows in the tail.
    pub tail_rows: u64,
    /// Offset after the last block (every tail row is at or after it).
    pub tail_start: u64,
    /// Events stored (duplicates skipped are not counted).
    pub rows: u64,
}

const STATE_VERSION: u8 = 1;

impl ShardState {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(33);
        out.push(STATE_VERSION);
        for v in [self.next, self.tail_rows, self.tail_start, self.rows] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        let (&STATE_VERSION, rest) = bytes.split_first()? else {
            return None;
        };
        let mut words = rest.chunks_exact(8).map(|c| {
            let mut b = [0u8; 8];
            b.copy_from_slice(c);
            u64::from_le_bytes(b)
        });
        Some(Self {
            next: words.next()?,
            tail_rows: words.next()?,
            tail_start: words.next()?,
            rows: words.next()?,
        })
    }
}

/// One partition's shard: its keyspaces and progress.
pub(crate) struct Shard {
    pub stream: StreamName,
    pub partition: u32,
    pub tail: Keyspace,
    pub blocks: Keyspace,
    pub bmeta: Keyspace,
    pub ids: Keyspace,
    pub keys: Keyspace,
    pub state: Mutex<ShardState>,
    pub progress: watch::Sender<u64>,
}

impl Shard {
    pub fn label(&self) -> String {
        format!("{}/{}", self.stream, self.partition)
    }
}

/// Key of `offset` in `tail`, `blocks` and `bmeta`.
pub(crate) fn offset_key(offset: u64) -> [u8; 8] {
    offset.to_be_bytes()
}

/// Key of an event key at `offset` in `keys`.
pub(crate) fn key_index_key(key: &str, offset: u64) -> Vec<u8> {
    let mut out = key_index_prefix(key);
    out.extend_from_slice(&offset.to_be_bytes());
    out
}

/// Prefix of every `keys` entry of `key`.
pub(crate) fn key_index_prefix(key: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + 10);
    out.extend_from_slice(&(key.len() as u16).to_be_bytes());
    out.extend_from_slice(key.as_bytes());
    out
}

/// A store node's data: every shard it holds, in one fjall database.
pub struct Store {
    pub(crate) db: Database,
    pub(crate) meta: Keyspace,
    config: StoreConfig,
    shards: RwLock<HashMap<(StreamName, u32), Arc<Shard>>>,
    catalog: RwLock<watch::Receiver<Catalog>>,
    pub(crate) views: RwLock<BTreeMap<String, ViewEntry>>,
    /// Set once fjall refuses all writes (poisoned after a failed flush or journal write, e.g.
    /// a full disk): only reopening the store recovers it.
    failed: watch::Sender<Option<String>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("shards", &self.shards.read().len())
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path, config: StoreConfig) -> Result<Arc<Self>> {
        let db = Database::builder(dir)
            .cache_size(config.cache_bytes)
            .max_journaling_size(64 << 20)
            .open()?;
        let meta = db.keyspace("meta", KeyspaceCreateOptions::default)?;
        let (_, catalog) = watch::channel(Catalog::default());
        let store = Self {
            db,
            meta,
            config,
            shards: RwLock::new(HashMap::new()),
            catalog: RwLock::new(catalog),
            views: RwLock::new(BTreeMap::new()),
            failed: watch::channel(None).0,
        };
        store.open_views()?;
        Ok(Arc::new(store))
    }

    /// Why the store can no longer write, once it cannot (see [`Store::failures`]).
    pub fn failure(&self) -> Option<String> {
        self.failed.borrow().clone()
    }

    /// Follows [`Store::failure`]: a store that failed this way stays failed until it is opened
    /// again (fjall then recovers from its journal, and the log supplies the rest).
    pub fn failures(&self) -> watch::Receiver<Option<String>> {
        self.failed.subscribe()
    }

    /// Notes `e` if it means the database refuses all further writes.
    fn note_fatal(&self, e: Error) -> Error {
        if matches!(e, Error::Storage(fjall::Error::Poisoned)) && self.failed.borrow().is_none() {
            let reason =
                "the store's database refuses writes after a failed flush or journal write \
                          (is its disk full?)"
                    .to_owned();
            tracing::error!("{reason}");
            self.failed.send_replace(Some(reason));
        }
        e
    }

    /// The store's settings.
    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    /// Follows the log's catalog: the streams this store serves are the log's, as soon as the log
    /// has them.
    pub fn follow_catalog(&self, catalog: watch::Receiver<Catalog>) {
        *self.catalog.write() = catalog;
    }

    /// Serves a fixed catalog (for tools and tests that have no log).
    pub fn set_catalog(&self, catalog: Catalog) {
        let (_, rx) = watch::channel(catalog);
        self.follow_catalog(rx);
    }

    /// Every stream this store knows.
    pub fn catalog(&self) -> Catalog {
        self.catalog.read().borrow().clone()
    }

    /// The stream `name`, or [`strata_proto::Error::UnknownStream`].
    pub fn stream(&self, name: &StreamName) -> Result<StreamInfo> {
        self.catalog()
            .get(name)
            .cloned()
            .ok_or_else(|| strata_proto::Error::UnknownStream(name.to_string()).into())
    }

    pub(crate) fn shard(&self, stream: &StreamName, partition: u32) -> Result<Arc<Shard>> {
        if let Some(shard) = self.shards.read().get(&(stream.clone(), partition)) {
            return Ok(shard.clone());
        }
        self.stream(stream)?.check_partition(partition)?;
        let mut shards = self.shards.write();
        if let Some(shard) = shards.get(&(stream.clone(), partition)) {
            return Ok(shard.clone());
        }
        let name = |kind: &str| format!("{stream}.{partition}.{kind}");
        let small = || KeyspaceCreateOptions::default().max_memtable_size(8 << 20);
        let state = match self.meta.get(state_key(stream, partition))? {
            Some(bytes) => ShardState::decode(&bytes).ok_or_else(|| Error::Corrupt {
                location: format!("meta of {stream}/{partition}"),
                reason: "unreadable shard state".into(),
            })?,
            None => ShardState::default(),
        };
        let (progress, _) = watch::channel(state.next);
        let shard = Arc::new(Shard {
            stream: stream.clone(),
            partition,
            tail: self.db.keyspace(&name("tail"), small)?,
            blocks: self.db.keyspace(&name("blocks"), || {
                // Column values are read whole and often; uncompressed, see block.rs.
                small().with_kv_separation(Some(
                    KvSeparationOptions::default().compression(fjall::CompressionType::None),
                ))
            })?,
            bmeta: self.db.keyspace(&name("bmeta"), small)?,
            ids: self.db.keyspace(&name("ids"), small)?,
            keys: self.db.keyspace(&name("keys"), small)?,
            state: Mutex::new(state),
            progress,
        });
        shards.insert((stream.clone(), partition), shard.clone());
        Ok(shard)
    }

    /// The next offset the shard of `stream`/`partition` has not applied.
    pub fn next_offset(&self, stream: &StreamName, partition: u32) -> Result<u64> {
        Ok(self.shard(stream, partition)?.state.lock().next)
    }

    /// Status of every shard of `stream`.
    pub fn status(&self, stream: &StreamName) -> Result<Vec<ShardStatus>> {
        let info = self.stream(stream)?;
        (0..info.partitions)
            .map(|p| {
                let state = *self.shard(stream, p)?.state.lock();
                Ok(ShardStatus {
                    partition: p,
                    stored_offset: state.next,
                    tail_rows: state.tail_rows,
                    rows: state.rows,
                })
            })
            .collect()
    }

    /// Follows the shard's next offset as commits advance it.
    pub fn subscribe(&self, stream: &StreamName, partition: u32) -> Result<watch::Receiver<u64>> {
        Ok(self.shard(stream, partition)?.progress.subscribe())
    }

    /// Applies `records` (consecutive reads of the partition) in one atomic write batch: events
    /// not yet stored and whose id the shard does not hold become one tail chunk, with their index
    /// entries, the new next offset, and what they change in every view over the stream. Then
    /// turns full blocks of the tail into columnar blocks. Blocking.
    pub fn commit(&self, stream: &StreamName, partition: u32, records: Vec<Record>) -> Result<u64> {
        self.commit_through(stream, partition, records, 0)
    }

    /// [`Store::commit`], moving the shard's next offset to at least `through` even past the last
    /// record (the log's records after it are not events); views move with it.
    pub fn commit_through(
        &self,
        stream: &StreamName,
        partition: u32,
        records: Vec<Record>,
        through: u64,
    ) -> Result<u64> {
        self.apply(stream, partition, records, through)
            .map_err(|e| self.note_fatal(e))
    }

    fn apply(
        &self,
        stream: &StreamName,
        partition: u32,
        records: Vec<Record>,
        through: u64,
    ) -> Result<u64> {
        let shard = self.shard(stream, partition)?;
        let info = self.stream(stream)?;
        let fields = info.fields.clone();
        let slots = self.slots_of(stream);
        let mut state = shard.state.lock();
        let mut next = *state;
        let mut batch = self.db.batch();
        let mut seen = HashSet::new();
        let mut accepted = Vec::with_capacity(records.len());
        let mut skipped = 0u64;
        for record in records {
            if record.offset < next.next {
                continue;
            }
            next.next = record.offset + 1;
            if let Some(id) = &record.event.id {
                if !seen.insert(id.clone()) || shard.ids.contains_key(id.as_bytes())? {
                    skipped += 1;
                    continue;
                }
                batch.insert(&shard.ids, id.as_bytes(), offset_key(record.offset));
            }
            if let Some(key) = &record.event.key {
                batch.insert(&shard.keys, key_index_key(key, record.offset), b"");
            }
            accepted.push((record.offset, record.event));
        }
        next.next = next.next.max(through);
        if next == *state {
            return Ok(state.next);
        }
        let mut chunk = None;
        if let Some((first, _)) = accepted.first() {
            let rows = rows_to_stored(&accepted, partition, &fields)?;
            batch.insert(&shard.tail, offset_key(*first), encode_tail(&rows)?);
            next.tail_rows += accepted.len() as u64;
            next.rows += accepted.len() as u64;
            chunk = Some(rows);
        }
        let views = self.fold_into_views(
            &slots,
            &info,
            partition,
            (state.next, next.next),
            chunk.as_ref(),
            &mut batch,
        )?;
        batch.insert(&self.meta, state_key(stream, partition), next.encode());
        batch.commit()?;
        commit_views(views, partition, next.next);
        *state = next;
        if skipped > 0 {
            metrics::counter!("strata_store_duplicates_skipped_total", "stream" => stream.to_string())
                .increment(skipped);
        }
        if state.tail_rows >= self.config.block_rows as u64 {
            self.compact(&shard, &fields, &mut state)?;
        }
        shard.progress.send_replace(state.next);
        Ok(state.next)
    }

    /// Turns the oldest `block_rows` tail rows into a columnar block (and the rest of the tail into
    /// one chunk), while the tail holds that many. Block boundaries depend only on the stored
    /// events, so a rebuild from the log makes the same blocks.
    fn compact(&self, shard: &Shard, fields: &[FieldDef], state: &mut ShardState) -> Result<()> {
        let block_rows = self.config.block_rows.max(1);
        while state.tail_rows >= block_rows as u64 {
            let mut keys = Vec::new();
            let mut chunks = Vec::new();
            for item in shard.tail.range(offset_key(state.tail_start)..) {
                let (k, v) = item.into_inner()?;
                let label = || format!("{} tail chunk {:?}", shard.label(), &*k);
                chunks.push(widen(decode_tail(&v, None, label)?, fields)?);
                keys.push(k);
            }
            let all = arrow::compute::concat_batches(&stored_schema(fields), &chunks)?;
            let mut next = *state;
            if all.num_rows() < block_rows {
                // The counter ran ahead of the rows (it cannot, but never loop on it).
                next.tail_rows = all.num_rows() as u64;
                self.meta
                    .insert(state_key(&shard.stream, shard.partition), next.encode())?;
                *state = next;
                break;
            }
            let (columns, meta) = encode_block(&all.slice(0, block_rows))?;
            let rest = all.slice(block_rows, all.num_rows() - block_rows);
            let mut batch = self.db.batch();
            for (column, value) in columns {
                batch.insert(&shard.blocks, column_key(meta.first, column), value);
            }
            batch.insert(&shard.bmeta, offset_key(meta.first), meta.encode());
            for k in keys {
                batch.remove(&shard.tail, k);
            }
            if let Some(first) = stored_offsets(&rest)?.first() {
                batch.insert(&shard.tail, offset_key(*first as u64), encode_tail(&rest)?);
            }
            next.tail_rows -= block_rows as u64;
            next.tail_start = meta.last + 1;
            batch.insert(
                &self.meta,
                state_key(&shard.stream, shard.partition),
                next.encode(),
            );
            batch.commit()?;
            *state = next;
            metrics::counter!("strata_store_blocks_written_total").increment(1);
        }
        Ok(())
    }

    /// Opens a scan of one shard (see [`ScanRequest`]). The scan reads a consistent snapshot.
    pub fn scan(
        &self,
        stream: &StreamName,
        partition: u32,
        request: ScanRequest,
    ) -> Result<ShardScan> {
        let shard = self.shard(stream, partition)?;
        let (state, snapshot) = {
            let state = shard.state.lock();
            (*state, self.db.snapshot())
        };
        let info = self.stream(stream)?;
        ShardScan::new(shard, &info, snapshot, state, request)
    }

    /// The first offset of the partition whose event time is at or after `time_ms` (the end of
    /// the shard when there is none), as Kafka's offsets-for-times answers it.
    pub fn offset_for_time(
        &self,
        stream: &StreamName,
        partition: u32,
        time_ms: i64,
    ) -> Result<u64> {
        let shard = self.shard(stream, partition)?;
        let (state, snapshot) = {
            let state = shard.state.lock();
            (*state, self.db.snapshot())
        };
        crate::scan::offset_for_time(&shard, &snapshot, state, time_ms)
    }

    /// Flushes the store's journal to disk.
    pub fn persist(&self) -> Result<()> {
        Ok(self.db.persist(fjall::PersistMode::SyncAll)?)
    }
}

fn state_key(stream: &StreamName, partition: u32) -> Vec<u8> {
    format!("{stream}/{partition}").into_bytes()
}

impl IdLookup for Store {
    fn stored_next_offset(&self, stream: &StreamName, partition: u32) -> strata_proto::Result<u64> {
        Ok(self.next_offset(stream, partition)?)
    }

    fn lookup_ids(
        &self,
        stream: &StreamName,
        partition: u32,
        ids: &[&str],
    ) -> strata_proto::Result<Vec<Option<u64>>> {
        let shard = self.shard(stream, partition)?;
        ids.iter()
            .map(|id| {
                let found = shard.ids.get(id.as_bytes()).map_err(Error::from)?;
                Ok(found
                    .and_then(|v| <[u8; 8]>::try_from(&*v).ok())
                    .map(u64::from_be_bytes))
            })
            .collect()
    }
}

impl ShardSink for Store {
    fn commit_through(
        &self,
        stream: &StreamName,
        partition: u32,
        records: Vec<Record>,
        through: u64,
    ) -> strata_proto::Result<u64> {
        Ok(Store::commit_through(
            self, stream, partition, records, through,
        )?)
    }
}

/// Block metadata of a shard, ascending, through a snapshot.
pub(crate) fn block_metas(shard: &Shard, snapshot: &fjall::Snapshot) -> Result<Vec<BlockMeta>> {
    snapshot
        .iter(&shard.bmeta)
        .map(|item| {
            let (k, v) = item.into_inner().map_err(|e| {
                Error::reading(e, &shard.label(), &shard.bmeta, || "the block index".into())
            })?;
            BlockMeta::decode(&v, || format!("{} block {:?}", shard.label(), &*k))
        })
        .collect()
}
