//! Key versions of a shard's blocks, for a point read instead of a count.
//!
//! A key's version is the count of its stored events (see `versions.rs`). Commits keep recent
//! versions in memory; a key not there was counted in the key index, a range scan over every
//! table of the `keys` keyspace — once a shard had stored more distinct keys than that memory
//! holds, nearly every event of a stream keyed by user or order id paid one, and the store's
//! CPU per event tripled. So each block also writes, for every key in it, the version of its last
//! event there and the offset after the block (`kver`, bulk-ingested with the block's other
//! indexes): a key's version is then that entry (one point read, answered by the tables' bloom
//! filters when the key is new) plus its tail rows from that offset on.
//!
//! The entries are written before the commit that makes the block, and depend only on the
//! block's rows, so a crash in between writes the same ones again; an entry ahead of the shard's
//! tail start (its block not committed yet) counts the rows it covers, and the tail rows after it
//! are added — the sum is the same either way. Each block's entries also move a marker to the
//! offset after it; a shard whose marker is behind its tail start (made before `kver` existed, or
//! given blocks by a strata of before) has its entries built from the key index when it opens
//! (see [`build_if_behind`]).

use crate::bulk;
use crate::index::TailIndex;
use crate::keys::{key_index_key, key_index_prefix};
use crate::shard::Shard;
use crate::{Error, Result, schema};
use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::Int64Type;

type HashMap<K, V> = std::collections::HashMap<K, V, ahash::RandomState>;

/// The key of the marker: the offset after the last block whose entries were written (8 bytes,
/// BE). One byte long, it is no key's entry (those start with the key's 2-byte length) and sorts
/// before them all.
const MARKER: &[u8] = &[0];

/// A `kver` value: the key's version through `through` (an offset after a block).
fn encode(version: u64, through: u64) -> [u8; 16] {
    let mut value = [0u8; 16];
    value[..8].copy_from_slice(&version.to_be_bytes());
    value[8..].copy_from_slice(&through.to_be_bytes());
    value
}

fn decode(value: &[u8]) -> Option<(u64, u64)> {
    let version = u64::from_be_bytes(value.get(..8)?.try_into().ok()?);
    let through = u64::from_be_bytes(value.get(8..16)?.try_into().ok()?);
    Some((version, through))
}

/// `key`'s version as committed in a shard whose tail starts at `tail_start`: its `kver` entry
/// and its tail rows after it.
///
/// # Errors
/// Storage failures, an unreadable entry.
pub(crate) fn stored(shard: &Shard, tail: &TailIndex, tail_start: u64, key: &str) -> Result<u64> {
    let prefix = key_index_prefix(key);
    let entry = shard
        .kver
        .get(&prefix)
        .map_err(|e| Error::reading(e, &shard.label(), &shard.kver, || "key versions".into()))?;
    let (version, through) = match entry {
        Some(value) => decode(&value).ok_or_else(|| Error::Corrupt {
            location: format!("{} key versions", shard.label()),
            reason: format!("an entry of {} bytes, not 16", value.len()),
        })?,
        None => (0, 0),
    };
    Ok(version + tail.count_key_from(key, through.max(tail_start)))
}

/// Writes the `kver` entries of `block` (a stored batch about to become a block): each key's
/// version at its last row, through the offset after the block.
///
/// # Errors
/// Storage failures; a malformed batch.
pub(crate) fn index_block(shard: &Shard, block: &RecordBatch) -> Result<()> {
    let (offsets, keys, _) = crate::index::index_columns(block, crate::index::STORED)?;
    let versions = block
        .columns()
        .get(schema::VERSION - 1)
        .and_then(|c| c.as_primitive_opt::<Int64Type>())
        .ok_or_else(|| Error::Corrupt {
            location: format!("{} block", shard.label()),
            reason: "version column missing or of the wrong type".into(),
        })?;
    let (Some(first), Some(last)) = (offsets.first(), offsets.last()) else {
        return Ok(());
    };
    let (first, through) = (*first as u64, *last as u64 + 1);
    // Each key's last row in the block, and how many rows it has there.
    let mut last_rows: HashMap<&str, (usize, u64)> = HashMap::default();
    for i in (0..block.num_rows()).filter(|&i| keys.is_valid(i)) {
        let entry = last_rows.entry(keys.value(i)).or_insert((i, 0));
        *entry = (i, entry.1 + 1);
    }
    let mut entries = Vec::with_capacity(last_rows.len() + 1);
    entries.push((MARKER.to_vec(), through.to_be_bytes().to_vec()));
    for (key, (row, rows)) in last_rows {
        let version = if versions.is_valid(row) {
            versions.value(row) as u64
        } else {
            // Written before versions were stored: count the key's events before the block.
            count_in_key_index(shard, key, first)? + rows
        };
        entries.push((key_index_prefix(key), encode(version, through).to_vec()));
    }
    entries.sort_unstable();
    bulk::ingest(&shard.kver, entries)
}

/// How many `keys` entries `key` has below `end`.
fn count_in_key_index(shard: &Shard, key: &str, end: u64) -> Result<u64> {
    let mut count = 0;
    for item in shard
        .keys
        .range(key_index_key(key, 0)..key_index_key(key, end))
    {
        item.key().map_err(|e| {
            Error::reading(e, &shard.label(), &shard.keys, || "the key index".into())
        })?;
        count += 1;
    }
    Ok(count)
}

/// Builds a shard's `kver` entries from its key index when its marker is behind `tail_start` (or
/// missing; a build interrupted by a crash registers nothing, its ingestion unfinished): one pass
/// over the key index, whose entries are sorted by key and then offset, counting each key's
/// entries below `tail_start`.
///
/// # Errors
/// Storage failures, a malformed key index entry or marker.
pub(crate) fn build_if_behind(shard: &Shard, tail_start: u64) -> Result<()> {
    let label = shard.label();
    let marker = shard
        .kver
        .get(MARKER)
        .map_err(|e| Error::reading(e, &label, &shard.kver, || "key versions".into()))?;
    let marker = match marker {
        Some(value) => Some(u64::from_be_bytes(value.as_ref().try_into().map_err(
            |_| Error::Corrupt {
                location: format!("{label} key versions"),
                reason: format!("a marker of {} bytes, not 8", value.len()),
            },
        )?)),
        None => None,
    };
    if tail_start == 0 || marker.is_some_and(|m| m >= tail_start) {
        return Ok(());
    }
    let mut ingestion = shard.kver.start_ingestion()?;
    ingestion.write(MARKER.to_vec(), tail_start.to_be_bytes().to_vec())?;
    // The key being counted, and its count so far.
    let mut current: Option<(Vec<u8>, u64)> = None;
    let mut keys = 0u64;
    for item in shard.keys.iter() {
        let key = item
            .key()
            .map_err(|e| Error::reading(e, &label, &shard.keys, || "the key index".into()))?;
        let malformed = || Error::Corrupt {
            location: format!("{label} key index"),
            reason: format!("an entry of {} bytes", key.len()),
        };
        let split = key.len().checked_sub(8).ok_or_else(malformed)?;
        let (prefix, offset) = key.split_at(split);
        let offset = u64::from_be_bytes(offset.try_into().map_err(|_| malformed())?);
        if offset >= tail_start {
            continue;
        }
        match &mut current {
            Some((last, count)) if last.as_slice() == prefix => *count += 1,
            _ => {
                // Prefixes ascend: a key's entries are consecutive, and keys sort by prefix.
                if let Some((last, count)) = current.replace((prefix.to_vec(), 1)) {
                    ingestion.write(last, encode(count, tail_start).to_vec())?;
                    keys += 1;
                }
            }
        }
    }
    if let Some((last, count)) = current {
        ingestion.write(last, encode(count, tail_start).to_vec())?;
        keys += 1;
    }
    ingestion.finish()?;
    tracing::info!(shard = %label, keys, "built the key versions of the shard's blocks");
    Ok(())
}
