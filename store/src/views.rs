//! Materialized view state in the store.
//!
//! The store keeps each view's groups in a keyspace of its own (`view.<name>.<generation>`,
//! key = the view's encoded group key, value = the group's encoded state) and, per partition of
//! the view's stream, the next offset the view has applied (`meta`, `view-applied/<generation>/<p>`).
//! How rows fold into groups is not the store's business: the query layer gives a [`ViewFold`].
//!
//! Exactly once: a view whose applied offset equals the shard's next offset is *caught up* on that
//! partition, and every store commit folds its rows into every caught-up view in the same fjall
//! write batch as the events and the shard's next offset. A view that is behind (just created,
//! attached after a restart, failed, rebuilding) is caught up by [`Store::catch_up_view`], which
//! folds the stored rows between its applied offset and the shard's next offset, each scan batch in
//! one write batch with the new applied offset. A row is folded by exactly one of the two, and a
//! crash at any point resumes from the last committed applied offset.

use crate::scan::{ScanRequest, ShardScan};
use crate::schema::{self, stream_schema};
use crate::shard::Store;
use crate::{Error, Result};
use arrow::array::{ArrayRef, AsArray, Int32Array, RecordBatch, new_null_array};
use arrow::datatypes::Int64Type;
use fjall::{Keyspace, KeyspaceCreateOptions, Readable};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;
use strata_proto::{StreamInfo, StreamName};

/// A view's definition as the store keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewDef {
    /// The view's name (a SQL table name).
    pub name: String,
    /// The stream it aggregates.
    pub stream: StreamName,
    /// The view's `SELECT`, as written.
    pub query: String,
    /// Which keyspace holds its groups; a rebuild makes a new generation.
    pub generation: u64,
}

/// Reads a group's stored value by its key.
pub type ReadGroup<'a> = dyn FnMut(&[u8]) -> Result<Option<Vec<u8>>> + 'a;

/// How a view folds rows of its stream into its stored groups (given by the query layer).
pub trait ViewFold: Send + Sync {
    /// Folds `rows` (a batch in the stream's table schema) into the groups they touch, and returns
    /// each touched group's key and new stored value; `stored` reads a group's current value.
    fn fold(
        &self,
        rows: &RecordBatch,
        stored: &mut ReadGroup<'_>,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>>;
}

/// What a view's slot knows under its lock.
#[derive(Default)]
pub(crate) struct SlotState {
    fold: Option<Arc<dyn ViewFold>>,
    /// Next offset applied, per partition (absent: 0).
    applied: HashMap<u32, u64>,
    /// Why maintenance stopped, if it did.
    error: Option<String>,
    /// Dropped or replaced: nothing may write to it any more.
    retired: bool,
    /// Recently written groups, as committed (saves reading them back for the next commit).
    cache: GroupCache,
}

/// Stored values of recently written groups, exactly as last committed; bounded by bytes.
#[derive(Default)]
struct GroupCache {
    values: HashMap<Vec<u8>, Vec<u8>>,
    bytes: usize,
}

/// What one view's group cache may hold.
const CACHE_BYTES: usize = 32 << 20;

impl GroupCache {
    /// Records groups a committed batch wrote.
    fn committed(&mut self, updates: Vec<(Vec<u8>, Vec<u8>)>) {
        for (k, v) in updates {
            let (key_len, value_len) = (k.len(), v.len());
            match self.values.insert(k, v) {
                Some(old) => self.bytes = self.bytes.saturating_sub(old.len()) + value_len,
                None => self.bytes += key_len + value_len + 32,
            }
        }
        if self.bytes > CACHE_BYTES {
            self.values.clear();
            self.bytes = 0;
        }
    }
}

impl SlotState {
    fn applied(&self, partition: u32) -> u64 {
        self.applied.get(&partition).copied().unwrap_or(0)
    }

    /// The fold, when the view is maintained.
    fn active_fold(&self) -> Option<Arc<dyn ViewFold>> {
        if self.retired || self.error.is_some() {
            return None;
        }
        self.fold.clone()
    }
}

/// One generation of a view: its keyspace and progress. Its mutex is the view's lock: taken after
/// a shard's state lock, never before.
pub(crate) struct ViewSlot {
    pub def: ViewDef,
    pub groups: Keyspace,
    pub state: Mutex<SlotState>,
}

/// A view: the generation queries read, and a rebuild in progress.
#[derive(Clone)]
pub(crate) struct ViewEntry {
    pub current: Arc<ViewSlot>,
    pub next: Option<Arc<ViewSlot>>,
}

/// A view's progress on one partition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ViewPartition {
    /// The partition.
    pub partition: u32,
    /// The next offset the view has applied.
    pub applied: u64,
    /// The next offset the shard has stored.
    pub stored: u64,
}

/// What [`Store::view_status`] reports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ViewStatus {
    /// The definition.
    pub def: ViewDef,
    /// Groups stored.
    pub rows: u64,
    /// Progress per partition of the stream.
    pub partitions: Vec<ViewPartition>,
    /// Why maintenance stopped, if it did.
    pub error: Option<String>,
    /// Whether a rebuild is running.
    pub rebuilding: bool,
}

const DEF_PREFIX: &str = "view-def/";
const GC_PREFIX: &str = "view-gc/";
const SEQ_KEY: &[u8] = b"view-seq";

fn def_key(name: &str) -> Vec<u8> {
    format!("{DEF_PREFIX}{name}").into_bytes()
}

fn applied_prefix(generation: u64) -> Vec<u8> {
    format!("view-applied/{generation}/").into_bytes()
}

fn applied_key(generation: u64, partition: u32) -> Vec<u8> {
    let mut key = applied_prefix(generation);
    key.extend_from_slice(partition.to_string().as_bytes());
    key
}

fn keyspace_name(name: &str, generation: u64) -> String {
    format!("view.{name}.{generation}")
}

fn encode_def(def: &ViewDef) -> Result<Vec<u8>> {
    serde_json::to_vec(def).map_err(|e| Error::Task(format!("encoding a view definition: {e}")))
}

fn u64_of(bytes: &[u8], location: impl Fn() -> String) -> Result<u64> {
    <[u8; 8]>::try_from(bytes)
        .map(u64::from_le_bytes)
        .map_err(|_| Error::Corrupt {
            location: location(),
            reason: "not an 8-byte offset".into(),
        })
}

/// A batch of stored rows (as the tail keeps them) in the stream's table schema.
pub(crate) fn chunk_as_table(
    chunk: &RecordBatch,
    partition: u32,
    info: &StreamInfo,
) -> Result<RecordBatch> {
    let schema = stream_schema(info);
    let rows = chunk.num_rows();
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    columns.push(Arc::new(Int32Array::from_value(partition as i32, rows)));
    for (i, field) in schema.fields().iter().enumerate().skip(1) {
        columns.push(match chunk.columns().get(i - 1) {
            Some(c) => c.clone(),
            None => new_null_array(field.data_type(), rows),
        });
    }
    Ok(RecordBatch::try_new(schema, columns)?)
}

impl Store {
    /// Opens the view slots the store has definitions for and finishes deletions a crash cut
    /// short. Called once by [`Store::open`].
    pub(crate) fn open_views(&self) -> Result<()> {
        for item in self.meta.prefix(GC_PREFIX) {
            let (k, v) = item.into_inner()?;
            let name = String::from_utf8_lossy(&v).into_owned();
            if self.db.keyspace_exists(&name) {
                let ks = self.db.keyspace(&name, KeyspaceCreateOptions::default)?;
                self.db.delete_keyspace(ks)?;
            }
            let generation = std::str::from_utf8(&k[GC_PREFIX.len()..])
                .ok()
                .and_then(|g| g.parse::<u64>().ok())
                .ok_or_else(|| Error::Corrupt {
                    location: format!("view deletion marker {}", String::from_utf8_lossy(&k)),
                    reason: "bad generation".into(),
                })?;
            for applied in self.meta.prefix(applied_prefix(generation)) {
                self.meta.remove(applied.key()?)?;
            }
            self.meta.remove(k)?;
        }
        let mut views = self.views.write();
        for item in self.meta.prefix(DEF_PREFIX) {
            let (k, v) = item.into_inner()?;
            let def: ViewDef = serde_json::from_slice(&v).map_err(|e| Error::Corrupt {
                location: format!("view definition {}", String::from_utf8_lossy(&k)),
                reason: e.to_string(),
            })?;
            let slot = self.open_slot(def)?;
            views.insert(
                slot.def.name.clone(),
                ViewEntry {
                    current: slot,
                    next: None,
                },
            );
        }
        Ok(())
    }

    fn open_slot(&self, def: ViewDef) -> Result<Arc<ViewSlot>> {
        let groups = self
            .db
            .keyspace(&keyspace_name(&def.name, def.generation), || {
                KeyspaceCreateOptions::default().max_memtable_size(8 << 20)
            })?;
        let mut applied = HashMap::new();
        for item in self.meta.prefix(applied_prefix(def.generation)) {
            let (k, v) = item.into_inner()?;
            let label = || format!("applied offset {}", String::from_utf8_lossy(&k));
            let partition = std::str::from_utf8(&k[applied_prefix(def.generation).len()..])
                .ok()
                .and_then(|p| p.parse::<u32>().ok())
                .ok_or_else(|| Error::Corrupt {
                    location: label(),
                    reason: "bad partition".into(),
                })?;
            applied.insert(partition, u64_of(&v, label)?);
        }
        Ok(Arc::new(ViewSlot {
            def,
            groups,
            state: Mutex::new(SlotState {
                applied,
                ..SlotState::default()
            }),
        }))
    }

    fn next_generation(&self) -> Result<u64> {
        let last = match self.meta.get(SEQ_KEY)? {
            Some(v) => u64_of(&v, || "view sequence".into())?,
            None => 0,
        };
        Ok(last + 1)
    }

    /// Every view's definition, by name.
    pub fn view_defs(&self) -> Vec<ViewDef> {
        self.views
            .read()
            .values()
            .map(|e| e.current.def.clone())
            .collect()
    }

    /// The definition of view `name`, if there is one.
    pub fn view_def(&self, name: &str) -> Option<ViewDef> {
        self.views.read().get(name).map(|e| e.current.def.clone())
    }

    /// Creates view `name` over `stream`, maintained by `fold` from now on; its past is folded by
    /// [`Store::catch_up_view`]. Refuses a name a view or stream already has.
    pub fn create_view(
        &self,
        name: &str,
        stream: &StreamName,
        query: &str,
        fold: Arc<dyn ViewFold>,
    ) -> Result<ViewDef> {
        let mut views = self.views.write();
        if views.contains_key(name) {
            return Err(Error::ViewExists(name.to_owned()));
        }
        if StreamName::new(name).is_ok_and(|n| self.catalog().contains_key(&n)) {
            return Err(Error::ViewExists(format!(
                "{name} (a stream has that name)"
            )));
        }
        self.stream(stream)?;
        let generation = self.next_generation()?;
        let def = ViewDef {
            name: name.to_owned(),
            stream: stream.clone(),
            query: query.to_owned(),
            generation,
        };
        let slot = self.open_slot(def.clone())?;
        slot.state.lock().fold = Some(fold);
        let mut batch = self.db.batch();
        batch.insert(&self.meta, SEQ_KEY, generation.to_le_bytes());
        batch.insert(&self.meta, def_key(name), encode_def(&def)?);
        batch.commit()?;
        views.insert(
            name.to_owned(),
            ViewEntry {
                current: slot,
                next: None,
            },
        );
        Ok(def)
    }

    /// Gives a view loaded from disk its fold (after a restart). Returns false for an unknown view.
    pub fn attach_view(&self, name: &str, fold: Arc<dyn ViewFold>) -> bool {
        let Some(entry) = self.views.read().get(name).cloned() else {
            return false;
        };
        for slot in std::iter::once(&entry.current).chain(entry.next.as_ref()) {
            slot.state.lock().fold = Some(fold.clone());
        }
        true
    }

    /// Whether view `name` has its fold.
    pub fn view_attached(&self, name: &str) -> bool {
        self.views
            .read()
            .get(name)
            .is_some_and(|e| e.current.state.lock().fold.is_some())
    }

    /// Drops view `name` and its state. Returns false when there is no such view.
    pub fn drop_view(&self, name: &str) -> Result<bool> {
        let Some(entry) = self.views.write().remove(name) else {
            return Ok(false);
        };
        let mut batch = self.db.batch();
        batch.remove(&self.meta, def_key(name));
        let slots: Vec<_> = std::iter::once(entry.current).chain(entry.next).collect();
        let mut guards = Vec::new();
        for slot in &slots {
            guards.push(slot.state.lock());
            self.forget_slot(&mut batch, slot)?;
        }
        batch.commit()?;
        for mut g in guards {
            g.retired = true;
        }
        self.delete_slots(slots)
    }

    /// Adds the removal of a slot's applied offsets and a deletion marker for its keyspace.
    fn forget_slot(&self, batch: &mut fjall::OwnedWriteBatch, slot: &ViewSlot) -> Result<()> {
        for item in self.meta.prefix(applied_prefix(slot.def.generation)) {
            batch.remove(&self.meta, item.key()?);
        }
        batch.insert(
            &self.meta,
            format!("{GC_PREFIX}{}", slot.def.generation).into_bytes(),
            keyspace_name(&slot.def.name, slot.def.generation).into_bytes(),
        );
        Ok(())
    }

    fn delete_slots(&self, slots: Vec<Arc<ViewSlot>>) -> Result<bool> {
        for slot in slots {
            self.db.delete_keyspace(slot.groups.clone())?;
            self.meta
                .remove(format!("{GC_PREFIX}{}", slot.def.generation).into_bytes())?;
        }
        Ok(true)
    }

    /// Every maintained slot over `stream` (current generations and rebuilds), in lock order:
    /// the slots a commit of `stream` must consider.
    pub(crate) fn slots_of(&self, stream: &StreamName) -> Vec<Arc<ViewSlot>> {
        self.views
            .read()
            .values()
            .filter(|e| &e.current.def.stream == stream)
            .flat_map(|e| std::iter::once(e.current.clone()).chain(e.next.clone()))
            .collect()
    }

    /// Folds `chunk` (the rows a commit stores, in tail form) into every view over the stream
    /// that is caught up with the shard at `from`, adding the groups it changes and the views'
    /// new applied offset `to` to `batch`. Returns the views' locks, to hold until the batch is
    /// committed, and then to record the new offset with [`commit_views`].
    pub(crate) fn fold_into_views<'a>(
        &self,
        slots: &'a [Arc<ViewSlot>],
        info: &StreamInfo,
        partition: u32,
        (from, to): (u64, u64),
        chunk: Option<&RecordBatch>,
        batch: &mut fjall::OwnedWriteBatch,
    ) -> Result<Vec<FoldedView<'a>>> {
        let mut guards = Vec::new();
        let mut table = None;
        for slot in slots {
            let mut state = slot.state.lock();
            if state.active_fold().is_none() || state.applied(partition) != from {
                continue;
            }
            if let Some(chunk) = chunk
                && table.is_none()
            {
                table = Some(chunk_as_table(chunk, partition, info)?);
            }
            let Some(written) = self.stage(slot, &mut state, partition, table.as_ref(), to, batch)
            else {
                continue;
            };
            guards.push((state, written));
        }
        Ok(guards)
    }

    /// Adds to `batch` what `rows` change in `slot` and its applied offset `to` on `partition`;
    /// returns the groups written. `None` when the view is not maintained or its fold failed (the
    /// view is then marked failed); nothing is added.
    fn stage(
        &self,
        slot: &ViewSlot,
        state: &mut SlotState,
        partition: u32,
        rows: Option<&RecordBatch>,
        to: u64,
        batch: &mut fjall::OwnedWriteBatch,
    ) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
        let fold = state.active_fold()?;
        let written = match rows.map(|rows| fold_rows(slot, state, fold.as_ref(), rows)) {
            None => Vec::new(),
            Some(Ok(updates)) => updates,
            Some(Err(e)) => {
                fail(slot, state, partition, &e);
                return None;
            }
        };
        for (k, v) in &written {
            batch.insert(&slot.groups, k.as_slice(), v.as_slice());
        }
        batch.insert(
            &self.meta,
            applied_key(slot.def.generation, partition),
            to.to_le_bytes(),
        );
        Some(written)
    }

    /// Folds the stored rows of `partition` the view has not applied yet (see the module
    /// documentation); `progress` hears the rows folded. Blocking. Returns without error when the
    /// view is dropped meanwhile.
    pub fn catch_up_view(
        &self,
        name: &str,
        rebuild: bool,
        partition: u32,
        progress: &mut dyn FnMut(u64),
    ) -> Result<()> {
        let Some(slot) = self.slot(name, rebuild) else {
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
                None => {
                    let state = shard.state.lock();
                    (*state, self.db.snapshot())
                }
            };
            let from = slot.state.lock().applied(partition);
            if from >= state.next {
                continue;
            }
            let request = ScanRequest {
                projection: projection.clone(),
                offsets: from..state.next,
                time: None,
                key: None,
                limit: None,
            };
            let scan = ShardScan::new(shard.clone(), &info, snapshot, state, request)?;
            let mut at = from;
            for rows in scan {
                let rows = rows?;
                let offsets = rows.column(schema::OFFSET).as_primitive::<Int64Type>();
                let end = offsets.iter().flatten().max().map_or(at, |o| o as u64 + 1);
                if !self.fold_step(&slot, partition, at, end, Some(&rows))? {
                    return Ok(());
                }
                progress(rows.num_rows() as u64);
                at = end;
            }
            // Offsets after the last stored row (duplicates skipped) hold no rows.
            if !self.fold_step(&slot, partition, at, state.next, None)? {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Folds `rows` into `slot` and moves its applied offset from `at` to `end`, in one write
    /// batch. False when the view stopped (dropped, replaced or failed).
    fn fold_step(
        &self,
        slot: &ViewSlot,
        partition: u32,
        at: u64,
        end: u64,
        rows: Option<&RecordBatch>,
    ) -> Result<bool> {
        let mut state = slot.state.lock();
        if state.active_fold().is_none() {
            return Ok(false);
        }
        if state.applied(partition) != at {
            return Err(Error::Task(format!(
                "view {} moved on partition {partition} while it was caught up",
                slot.def.name
            )));
        }
        let mut batch = self.db.batch();
        let Some(written) = self.stage(slot, &mut state, partition, rows, end, &mut batch) else {
            return Ok(false);
        };
        batch.commit()?;
        state.cache.committed(written);
        state.applied.insert(partition, end);
        Ok(true)
    }

    /// The partitions on which view `name` (or its rebuild) is behind the shard, with how many
    /// offsets it is behind.
    pub fn view_backlog(&self, name: &str, rebuild: bool) -> Result<Vec<(u32, u64)>> {
        let Some(slot) = self.slot(name, rebuild) else {
            return Ok(Vec::new());
        };
        let info = self.stream(&slot.def.stream)?;
        let mut out = Vec::new();
        for p in 0..info.partitions {
            let stored = self.next_offset(&slot.def.stream, p)?;
            let state = slot.state.lock();
            if state.active_fold().is_some() && state.applied(p) < stored {
                out.push((p, stored - state.applied(p)));
            }
        }
        Ok(out)
    }

    /// Starts a rebuild of view `name`: a new generation, empty, to be caught up and then swapped
    /// in by [`Store::finish_rebuild`]. A rebuild already running is started over.
    pub fn start_rebuild(&self, name: &str) -> Result<()> {
        let mut views = self.views.write();
        let entry = views
            .get_mut(name)
            .ok_or_else(|| Error::UnknownView(name.to_owned()))?;
        let fold = entry.current.state.lock().fold.clone();
        let generation = self.next_generation()?;
        // A crash before the swap leaves the new keyspace to be deleted at the next start.
        let mut batch = self.db.batch();
        batch.insert(&self.meta, SEQ_KEY, generation.to_le_bytes());
        batch.insert(
            &self.meta,
            format!("{GC_PREFIX}{generation}").into_bytes(),
            keyspace_name(name, generation).into_bytes(),
        );
        batch.commit()?;
        let slot = self.open_slot(ViewDef {
            generation,
            ..entry.current.def.clone()
        })?;
        slot.state.lock().fold = fold;
        if let Some(old) = entry.next.replace(slot) {
            drop(views);
            self.retire(old)?;
        }
        Ok(())
    }

    /// Swaps a rebuilt generation in for the current one and deletes the old state.
    pub fn finish_rebuild(&self, name: &str) -> Result<()> {
        let mut views = self.views.write();
        let entry = views
            .get_mut(name)
            .ok_or_else(|| Error::UnknownView(name.to_owned()))?;
        let Some(next) = entry.next.take() else {
            return Err(Error::Task(format!("view {name} has no rebuild to finish")));
        };
        if let Some(e) = &next.state.lock().error {
            return Err(Error::View(e.clone()));
        }
        let old = std::mem::replace(&mut entry.current, next.clone());
        drop(views);
        let mut old_state = old.state.lock();
        let mut batch = self.db.batch();
        batch.insert(&self.meta, def_key(name), encode_def(&next.def)?);
        batch.remove(
            &self.meta,
            format!("{GC_PREFIX}{}", next.def.generation).into_bytes(),
        );
        self.forget_slot(&mut batch, &old)?;
        batch.commit()?;
        old_state.retired = true;
        drop(old_state);
        self.delete_slots(vec![old])?;
        Ok(())
    }

    /// Abandons a rebuild of view `name` (after it failed); the current generation stays.
    pub fn abort_rebuild(&self, name: &str) -> Result<()> {
        let next = self.views.write().get_mut(name).and_then(|e| e.next.take());
        match next {
            Some(slot) => self.retire(slot),
            None => Ok(()),
        }
    }

    fn retire(&self, slot: Arc<ViewSlot>) -> Result<()> {
        let mut state = slot.state.lock();
        let mut batch = self.db.batch();
        self.forget_slot(&mut batch, &slot)?;
        batch.commit()?;
        state.retired = true;
        drop(state);
        self.delete_slots(vec![slot])?;
        Ok(())
    }

    /// Progress and size of view `name`.
    pub fn view_status(&self, name: &str) -> Result<ViewStatus> {
        let entry = self
            .views
            .read()
            .get(name)
            .cloned()
            .ok_or_else(|| Error::UnknownView(name.to_owned()))?;
        let slot = &entry.current;
        let info = self.stream(&slot.def.stream)?;
        let mut partitions = Vec::new();
        for p in 0..info.partitions {
            let stored = self.next_offset(&slot.def.stream, p)?;
            partitions.push(ViewPartition {
                partition: p,
                applied: slot.state.lock().applied(p),
                stored,
            });
        }
        let snapshot = self.db.snapshot();
        let rows = snapshot.iter(&slot.groups).count() as u64;
        Ok(ViewStatus {
            def: slot.def.clone(),
            rows,
            partitions,
            error: slot.state.lock().error.clone(),
            rebuilding: entry.next.is_some(),
        })
    }

    /// A view over `stream` that has not applied `partition` up to `offset`, with the offset it
    /// has applied (`None` when every view has).
    pub fn views_behind(
        &self,
        stream: &StreamName,
        partition: u32,
        offset: u64,
    ) -> Option<(String, u64)> {
        self.views
            .read()
            .values()
            .filter(|e| &e.current.def.stream == stream)
            .map(|e| {
                (
                    e.current.def.name.clone(),
                    e.current.state.lock().applied(partition),
                )
            })
            .find(|(_, applied)| *applied < offset)
    }

    /// Every stored group of view `name` (key, value), in key order, from one snapshot.
    pub fn view_groups(&self, name: &str) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let slot = self.current_slot(name)?;
        let snapshot = self.db.snapshot();
        snapshot
            .iter(&slot.groups)
            .map(|item| {
                let (k, v) = item.into_inner()?;
                Ok((k.to_vec(), v.to_vec()))
            })
            .collect()
    }

    /// The stored values of the groups `keys` of view `name` (absent ones skipped).
    pub fn view_get(&self, name: &str, keys: &[Vec<u8>]) -> Result<Vec<Vec<u8>>> {
        let slot = self.current_slot(name)?;
        let snapshot = self.db.snapshot();
        let mut out = Vec::new();
        for k in keys {
            if let Some(v) = snapshot.get(&slot.groups, k)? {
                out.push(v.to_vec());
            }
        }
        Ok(out)
    }

    fn current_slot(&self, name: &str) -> Result<Arc<ViewSlot>> {
        self.slot(name, false)
            .ok_or_else(|| Error::UnknownView(name.to_owned()))
    }

    /// View `name`'s current generation, or its rebuild in progress.
    fn slot(&self, name: &str, rebuild: bool) -> Option<Arc<ViewSlot>> {
        let views = self.views.read();
        let entry = views.get(name)?;
        if rebuild {
            entry.next.clone()
        } else {
            Some(entry.current.clone())
        }
    }
}

/// A view a commit folded into: its lock (held until the batch is committed) and the groups the
/// batch writes.
pub(crate) type FoldedView<'a> = (
    parking_lot::MutexGuard<'a, SlotState>,
    Vec<(Vec<u8>, Vec<u8>)>,
);

/// Records, once the batch is committed, each view's applied offset `to` of `partition` and the
/// groups it wrote.
pub(crate) fn commit_views(views: Vec<FoldedView<'_>>, partition: u32, to: u64) {
    for (mut state, written) in views {
        state.applied.insert(partition, to);
        state.cache.committed(written);
    }
}

fn fold_rows(
    slot: &ViewSlot,
    state: &SlotState,
    fold: &dyn ViewFold,
    rows: &RecordBatch,
) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let groups = &slot.groups;
    let cache = &state.cache.values;
    let updates = fold.fold(rows, &mut |k| match cache.get(k) {
        Some(v) => Ok(Some(v.clone())),
        None => Ok(groups.get(k)?.map(|v| v.to_vec())),
    })?;
    // fjall keys are 1 to 65535 bytes.
    if let Some((k, _)) = updates
        .iter()
        .find(|(k, _)| k.is_empty() || k.len() > 65_535)
    {
        return Err(Error::View(format!(
            "a group key of {} bytes cannot be stored (1 to 65535 bytes)",
            k.len()
        )));
    }
    Ok(updates)
}

fn fail(slot: &ViewSlot, state: &mut SlotState, partition: u32, e: &Error) {
    tracing::error!(view = %slot.def.name, partition, error = %e, "view maintenance stopped");
    metrics::counter!("strata_view_failures_total", "view" => slot.def.name.clone()).increment(1);
    state.error = Some(format!(
        "maintenance stopped at partition {partition}, offset {}: {e}",
        state.applied(partition)
    ));
}
