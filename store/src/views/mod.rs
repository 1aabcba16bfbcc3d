//! Materialized view state in the store.
//!
//! The store keeps each view's groups in a keyspace of its own (`view.<name>.<generation>`,
//! key = the partition (4 bytes, big-endian) and the view's encoded group key, value = the group's
//! encoded state on that partition) and, per partition of the view's stream, the next offset the
//! view has applied (`meta`, `view-applied/<generation>/<p>`). State is kept per partition so that
//! it moves with the partition between nodes and is never counted twice: a read merges the
//! partitions' states of a group.
//! How rows fold into groups is not the store's business: the query layer gives a [`ViewFold`].
//!
//! Exactly once: a view whose applied offset equals the shard's next offset is *caught up* on that
//! partition, and every store commit folds its rows into every caught-up view in the same fjall
//! write batch as the events and the shard's next offset. A view that is behind (just created,
//! attached after a restart, failed, rebuilding) is caught up by
//! [`Store::catch_up_view`](crate::Store::catch_up_view), which
//! folds the stored rows between its applied offset and the shard's next offset, each scan batch in
//! one write batch with the new applied offset. A row is folded by exactly one of the two, and a
//! crash at any point resumes from the last committed applied offset.

mod read;
mod rebuild;
mod slot;

pub(crate) use slot::{FoldedView, commit_views};

use crate::keys::{
    VIEW_DEF_PREFIX, VIEW_GC_PREFIX, VIEW_SEQ_KEY, view_applied_key, view_applied_prefix,
    view_def_key, view_gc_key, view_keyspace,
};
use crate::{Error, Result};
use arrow::array::RecordBatch;
use fjall::{Database, Keyspace, KeyspaceCreateOptions};
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use slot::{SlotState, ViewEntry, ViewSlot, chunk_as_table, fail, fold_rows, u64_of};
use std::collections::{BTreeMap, HashMap};
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
    /// How its groups are keyed: [`ViewDef::LAYOUT`] (per partition); 0 for views stored before
    /// state was kept per partition, which are refolded from the shards when opened.
    #[serde(default)]
    pub layout: u32,
    /// Whether the definition comes from the log's shared catalog (a cluster's views), so that it
    /// goes when the catalog drops it; a view defined on this store alone is not.
    #[serde(default)]
    pub shared: bool,
}

impl ViewDef {
    /// The current layout of a view's groups: state per partition.
    pub const LAYOUT: u32 = 1;
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

/// What [`Store::view_status`](crate::Store::view_status) reports.
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

fn encode_def(def: &ViewDef) -> Result<Vec<u8>> {
    serde_json::to_vec(def)
        .map_err(|e| Error::Invariant(format!("encoding a view definition: {e}")))
}

/// The materialized views of a store: each view's current generation and a rebuild in progress,
/// in the store's database.
pub struct ViewSet {
    db: Database,
    meta: Keyspace,
    views: RwLock<BTreeMap<String, ViewEntry>>,
}

impl std::fmt::Debug for ViewSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ViewSet")
            .field("views", &self.views.read().len())
            .finish_non_exhaustive()
    }
}

impl ViewSet {
    /// Opens the views the store has definitions for (in `meta` of `db`) and finishes deletions
    /// a crash cut short.
    pub(crate) fn open(db: &Database, meta: &Keyspace) -> Result<Self> {
        let set = Self {
            db: db.clone(),
            meta: meta.clone(),
            views: RwLock::new(BTreeMap::new()),
        };
        set.load()?;
        Ok(set)
    }

    fn load(&self) -> Result<()> {
        for item in self.meta.prefix(VIEW_GC_PREFIX) {
            let (k, v) = item.into_inner()?;
            let name = String::from_utf8_lossy(&v).into_owned();
            if self.db.keyspace_exists(&name) {
                let ks = self.db.keyspace(&name, KeyspaceCreateOptions::default)?;
                self.db.delete_keyspace(ks)?;
            }
            let generation = std::str::from_utf8(&k[VIEW_GC_PREFIX.len()..])
                .ok()
                .and_then(|g| g.parse::<u64>().ok())
                .ok_or_else(|| Error::Corrupt {
                    location: format!("view deletion marker {}", String::from_utf8_lossy(&k)),
                    reason: "bad generation".into(),
                })?;
            for applied in self.meta.prefix(view_applied_prefix(generation)) {
                self.meta.remove(applied.key()?)?;
            }
            self.meta.remove(k)?;
        }
        let mut views = self.views.write();
        for item in self.meta.prefix(VIEW_DEF_PREFIX) {
            let (k, v) = item.into_inner()?;
            let def: ViewDef = serde_json::from_slice(&v).map_err(|e| Error::Corrupt {
                location: format!("view definition {}", String::from_utf8_lossy(&k)),
                reason: e.to_string(),
            })?;
            let def = if def.layout == ViewDef::LAYOUT {
                def
            } else {
                self.relayout(def)?
            };
            let slot = self.open_slot(def)?;
            views.insert(
                slot.def.name.clone(),
                ViewEntry {
                    shared: slot.def.shared,
                    current: slot,
                    next: None,
                },
            );
        }
        Ok(())
    }

    /// Starts a view stored in an older layout over, empty, in a new generation of the current
    /// layout (the catch-up then folds it again from the shards); the old state is deleted.
    fn relayout(&self, old: ViewDef) -> Result<ViewDef> {
        let generation = self.next_generation()?;
        tracing::warn!(view = %old.name, "refolding a view stored in an older layout");
        let def = ViewDef {
            generation,
            layout: ViewDef::LAYOUT,
            ..old.clone()
        };
        let mut batch = self.db.batch();
        batch.insert(&self.meta, VIEW_SEQ_KEY, generation.to_le_bytes());
        batch.insert(&self.meta, view_def_key(&def.name), encode_def(&def)?);
        for item in self.meta.prefix(view_applied_prefix(old.generation)) {
            batch.remove(&self.meta, item.key()?);
        }
        let gc = view_gc_key(old.generation);
        let keyspace = view_keyspace(&old.name, old.generation);
        batch.insert(&self.meta, gc.clone(), keyspace.as_bytes());
        batch.commit()?;
        if self.db.keyspace_exists(&keyspace) {
            let ks = self
                .db
                .keyspace(&keyspace, KeyspaceCreateOptions::default)?;
            self.db.delete_keyspace(ks)?;
        }
        self.meta.remove(gc)?;
        Ok(def)
    }

    fn open_slot(&self, def: ViewDef) -> Result<Arc<ViewSlot>> {
        let groups = self
            .db
            .keyspace(&view_keyspace(&def.name, def.generation), || {
                KeyspaceCreateOptions::default().max_memtable_size(8 << 20)
            })?;
        let mut applied = HashMap::new();
        for item in self.meta.prefix(view_applied_prefix(def.generation)) {
            let (k, v) = item.into_inner()?;
            let label = || format!("applied offset {}", String::from_utf8_lossy(&k));
            let partition = std::str::from_utf8(&k[view_applied_prefix(def.generation).len()..])
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
        let last = match self.meta.get(VIEW_SEQ_KEY)? {
            Some(v) => u64_of(&v, || "view sequence".into())?,
            None => 0,
        };
        Ok(last + 1)
    }

    /// Every view's definition, by name.
    pub fn defs(&self) -> Vec<ViewDef> {
        self.views.read().values().map(ViewEntry::def).collect()
    }

    /// The definition of view `name`, if there is one.
    pub fn def(&self, name: &str) -> Option<ViewDef> {
        self.views.read().get(name).map(ViewEntry::def)
    }

    /// Creates view `name` over `stream`, maintained by `fold` from now on (see
    /// [`Store::create_view`](crate::Store::create_view), which checks the stream); `shared` when
    /// the definition comes from the log's catalog.
    pub(crate) fn create(
        &self,
        name: &str,
        stream: &StreamName,
        query: &str,
        shared: bool,
        fold: Arc<dyn ViewFold>,
    ) -> Result<ViewDef> {
        let mut views = self.views.write();
        if views.contains_key(name) {
            return Err(Error::ViewExists(name.to_owned()));
        }
        let generation = self.next_generation()?;
        let def = ViewDef {
            name: name.to_owned(),
            stream: stream.clone(),
            query: query.to_owned(),
            generation,
            layout: ViewDef::LAYOUT,
            shared,
        };
        let slot = self.open_slot(def.clone())?;
        slot.state.lock().fold = Some(fold);
        let mut batch = self.db.batch();
        batch.insert(&self.meta, VIEW_SEQ_KEY, generation.to_le_bytes());
        batch.insert(&self.meta, view_def_key(name), encode_def(&def)?);
        batch.commit()?;
        views.insert(
            name.to_owned(),
            ViewEntry {
                current: slot,
                next: None,
                shared,
            },
        );
        Ok(def)
    }

    /// Records that view `name`, defined here before, is now in the log's shared catalog.
    ///
    /// # Errors
    /// [`Error::UnknownView`]; storage failures.
    pub fn mark_shared(&self, name: &str) -> Result<()> {
        let mut views = self.views.write();
        let entry = views
            .get_mut(name)
            .ok_or_else(|| Error::UnknownView(name.to_owned()))?;
        let def = ViewDef {
            shared: true,
            ..entry.current.def.clone()
        };
        self.meta.insert(view_def_key(name), encode_def(&def)?)?;
        entry.shared = true;
        Ok(())
    }

    /// Gives a view loaded from disk its fold (after a restart). Returns false for an unknown view.
    pub fn attach(&self, name: &str, fold: Arc<dyn ViewFold>) -> bool {
        let Some(entry) = self.views.read().get(name).cloned() else {
            return false;
        };
        for slot in std::iter::once(&entry.current).chain(entry.next.as_ref()) {
            slot.state.lock().fold = Some(fold.clone());
        }
        true
    }

    /// Whether view `name` has its fold.
    pub fn attached(&self, name: &str) -> bool {
        self.views
            .read()
            .get(name)
            .is_some_and(|e| e.current.state.lock().fold.is_some())
    }

    /// Drops view `name` and its state. Returns false when there is no such view.
    pub fn remove(&self, name: &str) -> Result<bool> {
        let Some(entry) = self.views.write().remove(name) else {
            return Ok(false);
        };
        let mut batch = self.db.batch();
        batch.remove(&self.meta, view_def_key(name));
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
        for item in self.meta.prefix(view_applied_prefix(slot.def.generation)) {
            batch.remove(&self.meta, item.key()?);
        }
        batch.insert(
            &self.meta,
            view_gc_key(slot.def.generation),
            view_keyspace(&slot.def.name, slot.def.generation).into_bytes(),
        );
        Ok(())
    }

    fn delete_slots(&self, slots: Vec<Arc<ViewSlot>>) -> Result<bool> {
        for slot in slots {
            self.db.delete_keyspace(slot.groups.clone())?;
            self.meta.remove(view_gc_key(slot.def.generation))?;
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
    pub(crate) fn fold_into<'a>(
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
        let written = match rows.map(|rows| fold_rows(slot, state, fold.as_ref(), partition, rows))
        {
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
            view_applied_key(slot.def.generation, partition),
            to.to_le_bytes(),
        );
        Some(written)
    }

    /// Folds `rows` into `slot` and moves its applied offset from `at` to `end`, in one write
    /// batch. False when the view stopped (dropped, replaced or failed).
    pub(crate) fn fold_step(
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
            return Err(Error::Invariant(format!(
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

    /// A view over `stream` that has not applied `partition` up to `offset`, with the offset it
    /// has applied (`None` when every view has).
    pub fn behind(
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

    /// View `name`'s current generation, and whether a rebuild of it is running.
    pub(crate) fn entry(&self, name: &str) -> Result<(Arc<ViewSlot>, bool)> {
        let views = self.views.read();
        let entry = views
            .get(name)
            .ok_or_else(|| Error::UnknownView(name.to_owned()))?;
        Ok((entry.current.clone(), entry.next.is_some()))
    }

    pub(crate) fn current_slot(&self, name: &str) -> Result<Arc<ViewSlot>> {
        self.slot(name, false)
            .ok_or_else(|| Error::UnknownView(name.to_owned()))
    }

    /// View `name`'s current generation, or its rebuild in progress.
    pub(crate) fn slot(&self, name: &str, rebuild: bool) -> Option<Arc<ViewSlot>> {
        let views = self.views.read();
        let entry = views.get(name)?;
        if rebuild {
            entry.next.clone()
        } else {
            Some(entry.current.clone())
        }
    }
}
