//! Which of a commit's records a shard stores, in the partition's log order: duplicates of ids the
//! shard holds are skipped, conditional batches are decided (see [`strata_proto::condition`]), and
//! every stored event with a key gets its key's next version.
//!
//! A conditional batch is decided at its first record once its `count` records have been read:
//! accepted when they are consecutive and every condition holds at that point of the log, else
//! rejected whole. A batch whose records are still arriving (the read ended inside it) is held in
//! memory, and the shard's next offset stays at its first record until it is complete, so that a
//! restart reads it again. The decision goes into the shard's `decisions` keyspace under the
//! batch's first offset, in the commit's write batch. A key's version is the count of the key's
//! stored events: recently committed versions are kept in memory; past them, the version through
//! the shard's blocks is read from `kver` and the tail index's rows after it are added (see
//! `key_versions.rs`).

use crate::index::TailIndex;
use crate::shard::{Shard, ShardState};
use crate::{Error, Result};
use std::collections::HashSet;

type HashMap<K, V> = std::collections::HashMap<K, V, ahash::RandomState>;
use strata_proto::condition::{BatchDecision, decide, rejected};
use strata_proto::{Event, Record};

/// Key versions a shard keeps in memory (cleared when full). While a shard's memory holds every
/// key it ever stored (it started empty and was never cleared), a key not in it is at version 0
/// without a read. A few under test, so that tests read versions past it.
const CACHED_VERSIONS: usize = if cfg!(test) { 4 } else { 65_536 };

/// What a commit stores, and what it decided.
#[derive(Default)]
pub(crate) struct Sorted {
    /// Events to store, ascending offsets.
    pub accepted: Vec<(u64, Event)>,
    /// Each accepted event's version (`None` without a key).
    pub versions: Vec<Option<u64>>,
    /// Events skipped as duplicates of ids the shard holds.
    pub duplicates: u64,
    /// Records of rejected batches (and strays of batches never begun).
    pub rejected: u64,
    /// Decisions by first offset.
    pub decisions: Vec<(u64, BatchDecision)>,
    /// Keys' new versions.
    pub touched: HashMap<String, u64>,
    /// The shard's next offset after the commit (before a held batch, if any).
    pub next: u64,
    /// Whether a batch is held back, incomplete.
    pub holding: bool,
}

/// Sorts out `records` (after the shard's held ones) against a shard in `state` (whose lock the
/// caller holds).
pub(crate) fn sort_out(shard: &Shard, records: Vec<Record>, state: &ShardState) -> Result<Sorted> {
    let (next, tail_start) = (state.next, state.tail_start);
    let mut all = std::mem::take(&mut *shard.held.lock());
    // A re-read after a reopen starts at the held batch again: keep one copy.
    let held_end = all.last().map(|r| r.offset + 1).unwrap_or(0);
    all.extend(records.into_iter().filter(|r| r.offset >= held_end));
    let mut out = Sorted {
        next,
        ..Sorted::default()
    };
    let tail = shard.tail_index.lock();
    let mut seen: HashSet<String, ahash::RandomState> = HashSet::default();
    let is_dup = |seen: &HashSet<String, ahash::RandomState>, e: &Event| -> Result<bool> {
        Ok(match &e.id {
            Some(id) => {
                seen.contains(id)
                    || tail.id(id).is_some()
                    || shard.ids.contains_key(id.as_bytes())?
            }
            None => false,
        })
    };
    let mut records = all.into_iter().peekable();
    let mut pending: Vec<Record> = Vec::new();
    while let Some(record) = records.next() {
        if record.offset < next {
            continue;
        }
        let Some(condition) = record.event.condition else {
            out.next = out.next.max(record.offset + 1);
            if is_dup(&seen, &record.event)? {
                out.duplicates += 1;
            } else {
                if let Some(id) = &record.event.id {
                    seen.insert(id.clone());
                }
                out.store(shard, &tail, tail_start, record)?;
            }
            continue;
        };
        if condition.index != 0 {
            // A record of a batch whose first record this shard never read in place.
            out.next = out.next.max(record.offset + 1);
            out.rejected += 1;
            continue;
        }
        // Gather the batch: the next `count - 1` records, in place.
        pending.clear();
        pending.push(record);
        let count = condition.count as usize;
        while pending.len() < count {
            let in_place = records.peek().is_some_and(|r| {
                r.event.condition.is_some_and(|c| {
                    c.index as usize == pending.len()
                        && c.count == condition.count
                        && c.batch_id == condition.batch_id
                })
            });
            match records.peek() {
                Some(_) if in_place => pending.extend(records.next()),
                _ => break,
            }
        }
        if pending.len() < count && records.peek().is_none() {
            // The read ended inside the batch: wait for the rest.
            shard.held.lock().append(&mut pending);
            out.holding = true;
            break;
        }
        let first = pending[0].offset;
        out.next = out.next.max(pending[pending.len() - 1].offset + 1);
        let mut dups = Vec::with_capacity(pending.len());
        for r in &pending {
            dups.push(is_dup(&seen, &r.event)?);
        }
        let conditions = pending
            .iter()
            .zip(&dups)
            .filter(|(_, dup)| !**dup)
            .map(|(r, _)| {
                (
                    r.event.key.as_deref(),
                    r.event.condition.and_then(|c| c.expect),
                )
            });
        let mut decision = decide(conditions, |k| out.version_of(shard, &tail, tail_start, k))?;
        if pending.len() < count && decision.accepted {
            decision = rejected(
                decision.keys,
                format!(
                    "only {} of the batch's {count} records were consecutive in the partition \
                     (another writer's records came between them); retry",
                    pending.len()
                ),
            );
        }
        if decision.accepted {
            for (r, dup) in pending.drain(..).zip(dups) {
                if dup {
                    out.duplicates += 1;
                    continue;
                }
                if let Some(id) = &r.event.id {
                    seen.insert(id.clone());
                }
                out.store(shard, &tail, tail_start, r)?;
            }
        } else {
            out.rejected += pending.len() as u64;
        }
        out.decisions.push((first, decision));
    }
    Ok(out)
}

impl Sorted {
    /// Stores `record`'s event, with its key's next version.
    fn store(
        &mut self,
        shard: &Shard,
        tail: &TailIndex,
        tail_start: u64,
        mut record: Record,
    ) -> Result<()> {
        let version = match record.event.key.as_deref() {
            Some(key) => match self.touched.get_mut(key) {
                Some(v) => {
                    *v += 1;
                    Some(*v)
                }
                None => {
                    let v = stored_version(shard, tail, tail_start, key)? + 1;
                    self.touched.insert(key.to_owned(), v);
                    Some(v)
                }
            },
            None => None,
        };
        record.event.condition = None;
        self.accepted.push((record.offset, record.event));
        self.versions.push(version);
        Ok(())
    }

    /// `key`'s version at this point of the commit.
    fn version_of(
        &self,
        shard: &Shard,
        tail: &TailIndex,
        tail_start: u64,
        key: &str,
    ) -> Result<u64> {
        if let Some(v) = self.touched.get(key) {
            return Ok(*v);
        }
        stored_version(shard, tail, tail_start, key)
    }
}

/// A shard's memory of its keys' versions.
#[derive(Debug, Default)]
pub(crate) struct VersionCache {
    versions: HashMap<String, u64>,
    /// Whether `versions` holds every key the shard stores.
    complete: bool,
}

impl VersionCache {
    /// The memory of a shard that has stored `rows` events so far.
    pub(crate) fn new(rows: u64) -> Self {
        Self {
            versions: HashMap::default(),
            complete: rows == 0,
        }
    }
}

/// `key`'s version as committed: from memory, else its blocks' entry and its tail rows (see
/// `key_versions.rs`).
fn stored_version(shard: &Shard, tail: &TailIndex, tail_start: u64, key: &str) -> Result<u64> {
    {
        let cache = shard.version_cache.lock();
        if let Some(v) = cache.versions.get(key) {
            return Ok(*v);
        }
        if cache.complete {
            return Ok(0);
        }
    }
    crate::key_versions::stored(shard, tail, tail_start, key)
}

/// Writes the commit's decisions into its write batch.
pub(crate) fn write(
    shard: &Shard,
    sorted: &Sorted,
    batch: &mut fjall::OwnedWriteBatch,
) -> Result<()> {
    for (first, decision) in &sorted.decisions {
        let value = serde_json::to_vec(decision).map_err(|e| Error::Corrupt {
            location: shard.label(),
            reason: format!("cannot encode a decision: {e}"),
        })?;
        batch.insert(&shard.decisions, crate::keys::offset_key(*first), value);
    }
    Ok(())
}

/// Deletes, in the commit's write batch, the decisions taken more than `keep` ago; returns how
/// many, for [`decided`] to forget once the batch is committed.
pub(crate) fn expire_decisions(
    shard: &Shard,
    keep: std::time::Duration,
    batch: &mut fjall::OwnedWriteBatch,
) -> usize {
    let taken = shard.decided.lock();
    let now = std::time::Instant::now();
    let mut expired = 0;
    for (first, at) in taken.iter() {
        if now.duration_since(*at) < keep {
            break;
        }
        batch.remove(&shard.decisions, crate::keys::offset_key(*first));
        expired += 1;
    }
    expired
}

/// After a commit: forgets the `expired` decisions it deleted and notes when `sorted`'s were
/// taken.
pub(crate) fn decided(shard: &Shard, expired: usize, sorted: &Sorted) {
    let mut taken = shard.decided.lock();
    let expired = expired.min(taken.len());
    taken.drain(..expired);
    let now = std::time::Instant::now();
    taken.extend(sorted.decisions.iter().map(|(first, _)| (*first, now)));
}

/// Remembers the committed versions of `sorted` in memory.
pub(crate) fn remember(shard: &Shard, sorted: Sorted) {
    let mut cache = shard.version_cache.lock();
    if cache.versions.len() + sorted.touched.len() > CACHED_VERSIONS {
        cache.versions.clear();
        cache.complete = false;
    }
    cache.versions.extend(sorted.touched);
}

/// The decision on the batch whose first record is at `first`, if one was taken.
pub(crate) fn decision(shard: &Shard, first: u64) -> Result<Option<BatchDecision>> {
    let Some(value) = shard.decisions.get(crate::keys::offset_key(first))? else {
        return Ok(None);
    };
    serde_json::from_slice(&value)
        .map(Some)
        .map_err(|e| Error::Corrupt {
            location: format!("decision at {}/{first}", shard.label()),
            reason: e.to_string(),
        })
}
