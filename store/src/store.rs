//! The store: one fjall database holding a shard per stream partition and the materialized views
//! over them ([`ViewSet`]), and one for what shards write in bulk (`bulk.rs`). Commits and view
//! catch-up take the shard's lock here; the view set takes each view's lock after it.

use crate::block::{encode_tail, rows_to_stored};
use crate::blocks::BlockMaker;
use crate::keys::{offset_from, offset_key, state_key};
use crate::scan::{ScanRequest, ShardScan};
use crate::schema::{self, stream_schema};
use crate::shard::{Shard, ShardState, ShardStatus};
use crate::versions;
use crate::views::{ViewDef, ViewFold, ViewPartition, ViewSet, ViewStatus, commit_views};
use crate::{Error, Result};
use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::Int64Type;
use fjall::{Database, Keyspace, KeyspaceCreateOptions};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use strata_proto::{Catalog, IdLookup, Record, ShardSink, StreamInfo, StreamName};
use tokio::sync::watch;

/// Settings of a store node.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Events per columnar block.
    pub block_rows: usize,
    /// Most events applied in one store commit.
    pub commit_max_events: usize,
    /// fjall block cache, in bytes: half for the shards' database, half for the bulk database
    /// (blocks and their id and key indexes, see `bulk.rs`).
    pub cache_bytes: u64,
    /// Blocks are made in the background while commits go on; a commit makes them itself once
    /// the tail holds this many blocks' worth of rows (1: every block in the commit that fills
    /// it, as the shard's writes are then ordered exactly; higher lets appends run ahead of the
    /// block maker, and bounds the tail and its in-memory index).
    pub block_backlog: u64,
    /// How long the decision on a conditional batch is kept after the commit that took it, in
    /// milliseconds: an append waits up to 30 s for it (from any node), and nothing reads it
    /// after; older decisions are deleted by the shard's next commits.
    pub decisions_keep_ms: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            block_rows: 16_384,
            commit_max_events: 8_192,
            cache_bytes: 128 << 20,
            block_backlog: 4,
            decisions_keep_ms: 600_000,
        }
    }
}

/// A store node's data: every shard it holds, in one fjall database (and what a shard writes
/// once, in bulk, in a second one, see `bulk.rs`).
pub struct Store {
    pub(crate) db: Database,
    /// The shards' `blocks`, `ids` and `keys` keyspaces.
    bulk: Database,
    pub(crate) meta: Keyspace,
    config: StoreConfig,
    shards: RwLock<HashMap<(StreamName, u32), Arc<Shard>>>,
    catalog: RwLock<watch::Receiver<Catalog>>,
    views: ViewSet,
    /// Set once fjall refuses all writes (poisoned after a failed flush or journal write, e.g.
    /// a full disk): only reopening the store recovers it.
    failed: watch::Sender<Option<String>>,
    /// Turns full tails into blocks.
    blocks: BlockMaker,
}

impl Drop for Store {
    /// Waits for the blocks being made (a block thread must not outlive the database it writes).
    fn drop(&mut self) {
        self.blocks.close();
    }
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
        let bulk_cache = config.cache_bytes / 2;
        let db = Database::builder(dir)
            .cache_size(config.cache_bytes - bulk_cache)
            .max_journaling_size(64 << 20)
            // The journal holds every tail chunk and block once more on its way to the tables;
            // LZ4 over them was ~7 % of an ingest node's CPU, for a file that lives seconds.
            .journal_compression(fjall::CompressionType::None)
            .open()?;
        let bulk = crate::bulk::open_database(&dir.join(crate::bulk::FOLDER), bulk_cache)?;
        crate::cpu::background_priority_of_fjall_workers();
        let meta = db.keyspace("meta", KeyspaceCreateOptions::default)?;
        let (_, catalog) = watch::channel(Catalog::default());
        let views = ViewSet::open(&db, &meta)?;
        let blocks = BlockMaker::new(db.clone(), meta.clone(), &config);
        Ok(Arc::new(Self {
            blocks,
            db,
            bulk,
            meta,
            config,
            shards: RwLock::new(HashMap::new()),
            catalog: RwLock::new(catalog),
            views,
            failed: watch::channel(None).0,
        }))
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
        let shard = Arc::new(Shard::open(
            &self.db, &self.bulk, &self.meta, stream, partition,
        )?);
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
        let started = std::time::Instant::now();
        let applied = crate::cpu::counted(|| self.apply(stream, partition, records, through))
            .map_err(|e| self.note_fatal(e));
        metrics::histogram!("strata_store_commit_seconds").record(started.elapsed().as_secs_f64());
        applied
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
        let slots = self.views.slots_of(stream);
        let mut state = shard.state.lock();
        let mut next = *state;
        let mut batch = self.db.batch();
        // Which records to store: those not applied yet whose id the shard does not hold, and
        // the conditional batches that hold (see `versions.rs`).
        let mut sorted = versions::sort_out(&shard, records, &state)?;
        next.next = sorted.next;
        if !sorted.holding {
            next.next = next.next.max(through);
        }
        if next == *state {
            return Ok(state.next);
        }
        let mut chunk = None;
        if let Some((first, _)) = sorted.accepted.first() {
            let rows = rows_to_stored(&sorted.accepted, &sorted.versions, partition, &fields)?;
            batch.insert(&shard.tail, offset_key(*first), encode_tail(&rows)?);
            next.tail_rows += sorted.accepted.len() as u64;
            next.rows += sorted.accepted.len() as u64;
            chunk = Some(rows);
        }
        versions::write(&shard, &sorted, &mut batch)?;
        let keep = std::time::Duration::from_millis(self.config.decisions_keep_ms);
        let expired = versions::expire_decisions(&shard, keep, &mut batch);
        let views = self.views.fold_into(
            &slots,
            &info,
            partition,
            (state.next, next.next),
            chunk.as_ref(),
            &mut batch,
        )?;
        batch.insert(&self.meta, state_key(stream, partition), next.encode());
        {
            // Id lookups wait for the commit, so they never miss an id it stores.
            let mut tail = shard.tail_index.lock();
            batch.commit()?;
            for (offset, event) in std::mem::take(&mut sorted.accepted) {
                tail.add(offset, event.id, event.key);
            }
        }
        versions::decided(&shard, expired, &sorted);
        commit_views(views, partition, next.next);
        *state = next;
        drop(state);
        count_sorted(stream, &sorted);
        versions::remember(&shard, sorted);
        // The rows are readable in the tail now; their block is made after.
        shard.progress.send_replace(next.next);
        self.blocks.after_commit(&shard, &fields, next.tail_rows)?;
        Ok(next.next)
    }

    /// The shard's state and a snapshot of the database that holds exactly that state (taken
    /// under the shard's lock, so no commit of the shard falls between them).
    fn pinned(&self, shard: &Shard) -> (ShardState, fjall::Snapshot) {
        let (state, snapshot, _) = self.pinned_keyed(shard, None);
        (state, snapshot)
    }

    /// [`Store::pinned`], with the tail's offsets of `key` in `offsets` as of that state (the
    /// tail index is in memory, outside the snapshot).
    fn pinned_keyed(
        &self,
        shard: &Shard,
        key: Option<(&str, &std::ops::Range<u64>)>,
    ) -> (ShardState, fjall::Snapshot, Vec<u64>) {
        let state = shard.state.lock();
        let keyed = key
            .map(|(key, offsets)| shard.tail_index.lock().key_offsets(key, offsets))
            .unwrap_or_default();
        (*state, self.db.snapshot(), keyed)
    }

    /// Opens a scan of one shard (see [`ScanRequest`]). The scan reads a consistent snapshot.
    pub fn scan(
        &self,
        stream: &StreamName,
        partition: u32,
        request: ScanRequest,
    ) -> Result<ShardScan> {
        let shard = self.shard(stream, partition)?;
        let info = self.stream(stream)?;
        let key = request.key.as_deref().map(|k| (k, &request.offsets));
        let (state, snapshot, tail_keyed) = self.pinned_keyed(&shard, key);
        ShardScan::new(shard, &info, snapshot, state, request, tail_keyed)
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
        let (state, snapshot) = self.pinned(&shard);
        crate::scan::offset_for_time(&shard, &snapshot, state, time_ms)
    }

    /// The materialized views of this store.
    pub fn views(&self) -> &ViewSet {
        &self.views
    }

    /// Creates view `name` over `stream`, maintained by `fold` from now on; its past is folded by
    /// [`Store::catch_up_view`]. Refuses a name a view or stream already has. `shared` when the
    /// definition comes from the log's catalog (a cluster's views).
    ///
    /// # Errors
    /// [`Error::ViewExists`], an unknown stream, storage failures.
    pub fn create_view(
        &self,
        name: &str,
        stream: &StreamName,
        query: &str,
        shared: bool,
        fold: Arc<dyn ViewFold>,
    ) -> Result<ViewDef> {
        if StreamName::new(name).is_ok_and(|n| self.catalog().contains_key(&n)) {
            return Err(Error::ViewExists(format!(
                "{name} (a stream has that name)"
            )));
        }
        self.stream(stream)?;
        self.views.create(name, stream, query, shared, fold)
    }

    /// Folds the stored rows of `partition` that view `name` (or its rebuild) has not applied yet
    /// (see the `views` module); `progress` hears the rows folded. Blocking. Returns without
    /// error when the view is dropped meanwhile.
    ///
    /// # Errors
    /// Storage failures; the view moving under the catch-up (a bug).
    pub fn catch_up_view(
        &self,
        name: &str,
        rebuild: bool,
        partition: u32,
        progress: &mut dyn FnMut(u64),
    ) -> Result<()> {
        let Some(slot) = self.views.slot(name, rebuild) else {
            return Ok(());
        };
        let stream = slot.def.stream.clone();
        let shard = self.shard(&stream, partition)?;
        let info = self.stream(&stream)?;
        let projection: Vec<usize> = (0..stream_schema(&info).fields().len()).collect();
        // First without the shard's lock (commits go on, and skip the view), then the rest under it.
        for locked in [false, true] {
            let held = locked.then(|| shard.state.lock());
            let (state, snapshot) = match &held {
                Some(state) => (**state, self.db.snapshot()),
                None => self.pinned(&shard),
            };
            let from = slot.applied(partition);
            if from >= state.next {
                continue;
            }
            let request = ScanRequest {
                projection: projection.clone(),
                offsets: from..state.next,
                time: None,
                key: None,
                limit: None,
                as_stored: Vec::new(),
            };
            let scan = ShardScan::new(shard.clone(), &info, snapshot, state, request, Vec::new())?;
            let mut at = from;
            for rows in scan {
                let rows: RecordBatch = rows?;
                let offsets = rows.column(schema::OFFSET).as_primitive::<Int64Type>();
                let end = offsets.iter().flatten().max().map_or(at, |o| o as u64 + 1);
                if !self
                    .views
                    .fold_step(&slot, partition, at, end, Some(&rows))?
                {
                    return Ok(());
                }
                progress(rows.num_rows() as u64);
                at = end;
            }
            // Offsets after the last stored row (duplicates skipped) hold no rows.
            if !self
                .views
                .fold_step(&slot, partition, at, state.next, None)?
            {
                return Ok(());
            }
        }
        Ok(())
    }

    /// The partitions on which view `name` (or its rebuild) is behind the shard, with how many
    /// offsets it is behind.
    ///
    /// # Errors
    /// An unknown stream.
    pub fn view_backlog(&self, name: &str, rebuild: bool) -> Result<Vec<(u32, u64)>> {
        let Some(slot) = self.views.slot(name, rebuild) else {
            return Ok(Vec::new());
        };
        let info = self.stream(&slot.def.stream)?;
        let mut out = Vec::new();
        for p in 0..info.partitions {
            let stored = self.next_offset(&slot.def.stream, p)?;
            if let Some(applied) = slot.maintained_applied(p)
                && applied < stored
            {
                out.push((p, stored - applied));
            }
        }
        Ok(out)
    }

    /// Progress and size of view `name`.
    ///
    /// # Errors
    /// [`Error::UnknownView`], an unknown stream, storage failures.
    pub fn view_status(&self, name: &str) -> Result<ViewStatus> {
        let mut status = self.view_progress(name)?;
        let (slot, _) = self.views.entry(name)?;
        status.rows = self.views.rows(&slot)?;
        Ok(status)
    }

    /// [`Store::view_status`] without counting the view's groups (`rows` is 0): cheap.
    ///
    /// # Errors
    /// As [`Store::view_status`].
    pub fn view_progress(&self, name: &str) -> Result<ViewStatus> {
        let (slot, rebuilding) = self.views.entry(name)?;
        let info = self.stream(&slot.def.stream)?;
        let mut partitions = Vec::new();
        for p in 0..info.partitions {
            let stored = self.next_offset(&slot.def.stream, p)?;
            partitions.push(ViewPartition {
                partition: p,
                applied: slot.applied(p),
                stored,
            });
        }
        Ok(ViewStatus {
            def: slot.def.clone(),
            rows: 0,
            partitions,
            error: slot.error(),
            rebuilding,
        })
    }

    /// The decision on the conditional batch of `stream`/`partition` whose first record is at
    /// `first`; `None` while the shard has not decided it (or it is not a batch's first record).
    ///
    /// # Errors
    /// An unknown stream or partition; storage failures.
    pub fn decision(
        &self,
        stream: &StreamName,
        partition: u32,
        first: u64,
    ) -> Result<Option<strata_proto::BatchDecision>> {
        versions::decision(&*self.shard(stream, partition)?, first)
    }

    /// Flushes the store's journals to disk.
    pub fn persist(&self) -> Result<()> {
        self.bulk.persist(fjall::PersistMode::SyncAll)?;
        Ok(self.db.persist(fjall::PersistMode::SyncAll)?)
    }
}

/// Counts what a commit skipped, rejected and decided.
fn count_sorted(stream: &StreamName, sorted: &versions::Sorted) {
    let stream = stream.to_string();
    if sorted.duplicates > 0 {
        metrics::counter!("strata_store_duplicates_skipped_total", "stream" => stream.clone())
            .increment(sorted.duplicates);
    }
    if sorted.rejected > 0 {
        metrics::counter!("strata_conditional_rejected_events_total", "stream" => stream.clone())
            .increment(sorted.rejected);
    }
    let refused = sorted.decisions.iter().filter(|(_, d)| !d.accepted).count() as u64;
    let accepted = sorted.decisions.len() as u64 - refused;
    for (decision, n) in [("accepted", accepted), ("rejected", refused)] {
        if n > 0 {
            metrics::counter!("strata_conditional_batches_total", "stream" => stream.clone(), "decision" => decision)
                .increment(n);
        }
    }
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
        // The tail index first, all under one lock; the keyspace for the rest.
        let in_tail: Vec<Option<u64>> = {
            let tail = shard.tail_index.lock();
            ids.iter().map(|id| tail.id(id)).collect()
        };
        ids.iter()
            .zip(in_tail)
            .map(|(id, in_tail)| {
                if in_tail.is_some() {
                    return Ok(in_tail);
                }
                let found = shard.ids.get(id.as_bytes()).map_err(Error::from)?;
                Ok(found.and_then(|v| offset_from(&v)))
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
