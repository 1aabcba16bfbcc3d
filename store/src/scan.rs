//! Shard scans: the only read interface the query layer and replay use.

use crate::block::{BlockMeta, as_table_type, decode_column, decode_tail, tail_meta};
use crate::keys::{column_key, key_index_prefix, offset_from, offset_key};
use crate::schema::{self, field_type, stream_schema, table_schema};
use crate::shard::{Shard, ShardState, block_metas, start_at};
use crate::{Error, Result};
use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Int32Array, RecordBatch, RecordBatchOptions,
    UInt32Array, new_null_array,
};
use arrow::datatypes::{DataType, Int64Type, Schema, SchemaRef, TimestampMillisecondType};
use fjall::Readable;
use std::collections::VecDeque;
use std::ops::Range;
use std::sync::Arc;
use strata_proto::{FieldDef, StreamInfo};

/// What to read from a shard.
#[derive(Clone, Debug)]
pub struct ScanRequest {
    /// Table columns to return, in this order (indexes into [`schema::stream_schema`]); empty
    /// returns row counts only.
    pub projection: Vec<usize>,
    /// Offsets to return (half-open). Exact: no row outside it is returned.
    pub offsets: Range<u64>,
    /// Inclusive event-time bounds in epoch ms. Exact: blocks outside them are skipped unread.
    pub time: Option<(i64, i64)>,
    /// Only events with this key. Exact.
    pub key: Option<String>,
    /// Stop after this many rows.
    pub limit: Option<usize>,
    /// Table columns (of `projection`) returned as the blocks store them: a text column a block
    /// keeps dictionary-encoded comes as `Dictionary(Int32, Utf8)` instead of being expanded to
    /// `Utf8View` (each batch's schema says which). For an operator that groups by the column.
    pub as_stored: Vec<usize>,
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
            as_stored: Vec::new(),
        }
    }
}

/// Where rows are: a columnar block, or a tail chunk (its value, already read).
enum Source {
    Block(BlockMeta),
    Tail(BlockMeta, fjall::Slice),
}

impl Source {
    fn meta(&self) -> &BlockMeta {
        match self {
            Source::Block(m) | Source::Tail(m, _) => m,
        }
    }
}

enum Phase {
    Sources(VecDeque<Source>),
    Keyed {
        offsets: VecDeque<u64>,
        sources: Vec<Source>,
    },
    Done,
}

/// An iterator of record batches over one shard, reading one consistent snapshot (the blocks
/// and tail chunks it lists are fixed when it starts). Blocking.
pub struct ShardScan {
    shard: Arc<Shard>,
    fields: Vec<FieldDef>,
    request: ScanRequest,
    schema: SchemaRef,
    phase: Phase,
    remaining: usize,
}

/// The blocks and tail chunks of a shard that may hold offsets in `offsets`, in offset order: a
/// read near the end (a subscription's next events) opens only the chunks it needs.
fn sources(
    shard: &Shard,
    snapshot: &fjall::Snapshot,
    state: ShardState,
    offsets: &Range<u64>,
) -> Result<Vec<Source>> {
    let mut out: Vec<Source> = Vec::new();
    if offsets.start < state.tail_start {
        out.extend(
            block_metas(shard, snapshot, offsets)?
                .into_iter()
                .map(Source::Block),
        );
    }
    let tail_error = |e| Error::reading(e, &shard.label(), &shard.tail, || "the row tail".into());
    let from =
        start_at(snapshot, &shard.tail, state.tail_start, offsets.start).map_err(tail_error)?;
    for item in snapshot.range(&shard.tail, offset_key(from)..) {
        let (k, v) = item.into_inner().map_err(tail_error)?;
        let meta = tail_meta(&v, || format!("{} tail chunk {:?}", shard.label(), &*k))?;
        if meta.first >= offsets.end {
            break;
        }
        out.push(Source::Tail(meta, v));
    }
    Ok(out)
}

impl ShardScan {
    /// A scan of `shard` as of `state` and `snapshot`. A scan by key reads the key's offsets
    /// before the tail from the `keys` keyspace and takes the tail's from `tail_keyed` (the tail
    /// index's, read with `state`).
    pub(crate) fn new(
        shard: Arc<Shard>,
        info: &StreamInfo,
        snapshot: fjall::Snapshot,
        state: ShardState,
        request: ScanRequest,
        tail_keyed: Vec<u64>,
    ) -> Result<Self> {
        let schema = Arc::new(stream_schema(info).project(&request.projection)?);
        let all = sources(&shard, &snapshot, state, &request.offsets)?;
        let phase = match &request.key {
            Some(key) => {
                let prefix = key_index_prefix(key);
                let mut offsets = VecDeque::new();
                // Not through the snapshot (the bulk database is not in it, see bulk.rs): entries
                // of a block made since are at or after the snapshot's tail start.
                for item in shard.keys.prefix(&prefix) {
                    let k = item.key().map_err(|e| {
                        Error::reading(e, &shard.label(), &shard.keys, || "the key index".into())
                    })?;
                    let offset = k.get(prefix.len()..).and_then(offset_from).ok_or_else(|| {
                        Error::Corrupt {
                            location: format!("{} key index", shard.label()),
                            reason: "entry without an offset".into(),
                        }
                    })?;
                    // Entries at or after the tail start belong to the tail index (a layout of
                    // before it had them here too).
                    if offset < state.tail_start && request.offsets.contains(&offset) {
                        offsets.push_back(offset);
                    }
                }
                offsets.extend(tail_keyed);
                Phase::Keyed {
                    offsets,
                    sources: all,
                }
            }
            None => Phase::Sources(
                all.into_iter()
                    .filter(|s| s.meta().overlaps(&request.offsets, request.time))
                    .collect(),
            ),
        };
        let remaining = request.limit.unwrap_or(usize::MAX);
        Ok(Self {
            shard,
            fields: info.fields.clone(),
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

    fn read(
        &self,
        source: &Source,
        projection: &[usize],
        schema: SchemaRef,
    ) -> Result<RecordBatch> {
        read_source(
            &self.shard,
            &self.fields,
            source,
            projection,
            &self.request.as_stored,
            schema,
        )
    }

    /// Reads `projection` plus the offsets and times of `source` (those two last).
    fn read_with_helpers(&self, source: &Source) -> Result<RecordBatch> {
        let mut projection = self.request.projection.clone();
        projection.extend([schema::OFFSET, schema::TIME]);
        let mut fields: Vec<_> = self.schema.fields().iter().cloned().collect();
        fields.push(Arc::new(table_schema().field(schema::OFFSET).clone()));
        fields.push(Arc::new(table_schema().field(schema::TIME).clone()));
        self.read(source, &projection, Arc::new(Schema::new(fields)))
    }

    /// Keeps the rows of a batch from [`Self::read_with_helpers`] inside the offset and time
    /// bounds, and drops the helper columns.
    fn filter_rows(&self, batch: &RecordBatch) -> Result<RecordBatch> {
        let n = self.request.projection.len();
        let offsets = batch.column(n).as_primitive::<Int64Type>();
        let times = batch
            .column(n + 1)
            .as_primitive::<TimestampMillisecondType>();
        let range = &self.request.offsets;
        let (lo, hi) = self.request.time.unwrap_or((i64::MIN, i64::MAX));
        let keep: BooleanArray = offsets
            .values()
            .iter()
            .zip(times.values())
            .map(|(&o, &t)| Some(range.contains(&(o as u64)) && t >= lo && t <= hi))
            .collect();
        let kept = arrow::compute::filter_record_batch(batch, &keep)?;
        let columns: Vec<usize> = (0..n).collect();
        Ok(kept.project(&columns)?)
    }

    fn next_source(&self, source: &Source) -> Result<RecordBatch> {
        let range = &self.request.offsets;
        let meta = source.meta();
        let all_offsets = meta.first >= range.start && meta.last < range.end;
        let all_times = self
            .request
            .time
            .is_none_or(|(lo, hi)| meta.min_time >= lo && meta.max_time <= hi);
        if all_offsets && all_times {
            if self.request.projection.is_empty() {
                let options = RecordBatchOptions::new().with_row_count(Some(meta.rows as usize));
                return Ok(RecordBatch::try_new_with_options(
                    self.schema.clone(),
                    vec![],
                    &options,
                )?);
            }
            return self.read(source, &self.request.projection, self.schema.clone());
        }
        // Partly in the bounds: keep the rows inside by their offsets and times.
        self.filter_rows(&self.read_with_helpers(source)?)
    }

    /// The rows of the next source that holds any of the key's `offsets`.
    fn next_keyed(
        &self,
        offsets: &mut VecDeque<u64>,
        sources: &[Source],
    ) -> Result<Option<RecordBatch>> {
        while let Some(&offset) = offsets.front() {
            let i = sources.partition_point(|s| s.meta().first <= offset);
            let Some(source) = i.checked_sub(1).and_then(|i| sources.get(i)) else {
                offsets.pop_front();
                continue;
            };
            let mut wanted = Vec::new();
            while let Some(o) = offsets
                .front()
                .copied()
                .filter(|o| *o <= source.meta().last)
            {
                wanted.push(o);
                offsets.pop_front();
            }
            let batch = self.read_with_helpers(source)?;
            let stored = batch
                .column(self.request.projection.len())
                .as_primitive::<Int64Type>()
                .values();
            let rows: UInt32Array = wanted
                .iter()
                .filter_map(|o| stored.binary_search(&(*o as i64)).ok().map(|i| i as u32))
                .collect();
            if !rows.is_empty() {
                let taken = arrow::compute::take_record_batch(&batch, &rows)?;
                return Ok(Some(self.filter_rows(&taken)?));
            }
        }
        Ok(None)
    }

    fn step(&mut self) -> Result<Option<RecordBatch>> {
        loop {
            if self.remaining == 0 {
                return Ok(None);
            }
            match std::mem::replace(&mut self.phase, Phase::Done) {
                Phase::Done => return Ok(None),
                Phase::Sources(mut sources) => {
                    let Some(source) = sources.pop_front() else {
                        return Ok(None);
                    };
                    let batch = self.next_source(&source)?;
                    self.phase = Phase::Sources(sources);
                    if batch.num_rows() > 0 {
                        return Ok(Some(batch));
                    }
                }
                Phase::Keyed {
                    mut offsets,
                    sources,
                } => {
                    let batch = self.next_keyed(&mut offsets, &sources)?;
                    if batch.is_some() {
                        self.phase = Phase::Keyed { offsets, sources };
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

/// Reads the table columns `projection` of a block or tail chunk as a batch of `schema`. A
/// declared field written after the source was stored reads as NULL. The columns of `as_stored`
/// that a block keeps dictionary-encoded stay so, and the batch's schema says it.
fn read_source(
    shard: &Shard,
    fields: &[FieldDef],
    source: &Source,
    projection: &[usize],
    as_stored: &[usize],
    schema: SchemaRef,
) -> Result<RecordBatch> {
    let meta = source.meta();
    let rows = meta.rows as usize;
    let missing = |c: usize| {
        let t = fields
            .get(c - schema::FIELDS)
            .map_or(DataType::Null, |f| field_type(f.field_type));
        new_null_array(&t, rows)
    };
    let tail = match source {
        Source::Tail(_, value) => Some(decode_tail(value, None, || {
            format!("{} tail chunk at offset {}", shard.label(), meta.first)
        })?),
        Source::Block(_) => None,
    };
    let columns = projection
        .iter()
        .enumerate()
        .map(|(i, &c)| -> Result<ArrayRef> {
            if c == schema::PARTITION {
                return Ok(Arc::new(Int32Array::from_value(
                    shard.partition as i32,
                    rows,
                )));
            }
            if let Some(chunk) = &tail {
                return Ok(match chunk.columns().get(c - 1) {
                    Some(array) => array.clone(),
                    None if c >= schema::FIELDS => missing(c),
                    None => {
                        return Err(Error::Corrupt {
                            location: format!(
                                "{} tail chunk at offset {}",
                                shard.label(),
                                meta.first
                            ),
                            reason: format!("column {c} is missing"),
                        });
                    }
                });
            }
            let label = || {
                format!(
                    "{} block at offset {} column {c}",
                    shard.label(),
                    meta.first
                )
            };
            // Not through the snapshot (the bulk database is not in it, see bulk.rs): the block
            // is listed in the snapshot's metadata, so its columns were written before.
            let read = shard.blocks.get(column_key(meta.first, c)).map_err(|e| {
                Error::reading(e, &shard.label(), &shard.blocks, || {
                    format!("block at offset {} column {c}", meta.first)
                })
            })?;
            match read {
                Some(bytes) => {
                    let t = schema.field(i).data_type();
                    let decoded = decode_column(bytes, label)?;
                    let array = if as_stored.contains(&c)
                        && matches!(decoded.data_type(), DataType::Dictionary(..))
                    {
                        decoded
                    } else {
                        as_table_type(decoded, t)?
                    };
                    if array.len() != rows {
                        return Err(Error::Corrupt {
                            location: label(),
                            reason: format!("{} rows where the block has {rows}", array.len()),
                        });
                    }
                    Ok(array)
                }
                None if c >= schema::FIELDS => Ok(missing(c)),
                None => Err(Error::Corrupt {
                    location: label(),
                    reason: "column is missing".into(),
                }),
            }
        })
        .collect::<Result<Vec<_>>>()?;
    let schema = if columns
        .iter()
        .zip(schema.fields())
        .all(|(c, f)| c.data_type() == f.data_type())
    {
        schema
    } else {
        let fields: Vec<_> = columns
            .iter()
            .zip(schema.fields())
            .map(|(c, f)| f.as_ref().clone().with_data_type(c.data_type().clone()))
            .collect();
        Arc::new(Schema::new(fields))
    };
    let options = RecordBatchOptions::new().with_row_count(Some(rows));
    Ok(RecordBatch::try_new_with_options(
        schema, columns, &options,
    )?)
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
    for source in sources(shard, snapshot, state, &(0..u64::MAX))? {
        if source.meta().max_time < time_ms {
            continue;
        }
        let batch = read_source(shard, &[], &source, &projection, &[], schema.clone())?;
        let offsets = batch.column(0).as_primitive::<Int64Type>();
        let times = batch.column(1).as_primitive::<TimestampMillisecondType>();
        if let Some(i) = times.values().iter().position(|&t| t >= time_ms) {
            return Ok(offsets.value(i) as u64);
        }
    }
    Ok(state.next)
}
