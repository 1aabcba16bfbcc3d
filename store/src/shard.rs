//! One partition's shard: its keyspaces, its persisted progress ([`ShardState`]) and its lock.
//!
//! A shard's state mutex is the shard's lock: a commit holds it from reading the next offset to
//! publishing the new one, and a view's lock is only ever taken after it (see `views`).

use crate::block::BlockMeta;
use crate::bulk;
use crate::index::{TailIndex, load_tail_index};
use crate::keys::{offset_from, offset_key, shard_keyspace, state_key};
use crate::{Error, Result};
use fjall::{Database, Keyspace, KeyspaceCreateOptions, KvSeparationOptions, Readable};
use parking_lot::Mutex;
use serde::Serialize;
use std::sync::atomic::AtomicBool;
use strata_proto::StreamName;
use tokio::sync::watch;

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
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(33);
        out.push(STATE_VERSION);
        for v in [self.next, self.tail_rows, self.tail_start, self.rows] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out
    }

    pub(crate) fn decode(bytes: &[u8]) -> Option<Self> {
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

/// Runs of an index keyspace (`ids`, `keys`, `kver`) in level 0 before they are compacted into
/// level 1 (fjall's default: 4). Every block ingests one run into each, and a run of keys or of
/// random ids spans the whole key range, so each compaction rewrites all of level 1: with 4 the
/// store spent 7.4–8.6 µs of CPU per event ingesting 2M events, with 12 5.5–6.7 (BENCHMARKS.md
/// 1e). Point reads check each run's bloom filter; key scans merge the runs. fjall keeps a
/// keyspace's strategy from its creation: shards made before this keep 4.
const INDEX_L0_RUNS: u8 = 12;

/// Table size of an index keyspace past level 0 (fjall's default: 64 MiB). Level 1 holds up to
/// [`INDEX_L0_RUNS`] tables' worth before it spills into level 2: with 64 MiB tables that is
/// 768 MiB, more than a shard's index usually holds, so every compaction rewrote all of level 1
/// and cost more than the one before; with 4 MiB it is 48 MiB, and runs of ascending ids merge
/// with the last table only. Ingesting 5M events: 7.4–7.8 µs of store CPU per event against
/// 8.7–9.5 (BENCHMARKS.md 1g). Also kept from a keyspace's creation.
const INDEX_TABLE_BYTES: u64 = 4 << 20;

/// One partition's shard: its keyspaces and progress.
pub(crate) struct Shard {
    pub stream: StreamName,
    pub partition: u32,
    pub tail: Keyspace,
    pub blocks: Keyspace,
    pub bmeta: Keyspace,
    pub ids: Keyspace,
    pub keys: Keyspace,
    /// Key versions through the shard's blocks (see `key_versions.rs`).
    pub kver: Keyspace,
    /// First offset of a conditional batch (u64 BE) → the decision on it (JSON).
    pub decisions: Keyspace,
    /// The first offsets of the decisions in `decisions`, oldest first, with when they were
    /// taken (those found at open: the open), for their expiry (see `versions::expire_decisions`).
    pub decided: Mutex<std::collections::VecDeque<(u64, std::time::Instant)>>,
    /// Recently committed key versions (see `versions.rs`).
    pub version_cache: Mutex<crate::versions::VersionCache>,
    /// The records of a conditional batch still arriving, not applied yet.
    pub held: Mutex<Vec<strata_proto::Record>>,
    pub state: Mutex<ShardState>,
    /// The ids and keys of the tail's rows. Changed only under `state`'s lock (and taken after
    /// it); read alone by id lookups.
    pub tail_index: Mutex<TailIndex>,
    pub progress: watch::Sender<u64>,
    /// Whether a background job is making the shard's blocks.
    pub making_blocks: AtomicBool,
    /// Held by whoever makes the shard's blocks (a background job, or a commit whose tail fell
    /// behind), so that one block is made at a time.
    pub block_maker: Mutex<()>,
}

impl Shard {
    /// `stream/partition`, for messages.
    pub fn label(&self) -> String {
        format!("{}/{}", self.stream, self.partition)
    }

    /// Opens the keyspaces of `stream`/`partition` in `db` (its `blocks`, `ids`, `keys` and `kver` in
    /// `bulk`, see `bulk.rs`) and reads its state from `meta`.
    pub(crate) fn open(
        db: &Database,
        bulk_db: &Database,
        meta: &Keyspace,
        stream: &StreamName,
        partition: u32,
    ) -> Result<Self> {
        let name = |kind: &str| shard_keyspace(stream, partition, kind);
        let small = || KeyspaceCreateOptions::default().max_memtable_size(8 << 20);
        // Index entries are short and mostly distinct: LZ4 gains little on them and cost ~2% of
        // ingest CPU (bulk writes and compactions).
        let index = || {
            small()
                .data_block_compression_policy(fjall::config::CompressionPolicy::disabled())
                .compaction_strategy(std::sync::Arc::new(
                    fjall::compaction::Leveled::default()
                        .with_l0_threshold(INDEX_L0_RUNS)
                        .with_table_target_size(INDEX_TABLE_BYTES),
                ))
        };
        // Column values are read whole and often; uncompressed, see block.rs.
        let columns = || {
            small().with_kv_separation(Some(
                KvSeparationOptions::default().compression(fjall::CompressionType::None),
            ))
        };
        let state = match meta.get(state_key(stream, partition))? {
            Some(bytes) => ShardState::decode(&bytes).ok_or_else(|| Error::Corrupt {
                location: format!("meta of {stream}/{partition}"),
                reason: "unreadable shard state".into(),
            })?,
            None => ShardState::default(),
        };
        let (progress, _) = watch::channel(state.next);
        let shard = Self {
            stream: stream.clone(),
            partition,
            // Tail chunks live until the next block (≤ 2 × `block_rows` rows, a few MB): a
            // memtable that holds them lets most be deleted before they are ever flushed.
            tail: db.keyspace(&name("tail"), || {
                KeyspaceCreateOptions::default().max_memtable_size(32 << 20)
            })?,
            blocks: bulk::keyspace(db, bulk_db, &name("blocks"), columns)?,
            bmeta: db.keyspace(&name("bmeta"), small)?,
            ids: bulk::keyspace(db, bulk_db, &name("ids"), index)?,
            keys: bulk::keyspace(db, bulk_db, &name("keys"), index)?,
            kver: bulk::keyspace(db, bulk_db, &name("kver"), index)?,
            decisions: db.keyspace(&name("decisions"), small)?,
            decided: Mutex::new(std::collections::VecDeque::new()),
            version_cache: Mutex::new(crate::versions::VersionCache::new(state.rows)),
            held: Mutex::new(Vec::new()),
            state: Mutex::new(state),
            tail_index: Mutex::new(TailIndex::default()),
            progress,
            making_blocks: AtomicBool::new(false),
            block_maker: Mutex::new(()),
        };
        *shard.tail_index.lock() = load_tail_index(&shard, state.tail_start)?;
        crate::key_versions::build_if_behind(&shard, state.tail_start)?;
        let opened = std::time::Instant::now();
        let mut decided = shard.decided.lock();
        for item in shard.decisions.iter() {
            let key = item.key().map_err(|e| {
                Error::reading(e, &shard.label(), &shard.decisions, || "decisions".into())
            })?;
            if let Some(first) = offset_from(&key) {
                decided.push_back((first, opened));
            }
        }
        drop(decided);
        Ok(shard)
    }
}

/// Metadata of the shard's blocks that may hold offsets in `offsets`, ascending, through a
/// snapshot (a read near the end skips the blocks before it unread).
pub(crate) fn block_metas(
    shard: &Shard,
    snapshot: &fjall::Snapshot,
    offsets: &std::ops::Range<u64>,
) -> Result<Vec<BlockMeta>> {
    let index_error =
        |e| Error::reading(e, &shard.label(), &shard.bmeta, || "the block index".into());
    let from = start_at(snapshot, &shard.bmeta, 0, offsets.start).map_err(index_error)?;
    let mut out = Vec::new();
    for item in snapshot.range(&shard.bmeta, offset_key(from)..) {
        let (k, v) = item.into_inner().map_err(index_error)?;
        let meta = BlockMeta::decode(&v, || format!("{} block {:?}", shard.label(), &*k))?;
        if meta.first >= offsets.end {
            break;
        }
        out.push(meta);
    }
    Ok(out)
}

/// Where a read of `keyspace` (keyed by first offsets, from `low` on) must start to see offset
/// `start`: the last key at or below it, or `low` when there is none.
///
/// # Errors
/// A storage failure reading the key.
pub(crate) fn start_at(
    snapshot: &fjall::Snapshot,
    keyspace: &fjall::Keyspace,
    low: u64,
    start: u64,
) -> fjall::Result<u64> {
    if start <= low {
        return Ok(low);
    }
    match snapshot
        .range(keyspace, offset_key(low)..=offset_key(start))
        .next_back()
    {
        Some(item) => Ok(offset_from(&item.key()?).unwrap_or(low)),
        None => Ok(low),
    }
}
