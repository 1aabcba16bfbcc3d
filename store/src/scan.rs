//! Shard scans: the only read interface the query layer and replay use.

use crate::block::{BlockMeta, column_key, decode_column, rows_to_batch};
use crate::schema::{self, field_type, stream_schema, table_schema};
use crate::shard::{Shard, ShardState, block_metas, decode_row, key_index_prefix, offset_key};
use crate::{Error, Result};
use arrow::array::{
    Array, ArrayRef, AsArray, Int32Array, RecordBatch, RecordBatchOptions, new_null_array,
};
use arrow::datatypes::{DataType, Int64Type, Schema, SchemaRef, TimestampMillisecondType};
use fjall::Readable;
use std::collections::VecDeque;
use std::ops::Range;
use std::sync::Arc;
use strata_proto::{Event, FieldDef, StreamInfo};

/// What to read from a shard.
#[derive(Clone, Debug)]
pub struct ScanRequest {
    /// Table columns to return, in this order (indexes into [`schema::stream_schema`]); empty
    /// returns row counts only.
    pub projection: Vec<usize>,
    /// Offsets to return (half-open). Exact: no row outside it is returned.
    pub offsets: Range<u64>,
    /// Inclusive event-time bounds in epoch ms. Prunes blocks and tail rows; rows of a block that
    /// overlaps the bounds may still fall outside them.
    pub time: Option<(i64, i64)>,
    /// Only events with this key. Exact.
    pub key: Option<String>,
    /// Stop after this many rows.
    pub limit: Option<usize>,
    /// Rows per batch read from the tail or by key.
    pub batch_rows: usize,
}

impl ScanRequest {
    /// Every row of the shard, with the columns every stream has (what replay returns).
    pub fn all() -> Self {
        Self {
            projection: schema::base_columns(),
            offsets: 0..u64::MAX,
            time: None,
            key: None,
            limit: None,
            batch_rows: 8192,
        }
    }
}

enum Phase {
    Blocks(VecDeque<BlockMeta>),
    Tail {
        next: u64,
    },
    Keyed {
        offsets: VecDeque<u64>,
        blocks: Vec<BlockMeta>,
        cached: Option<(u64, RecordBatch)>,
    },
    Done,
}

/// An iterator of record batches over one shard, reading one consistent snapshot. Blocking.
pub struct ShardScan {
    shard: Arc<Shard>,
    fields: Vec<FieldDef>,
    snapshot: fjall::Snapshot,
    state: ShardState,
    request: ScanRequest,
    schema: SchemaRef,
    phase: Phase,
    remaining: usize,
}

impl ShardScan {
    pub(crate) fn new(
        shard: Arc<Shard>,
        info: &StreamInfo,
        snapshot: fjall::Snapshot,
        state: ShardState,
        request: ScanRequest,
    ) -> Result<Self> {
        let schema = Arc::new(stream_schema(info).project(&request.projection)?);
        let metas = block_metas(&shard, &snapshot)?;
        let phase = match &request.key {
            Some(key) => {
                let prefix = key_index_prefix(key);
                let mut offsets = VecDeque::new();
                for item in snapshot.prefix(&shard.keys, &prefix) {
                    let k = item.key()?;
                    let offset = k
                        .get(prefix.len()..)
                        .and_then(|b| <[u8; 8]>::try_from(b).ok())
                        .map(u64::from_be_bytes)
                        .ok_or_else(|| Error::Corrupt {
                            location: format!("{} key index", shard.label()),
                            reason: "entry without an offset".into(),
                        })?;
                    if request.offsets.contains(&offset) {
                        offsets.push_back(offset);
                    }
                }
                Phase::Keyed {
                    offsets,
                    blocks: metas,
                    cached: None,
                }
            }
            None => Phase::Blocks(
                metas
                    .into_iter()
                    .filter(|m| m.overlaps(&request.offsets, request.time))
                    .collect(),
            ),
        };
        let remaining = request.limit.unwrap_or(usize::MAX);
        Ok(Self {
            shard,
            fields: info.fields.clone(),
            snapshot,
            state,
            request,
            schema,
            phase,
            remaining,
        })
    }

    /// The schema of the batches this scan returns.
    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn next_block(&mut self, meta: BlockMeta) -> Result<RecordBatch> {
        let range = &self.request.offsets;
        let projection = &self.request.projection;
        if meta.first >= range.start && meta.last < range.end {
            if projection.is_empty() {
                let options = RecordBatchOptions::new().with_row_count(Some(meta.rows as usize));
                return Ok(RecordBatch::try_new_with_options(
                    self.schema.clone(),
                    vec![],
                    &options,
                )?);
            }
            return read_block(
                &self.shard,
                &self.snapshot,
                &self.fields,
                &meta,
                projection,
                self.schema.clone(),
            );
        }
        // Partly in range: read the offsets too and cut the rows outside.
        let mut with_offsets = projection.clone();
        with_offsets.push(schema::OFFSET);
        let mut fields: Vec<_> = self.schema.fields().iter().cloned().collect();
        fields.push(Arc::new(table_schema().field(schema::OFFSET).clone()));
        let batch = read_block(
            &self.shard,
            &self.snapshot,
            &self.fields,
            &meta,
            &with_offsets,
            Arc::new(Schema::new(fields)),
        )?;
        let offsets = batch
            .column(projection.len())
            .as_primitive::<Int64Type>()
            .values();
        let lo = offsets.partition_point(|&o| (o as u64) < range.start);
        let hi = offsets.partition_point(|&o| (o as u64) < range.end);
        let keep: Vec<usize> = (0..projection.len()).collect();
        Ok(batch.slice(lo, hi - lo).project(&keep)?)
    }

    fn next_tail(&mut self, next: u64) -> Result<(Option<RecordBatch>, Option<u64>)> {
        let start = next
            .max(self.request.offsets.start)
            .max(self.state.tail_start);
        let end = self.request.offsets.end;
        if start >= end {
            return Ok((None, None));
        }
        let want = self.request.batch_rows.max(1).min(self.remaining);
        let mut rows = Vec::with_capacity(want.min(65_536));
        let mut last = None;
        for item in self
            .snapshot
            .range(&self.shard.tail, offset_key(start)..offset_key(end))
        {
            let (k, v) = item.into_inner()?;
            let (offset, event) = decode_row(&k, &v, || self.shard.label())?;
            last = Some(offset);
            if let Some((lo, hi)) = self.request.time
                && (event.time_ms < lo || event.time_ms > hi)
            {
                continue;
            }
            rows.push((offset, event));
            if rows.len() >= want {
                break;
            }
        }
        let resume = match last {
            Some(o) if rows.len() >= want => Some(o + 1),
            _ => None,
        };
        if rows.is_empty() {
            return Ok((None, resume));
        }
        let batch = rows_to_batch(
            &rows,
            self.shard.partition,
            &self.request.projection,
            &self.fields,
            self.schema.clone(),
        )?;
        Ok((Some(batch), resume))
    }

    fn next_keyed(&mut self) -> Result<Option<RecordBatch>> {
        let want = self.request.batch_rows.max(1).min(self.remaining);
        let tail_start = self.state.tail_start;
        let Phase::Keyed {
            offsets,
            blocks,
            cached,
        } = &mut self.phase
        else {
            return Ok(None);
        };
        let mut rows = Vec::with_capacity(want.min(offsets.len()));
        while rows.len() < want {
            let Some(offset) = offsets.pop_front() else {
                break;
            };
            if offset >= tail_start {
                if let Some(v) = self.snapshot.get(&self.shard.tail, offset_key(offset))? {
                    rows.push(decode_row(&offset_key(offset), &v, || self.shard.label())?);
                }
                continue;
            }
            let i = blocks.partition_point(|m| m.first <= offset);
            let Some(meta) = i.checked_sub(1).and_then(|i| blocks.get(i)).copied() else {
                continue;
            };
            if cached
                .as_ref()
                .is_none_or(|(first, _)| *first != meta.first)
            {
                let base = schema::base_columns();
                let batch = read_block(
                    &self.shard,
                    &self.snapshot,
                    &[],
                    &meta,
                    &base,
                    table_schema(),
                )?;
                *cached = Some((meta.first, batch));
            }
            if let Some(row) = cached
                .as_ref()
                .and_then(|(_, batch)| row_at_offset(batch, offset))
            {
                rows.push((offset, row));
            }
        }
        if rows.is_empty() {
            return Ok(None);
        }
        // Declared fields are read from `data` as the block would have stored them.
        Ok(Some(rows_to_batch(
            &rows,
            self.shard.partition,
            &self.request.projection,
            &self.fields,
            self.schema.clone(),
        )?))
    }

    fn step(&mut self) -> Result<Option<RecordBatch>> {
        loop {
            if self.remaining == 0 {
                return Ok(None);
            }
            match std::mem::replace(&mut self.phase, Phase::Done) {
                Phase::Done => return Ok(None),
                Phase::Blocks(mut metas) => match metas.pop_front() {
                    Some(meta) => {
                        self.phase = Phase::Blocks(metas);
                        let batch = self.next_block(meta)?;
                        if batch.num_rows() > 0 {
                            return Ok(Some(batch));
                        }
                    }
                    None => self.phase = Phase::Tail { next: 0 },
                },
                Phase::Tail { next } => {
                    let (batch, resume) = self.next_tail(next)?;
                    if let Some(next) = resume {
                        self.phase = Phase::Tail { next };
                    }
                    if batch.is_some() {
                        return Ok(batch);
                    }
                }
                keyed @ Phase::Keyed { .. } => {
                    self.phase = keyed;
                    let batch = self.next_keyed()?;
                    if batch.is_none() {
                        self.phase = Phase::Done;
                    }
                    return Ok(batch);
                }
            }
        }
    }
}

impl Iterator for ShardScan {
    type Item = Result<RecordBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.step() {
            Ok(Some(mut batch)) => {
                if batch.num_rows() > self.remaining {
                    batch = batch.slice(0, self.remaining);
                }
                self.remaining -= batch.num_rows();
                Some(Ok(batch))
            }
            Ok(None) => None,
            Err(e) => {
                self.phase = Phase::Done;
                Some(Err(e))
            }
        }
    }
}

/// Reads the columns `projection` of a block as a batch of `schema`. A declared field the block
/// was written without (declared later) reads as NULL.
fn read_block(
    shard: &Shard,
    snapshot: &fjall::Snapshot,
    fields: &[FieldDef],
    meta: &BlockMeta,
    projection: &[usize],
    schema: SchemaRef,
) -> Result<RecordBatch> {
    let rows = meta.rows as usize;
    let columns = projection
        .iter()
        .map(|&c| -> Result<ArrayRef> {
            if c == schema::PARTITION {
                return Ok(Arc::new(Int32Array::from_value(
                    shard.partition as i32,
                    rows,
                )));
            }
            let label = || {
                format!(
                    "{} block at offset {} column {c}",
                    shard.label(),
                    meta.first
                )
            };
            match snapshot.get(&shard.blocks, column_key(meta.first, c))? {
                Some(bytes) => {
                    let array = decode_column(&bytes, label)?;
                    if array.len() != rows {
                        return Err(Error::Corrupt {
                            location: label(),
                            reason: format!("{} rows where the block has {rows}", array.len()),
                        });
                    }
                    Ok(array)
                }
                None if c >= schema::FIELDS => {
                    let t = fields
                        .get(c - schema::FIELDS)
                        .map_or(DataType::Null, |f| field_type(f.field_type));
                    Ok(new_null_array(&t, rows))
                }
                None => Err(Error::Corrupt {
                    location: label(),
                    reason: "column is missing".into(),
                }),
            }
        })
        .collect::<Result<Vec<_>>>()?;
    let options = RecordBatchOptions::new().with_row_count(Some(rows));
    Ok(RecordBatch::try_new_with_options(
        schema, columns, &options,
    )?)
}

/// The event at `offset` of a block batch with the base columns.
fn row_at_offset(batch: &RecordBatch, offset: u64) -> Option<Event> {
    let offsets = batch.column(schema::OFFSET).as_primitive::<Int64Type>();
    let i = offsets.values().binary_search(&(offset as i64)).ok()?;
    let text = |c: usize| {
        let col = batch.column(c).as_string::<i32>();
        (!col.is_null(i)).then(|| col.value(i).to_owned())
    };
    Some(Event {
        time_ms: batch
            .column(schema::TIME)
            .as_primitive::<TimestampMillisecondType>()
            .value(i),
        key: text(schema::KEY),
        id: text(schema::ID),
        event_type: text(schema::TYPE),
        data: text(schema::DATA).unwrap_or_default(),
    })
}

/// See [`crate::Store::offset_for_time`].
pub(crate) fn offset_for_time(
    shard: &Shard,
    snapshot: &fjall::Snapshot,
    state: ShardState,
    time_ms: i64,
) -> Result<u64> {
    let projection = [schema::OFFSET, schema::TIME];
    let schema = Arc::new(table_schema().project(&projection)?);
    for meta in block_metas(shard, snapshot)? {
        if meta.max_time < time_ms {
            continue;
        }
        let batch = read_block(shard, snapshot, &[], &meta, &projection, schema.clone())?;
        let offsets = batch.column(0).as_primitive::<Int64Type>();
        let times = batch.column(1).as_primitive::<TimestampMillisecondType>();
        if let Some(i) = times.values().iter().position(|&t| t >= time_ms) {
            return Ok(offsets.value(i) as u64);
        }
    }
    for item in snapshot.range(&shard.tail, offset_key(state.tail_start)..) {
        let (k, v) = item.into_inner()?;
        let (offset, event) = decode_row(&k, &v, || shard.label())?;
        if event.time_ms >= time_ms {
            return Ok(offset);
        }
    }
    Ok(state.next)
}
