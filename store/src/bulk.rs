//! The bulk database: a second fjall database (the store's `bulk` folder) holding what a shard
//! writes once, by bulk ingestion, when its tail's oldest rows become a block: the block's
//! columns (`blocks`) and its id and key index entries (`ids`, `keys`, see `index.rs`; `kver`,
//! see `key_versions.rs`).
//!
//! Why a database of its own: fjall's ingestion holds its database's journal lock while it
//! finishes, fsyncs and registers its tables, and every write batch of that database (each commit
//! of each shard) waits for that lock. Written through the shards' database instead, a block went
//! through its journal and memtable and was written again when flushed, and its index entries'
//! ingestion stalled every commit: the slowest percent of append → delivered latencies. Here
//! nothing else takes this database's journal lock.
//!
//! What is written here never changes: a block's columns and index entries depend only on the
//! rows (block boundaries are fixed), a crash before the block's commit writes the same entries
//! again. Readers therefore read it as it is now, not through the shards' snapshot: they look up
//! only blocks listed in their snapshot's block metadata, and index entries before their
//! snapshot's tail start, all written before the commit that made them visible. (A key's `kver`
//! entry is the one exception: each block with the key replaces it, and its reader, the shard's
//! commit, allows for an entry ahead of the tail start, see `key_versions.rs`.)
//!
//! A store of before kept these keyspaces in the shards' database; [`keyspace`] moves them here
//! when the shard opens.

use crate::{Error, Result};
use fjall::{Database, Keyspace, KeyspaceCreateOptions, UserKey, UserValue};
use std::path::Path;

/// The bulk database's folder, inside the store's.
pub(crate) const FOLDER: &str = "bulk";

/// Opens (or creates) the bulk database at `dir` with a block cache of `cache_bytes`.
///
/// # Errors
/// Storage failures.
pub(crate) fn open_database(dir: &Path, cache_bytes: u64) -> Result<Database> {
    Ok(Database::builder(dir).cache_size(cache_bytes).open()?)
}

/// Opens keyspace `name` of the bulk database `bulk`, first moving the entries of a keyspace of
/// that name in the shards' database `db` (where a store of before kept it) into it, in one
/// ingestion, and deleting that one. A crash in between leaves either the old keyspace alone or
/// both, and the next open finishes the move.
///
/// # Errors
/// Storage failures.
pub(crate) fn keyspace(
    db: &Database,
    bulk: &Database,
    name: &str,
    options: impl Fn() -> KeyspaceCreateOptions + Copy,
) -> Result<Keyspace> {
    let keyspace = bulk.keyspace(name, options)?;
    if !db.keyspace_exists(name) {
        return Ok(keyspace);
    }
    let old = db.keyspace(name, options)?;
    if keyspace.is_empty()? {
        let mut ingestion = keyspace.start_ingestion()?;
        for item in old.iter() {
            let (key, value) = item.into_inner()?;
            ingestion.write(key, value)?;
        }
        ingestion.finish()?;
    }
    db.delete_keyspace(old)?;
    tracing::info!(keyspace = name, "moved a keyspace into the bulk database");
    Ok(keyspace)
}

/// Bulk-writes `entries` (keys strictly ascending: callers sort and dedupe) into new tables of
/// `keyspace`; nothing when there are none.
///
/// # Errors
/// Storage failures; [`Error::Invariant`] for a key not above the one before (fjall would panic
/// on it), and nothing is written then.
pub(crate) fn ingest<K: Into<UserKey>, V: Into<UserValue>>(
    keyspace: &Keyspace,
    entries: impl IntoIterator<Item = (K, V)>,
) -> Result<()> {
    let mut entries = entries.into_iter().peekable();
    if entries.peek().is_none() {
        return Ok(());
    }
    let mut ingestion = keyspace.start_ingestion()?;
    let mut last: Option<UserKey> = None;
    for (key, value) in entries {
        let key = key.into();
        if last.as_ref().is_some_and(|last| key <= *last) {
            // The unfinished ingestion is dropped: its tables are never registered.
            return Err(Error::Invariant(format!(
                "bulk write into {} out of key order",
                keyspace.name()
            )));
        }
        last = Some(key.clone());
        ingestion.write(key, value)?;
    }
    ingestion.finish()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn keys_out_of_order_are_refused_and_nothing_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let db = super::open_database(dir.path(), 1 << 20).unwrap();
        let keyspace = db
            .keyspace("k", fjall::KeyspaceCreateOptions::default)
            .unwrap();
        let unsorted = [(b"b".to_vec(), vec![1u8]), (b"a".to_vec(), vec![2])];
        let err = super::ingest(&keyspace, unsorted).unwrap_err();
        assert!(matches!(err, crate::Error::Invariant(_)), "{err}");
        assert!(keyspace.is_empty().unwrap());
        let sorted = [(b"a".to_vec(), vec![1u8]), (b"b".to_vec(), vec![2])];
        super::ingest(&keyspace, sorted).unwrap();
        assert_eq!(keyspace.get(b"b").unwrap().as_deref(), Some(&[2u8][..]));
    }
}
