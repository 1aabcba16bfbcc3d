//! One generation of a view ([`ViewSlot`]): its keyspace, its applied offsets and its lock, and
//! how a batch of rows folds into it.

use super::{ViewDef, ViewFold};
use crate::keys::view_group_key;
use crate::schema::stream_schema;
use crate::{Error, Result};
use arrow::array::{ArrayRef, Int32Array, RecordBatch, new_null_array};
use fjall::Keyspace;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use strata_proto::StreamInfo;

/// What a view's slot knows under its lock.
#[derive(Default)]
pub(crate) struct SlotState {
    pub(crate) fold: Option<Arc<dyn ViewFold>>,
    /// Next offset applied, per partition (absent: 0).
    pub(crate) applied: HashMap<u32, u64>,
    /// Why maintenance stopped, if it did.
    pub(crate) error: Option<String>,
    /// Dropped or replaced: nothing may write to it any more.
    pub(crate) retired: bool,
    /// Recently written groups, as committed (saves reading them back for the next commit).
    pub(crate) cache: GroupCache,
}

/// Stored values of recently written groups, exactly as last committed; bounded by bytes.
#[derive(Default)]
pub(crate) struct GroupCache {
    values: HashMap<Vec<u8>, Vec<u8>>,
    bytes: usize,
}

/// What one view's group cache may hold.
const CACHE_BYTES: usize = 32 << 20;

impl GroupCache {
    /// Records groups a committed batch wrote.
    pub(crate) fn committed(&mut self, updates: Vec<(Vec<u8>, Vec<u8>)>) {
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
    pub(crate) fn applied(&self, partition: u32) -> u64 {
        self.applied.get(&partition).copied().unwrap_or(0)
    }

    /// The fold, when the view is maintained.
    pub(crate) fn active_fold(&self) -> Option<Arc<dyn ViewFold>> {
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

/// A view: the generation queries read, a rebuild in progress, and whether its definition comes
/// from the log's shared catalog.
#[derive(Clone)]
pub(crate) struct ViewEntry {
    pub current: Arc<ViewSlot>,
    pub next: Option<Arc<ViewSlot>>,
    pub shared: bool,
}

impl ViewEntry {
    /// The view's definition as stored.
    pub(crate) fn def(&self) -> ViewDef {
        ViewDef {
            shared: self.shared,
            ..self.current.def.clone()
        }
    }
}

impl ViewSlot {
    /// The next offset this generation has applied on `partition`.
    pub(crate) fn applied(&self, partition: u32) -> u64 {
        self.state.lock().applied(partition)
    }

    /// [`ViewSlot::applied`], while the view is maintained (attached, not failed, not retired).
    pub(crate) fn maintained_applied(&self, partition: u32) -> Option<u64> {
        let state = self.state.lock();
        state.active_fold().map(|_| state.applied(partition))
    }

    /// Why maintenance stopped, if it did.
    pub(crate) fn error(&self) -> Option<String> {
        self.state.lock().error.clone()
    }
}

pub(crate) fn u64_of(bytes: &[u8], location: impl Fn() -> String) -> Result<u64> {
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

/// Folds `rows` (all of `partition`) into the view's state of that partition: each group's state
/// is kept per partition (under [`view_group_key`]), so that it moves with the partition and a
/// read merges the partitions' states.
pub(crate) fn fold_rows(
    slot: &ViewSlot,
    state: &SlotState,
    fold: &dyn ViewFold,
    partition: u32,
    rows: &RecordBatch,
) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let groups = &slot.groups;
    let cache = &state.cache.values;
    let updates = fold.fold(rows, &mut |k| {
        let key = view_group_key(partition, k);
        match cache.get(&key) {
            Some(v) => Ok(Some(v.clone())),
            None => Ok(groups.get(&key)?.map(|v| v.to_vec())),
        }
    })?;
    // fjall keys are 1 to 65535 bytes.
    if let Some((k, _)) = updates
        .iter()
        .find(|(k, _)| k.is_empty() || k.len() > 65_531)
    {
        return Err(Error::View(format!(
            "a group key of {} bytes cannot be stored (1 to 65531 bytes)",
            k.len()
        )));
    }
    Ok(updates
        .into_iter()
        .map(|(k, v)| (view_group_key(partition, &k), v))
        .collect())
}

pub(crate) fn fail(slot: &ViewSlot, state: &mut SlotState, partition: u32, e: &Error) {
    tracing::error!(view = %slot.def.name, partition, error = %e, "view maintenance stopped");
    metrics::counter!("strata_view_failures_total", "view" => slot.def.name.clone()).increment(1);
    state.error = Some(format!(
        "maintenance stopped at partition {partition}, offset {}: {e}",
        state.applied(partition)
    ));
}
