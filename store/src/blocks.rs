//! Making blocks: once a shard's tail holds `block_rows` rows, its oldest `block_rows` become one
//! columnar block (and the rows past it of the chunk it ends in, a chunk of their own).
//!
//! A block takes tens of milliseconds (reading and concatenating its tail chunks, encoding the
//! columns, writing the column, id and key tables into the bulk database, see `bulk.rs`). Made
//! inside the commit that filled the tail, it delayed that commit's visibility and every commit
//! of the partition queued behind it (the p99 of append → visible). So a thread of its own makes
//! it while commits go on: the shard's lock is held only for the write batch that swaps the
//! tail's rows for the block's metadata. Commits make blocks themselves only when the tail has
//! fallen `store.block_backlog` blocks behind, which bounds the tail (and its in-memory index)
//! when appends outrun the block maker.
//!
//! Block boundaries depend only on the stored events (every `block_rows` rows from the tail
//! start), not on when a block is made, so a rebuild from the log makes the same blocks.

use crate::block::{decode_tail, encode_block, encode_tail, stored_offsets, stored_schema, widen};
use crate::bulk;
use crate::index::index_block;
use crate::keys::{column_key, offset_key, state_key};
use crate::shard::Shard;
use crate::{Result, StoreConfig};
use fjall::{Database, Keyspace, Readable};
use parking_lot::{Condvar, Mutex};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use strata_proto::FieldDef;

/// Makes the blocks of a store's shards, in the background or in the caller (a clone shares
/// the running jobs).
#[derive(Clone)]
pub(crate) struct BlockMaker {
    db: Database,
    meta: Keyspace,
    block_rows: usize,
    backlog: u64,
    /// Background jobs running, and whether the store is closing.
    jobs: Arc<(Mutex<Jobs>, Condvar)>,
}

#[derive(Default)]
struct Jobs {
    running: usize,
    closing: bool,
}

impl BlockMaker {
    pub(crate) fn new(db: Database, meta: Keyspace, config: &StoreConfig) -> Self {
        Self {
            db,
            meta,
            block_rows: config.block_rows.max(1),
            backlog: config.block_backlog.max(1),
            jobs: Arc::default(),
        }
    }

    /// After a commit left `tail_rows` rows in `shard`'s tail: makes blocks in the background,
    /// or right here when the tail is `backlog` blocks long.
    ///
    /// # Errors
    /// Storage failures of a block made here.
    pub(crate) fn after_commit(
        &self,
        shard: &Arc<Shard>,
        fields: &[FieldDef],
        tail_rows: u64,
    ) -> Result<()> {
        let block_rows = self.block_rows as u64;
        if tail_rows < block_rows {
            return Ok(());
        }
        if tail_rows >= self.backlog * block_rows {
            return self.make(shard, fields);
        }
        if shard.making_blocks.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        {
            let mut jobs = self.jobs.0.lock();
            if jobs.closing {
                shard.making_blocks.store(false, Ordering::Release);
                return Ok(());
            }
            jobs.running += 1;
        }
        let job = self.clone();
        let (job_shard, job_fields) = (shard.clone(), fields.to_vec());
        let spawned = std::thread::Builder::new()
            .name("strata-blocks".into())
            .spawn(move || {
                crate::cpu::background_priority();
                job.background(&job_shard, &job_fields);
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start a block thread; the commit makes the block");
            shard.making_blocks.store(false, Ordering::Release);
            self.finished();
            return self.make(shard, fields);
        }
        Ok(())
    }

    /// A background job: blocks until the tail is short or the store closes.
    fn background(&self, shard: &Arc<Shard>, fields: &[FieldDef]) {
        loop {
            if let Err(e) = crate::cpu::counted(|| self.make(shard, fields)) {
                tracing::error!(shard = %shard.label(), error = %e, "making a block failed; the next commit tries again");
            }
            shard.making_blocks.store(false, Ordering::Release);
            // A commit between the last check and the flag's reset found the flag set.
            let pending = shard.state.lock().tail_rows >= self.block_rows as u64;
            if !pending || self.closing() || shard.making_blocks.swap(true, Ordering::AcqRel) {
                break;
            }
        }
        self.finished();
    }

    fn closing(&self) -> bool {
        self.jobs.0.lock().closing
    }

    fn finished(&self) {
        let (jobs, done) = &*self.jobs;
        jobs.lock().running -= 1;
        done.notify_all();
    }

    /// Stops starting blocks and waits for the ones being made (the store is closing).
    pub(crate) fn close(&self) {
        let (jobs, done) = &*self.jobs;
        let mut jobs = jobs.lock();
        jobs.closing = true;
        while jobs.running > 0 {
            done.wait(&mut jobs);
        }
    }

    /// Makes blocks of `shard` while its tail holds `block_rows` rows (one maker per shard at a
    /// time; commits go on meanwhile).
    ///
    /// # Errors
    /// Storage failures, an unreadable tail chunk.
    pub(crate) fn make(&self, shard: &Shard, fields: &[FieldDef]) -> Result<()> {
        let _maker = shard.block_maker.lock();
        while !self.closing() && self.make_one(shard, fields)? {}
        Ok(())
    }

    /// Makes the shard's next block if its tail is long enough; returns whether it made one.
    pub(crate) fn make_one(&self, shard: &Shard, fields: &[FieldDef]) -> Result<bool> {
        let started = std::time::Instant::now();
        let block_rows = self.block_rows;
        let (state, snapshot) = {
            let state = shard.state.lock();
            (*state, self.db.snapshot())
        };
        if state.tail_rows < block_rows as u64 {
            return Ok(false);
        }
        // The tail's oldest chunks as of the snapshot, as far as the block reaches (commits after
        // it add chunks at later offsets). Only the chunk the block ends in is written again, for
        // its rows past the block: a tail running blocks behind is not rewritten block by block.
        let mut keys = Vec::new();
        let mut chunks = Vec::new();
        let mut rows = 0usize;
        for item in snapshot.range(&shard.tail, offset_key(state.tail_start)..) {
            let (k, v) = item.into_inner()?;
            let label = || format!("{} tail chunk {:?}", shard.label(), &*k);
            let chunk = widen(decode_tail(&v, None, label)?, fields)?;
            rows += chunk.num_rows();
            chunks.push(chunk);
            keys.push(k);
            if rows >= block_rows {
                break;
            }
        }
        drop(snapshot);
        let all = arrow::compute::concat_batches(&stored_schema(fields), &chunks)?;
        drop(chunks);
        if all.num_rows() < block_rows {
            // The counter ran ahead of the rows (it cannot, but never loop on it).
            let mut state_now = shard.state.lock();
            let mut next = *state_now;
            next.tail_rows -= state.tail_rows - all.num_rows() as u64;
            self.meta
                .insert(state_key(&shard.stream, shard.partition), next.encode())?;
            *state_now = next;
            return Ok(false);
        }
        let block = all.slice(0, block_rows);
        let (mut columns, meta) = encode_block(&block)?;
        columns.sort_unstable_by_key(|(column, _)| *column);
        bulk::ingest(
            &shard.blocks,
            columns
                .into_iter()
                .map(|(column, value)| (column_key(meta.first, column).to_vec(), value)),
        )?;
        index_block(shard, &block)?;
        let rest = all.slice(block_rows, all.num_rows() - block_rows);
        let mut batch = self.db.batch();
        batch.insert(&shard.bmeta, offset_key(meta.first), meta.encode());
        for k in keys {
            batch.remove(&shard.tail, k);
        }
        if let Some(first) = stored_offsets(&rest)?.first() {
            batch.insert(&shard.tail, offset_key(*first as u64), encode_tail(&rest)?);
        }
        {
            let mut state = shard.state.lock();
            let mut next = *state;
            next.tail_rows -= block_rows as u64;
            next.tail_start = meta.last + 1;
            batch.insert(
                &self.meta,
                state_key(&shard.stream, shard.partition),
                next.encode(),
            );
            batch.commit()?;
            *state = next;
            shard.tail_index.lock().forget_before(next.tail_start);
        }
        metrics::counter!("strata_store_blocks_written_total").increment(1);
        metrics::histogram!("strata_store_block_seconds").record(started.elapsed().as_secs_f64());
        Ok(true)
    }
}
