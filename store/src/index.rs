//! A shard's id and key indexes.
//!
//! Events in the row tail are indexed in memory ([`TailIndex`]), rebuilt from the tail chunks when
//! the shard opens: a commit adds to two hash maps instead of writing two fjall entries per event
//! (those entries were most of a commit's cost: each one is a journal record and a memtable
//! skip-list insert, then flushed and compacted again). When the tail's oldest rows become a
//! block, their `ids` and `keys` entries are written sorted, straight into new tables of the
//! keyspaces ([`index_block`], fjall's bulk ingestion into the bulk database, see `bulk.rs`: no
//! journal, no memtable), and then leave the tail index. An event is thus always found in at
//! least one of the two; the keyspaces answer for offsets before the shard's tail start, the tail
//! index for the rest.

use crate::block::decode_tail;
use crate::bulk;
use crate::keys::{key_index_key, offset_key};
use crate::schema;
use crate::shard::Shard;
use crate::{Error, Result};
use arrow::array::{Array, AsArray, RecordBatch, StringArray};
use arrow::datatypes::Int64Type;
use std::ops::Range;

type HashMap<K, V> = std::collections::HashMap<K, V, ahash::RandomState>;

/// The ids and keys of a shard's tail rows, in memory.
#[derive(Debug, Default)]
pub(crate) struct TailIndex {
    ids: HashMap<Box<str>, u64>,
    keys: HashMap<Box<str>, Vec<u64>>,
}

impl TailIndex {
    /// Notes an event stored at `offset` (offsets ascend from call to call).
    pub fn add(&mut self, offset: u64, id: Option<String>, key: Option<String>) {
        if let Some(id) = id {
            self.ids.insert(id.into_boxed_str(), offset);
        }
        if let Some(key) = key {
            self.keys
                .entry(key.into_boxed_str())
                .or_default()
                .push(offset);
        }
    }

    /// The offset of the tail row with event id `id`.
    pub fn id(&self, id: &str) -> Option<u64> {
        self.ids.get(id).copied()
    }

    /// The offsets of the tail rows with key `key` inside `range`, ascending.
    pub fn key_offsets(&self, key: &str, range: &Range<u64>) -> Vec<u64> {
        self.keys.get(key).map_or_else(Vec::new, |offsets| {
            offsets
                .iter()
                .copied()
                .filter(|o| range.contains(o))
                .collect()
        })
    }

    /// How many tail rows with key `key` are at or after `from`.
    pub fn count_key_from(&self, key: &str, from: u64) -> u64 {
        self.keys.get(key).map_or(0, |offsets| {
            (offsets.len() - offsets.partition_point(|o| *o < from)) as u64
        })
    }

    /// Notes every row of `batch` whose offset, key and id columns are at `columns`.
    fn add_rows(&mut self, batch: &RecordBatch, columns: [usize; 3]) -> Result<()> {
        let (offsets, keys, ids) = index_columns(batch, columns)?;
        for (i, offset) in offsets.iter().enumerate() {
            let key = keys.is_valid(i).then(|| keys.value(i).to_owned());
            let id = ids.is_valid(i).then(|| ids.value(i).to_owned());
            self.add(*offset as u64, id, key);
        }
        Ok(())
    }

    /// Forgets the rows before `tail_start` (they became a block; the `ids` and `keys` tables
    /// answer for them now).
    pub fn forget_before(&mut self, tail_start: u64) {
        self.ids.retain(|_, offset| *offset >= tail_start);
        self.keys.retain(|_, offsets| {
            let gone = offsets.partition_point(|o| *o < tail_start);
            offsets.drain(..gone);
            !offsets.is_empty()
        });
    }
}

/// Where a stored batch (see `block::stored_schema`) has its offsets, keys and ids.
pub(crate) const STORED: [usize; 3] = [schema::OFFSET - 1, schema::KEY - 1, schema::ID - 1];

pub(crate) type IndexColumns<'a> = (&'a [i64], &'a StringArray, &'a StringArray);

/// The offsets, keys and ids of `batch`, at `columns`.
pub(crate) fn index_columns(
    batch: &RecordBatch,
    [o, k, i]: [usize; 3],
) -> Result<IndexColumns<'_>> {
    let corrupt = || Error::Corrupt {
        location: "stored batch".into(),
        reason: "offset, key or id column missing or of the wrong type".into(),
    };
    let column = |c: usize| batch.columns().get(c).ok_or_else(corrupt);
    let offsets = column(o)?
        .as_primitive_opt::<Int64Type>()
        .ok_or_else(corrupt)?;
    let keys = column(k)?.as_string_opt::<i32>().ok_or_else(corrupt)?;
    let ids = column(i)?.as_string_opt::<i32>().ok_or_else(corrupt)?;
    Ok((offsets.values(), keys, ids))
}

/// The tail index of `shard`, read from its tail chunks at and after `tail_start`.
pub(crate) fn load_tail_index(shard: &Shard, tail_start: u64) -> Result<TailIndex> {
    let mut index = TailIndex::default();
    for item in shard.tail.range(offset_key(tail_start)..) {
        let (k, v) = item.into_inner().map_err(|e| {
            Error::reading(e, &shard.label(), &shard.tail, || "the row tail".into())
        })?;
        let label = || format!("{} tail chunk {:?}", shard.label(), &*k);
        let chunk = decode_tail(&v, Some(STORED.to_vec()), label)?;
        index.add_rows(&chunk, [0, 1, 2])?;
    }
    Ok(index)
}

/// Writes the `ids`, `keys` and `kver` (see `key_versions.rs`) entries of `block` (a stored batch
/// about to become a block) into new tables of those keyspaces, sorted. Written again after a
/// crash, they are the same entries.
pub(crate) fn index_block(shard: &Shard, block: &RecordBatch) -> Result<()> {
    let (offsets, keys, ids) = index_columns(block, STORED)?;
    let mut id_entries: Vec<(&str, u64)> = (0..offsets.len())
        .filter(|&i| ids.is_valid(i))
        .map(|i| (ids.value(i), offsets[i] as u64))
        .collect();
    id_entries.sort_unstable();
    // Ingestion needs strictly ascending keys; a shard stores an id once, but never trust it.
    id_entries.dedup_by(|b, a| a.0 == b.0);
    bulk::ingest(
        &shard.ids,
        id_entries
            .into_iter()
            .map(|(id, offset)| (id.as_bytes().to_vec(), offset_key(offset).to_vec())),
    )?;
    let mut key_entries: Vec<Vec<u8>> = (0..offsets.len())
        .filter(|&i| keys.is_valid(i))
        .map(|i| key_index_key(keys.value(i), offsets[i] as u64))
        .collect();
    key_entries.sort_unstable();
    key_entries.dedup();
    bulk::ingest(
        &shard.keys,
        key_entries.into_iter().map(|k| (k, Vec::new())),
    )?;
    crate::key_versions::index_block(shard, block)
}
