//! Replay output: full-schema record batches as NDJSON lines.

use crate::schema;
use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Int32Type, Int64Type, TimestampMillisecondType};
use strata_proto::write_ndjson_fields;

/// Appends every row of `batch` (with all table columns, in table order) to `out` as one NDJSON
/// line each: `{"partition","offset","time","key","id","type","version","data"}`.
pub fn write_batch(batch: &RecordBatch, out: &mut Vec<u8>) {
    if let Some(rows) = Rows::new(batch) {
        for i in 0..batch.num_rows() {
            rows.write(i, out);
        }
    }
}

/// The rows of a replay batch (the table's columns first, in table order), written one at a
/// time, for writers that frame each event (a subscription's cursor, Server-Sent Events).
pub struct Rows<'a> {
    partitions: &'a arrow::array::Int32Array,
    offsets: &'a arrow::array::Int64Array,
    times: &'a arrow::array::TimestampMillisecondArray,
    keys: &'a arrow::array::StringArray,
    ids: &'a arrow::array::StringArray,
    types: &'a arrow::array::StringArray,
    data: &'a arrow::array::StringArray,
    versions: &'a arrow::array::Int64Array,
}

impl<'a> Rows<'a> {
    /// The rows of `batch`; `None` when it does not start with the table's columns.
    pub fn new(batch: &'a RecordBatch) -> Option<Self> {
        let schema = schema::table_schema();
        let columns = schema.fields().len();
        if batch.num_columns() < columns
            || (0..columns).any(|c| batch.column(c).data_type() != schema.field(c).data_type())
        {
            return None;
        }
        Some(Self {
            partitions: batch.column(schema::PARTITION).as_primitive::<Int32Type>(),
            offsets: batch.column(schema::OFFSET).as_primitive::<Int64Type>(),
            times: batch
                .column(schema::TIME)
                .as_primitive::<TimestampMillisecondType>(),
            keys: batch.column(schema::KEY).as_string::<i32>(),
            ids: batch.column(schema::ID).as_string::<i32>(),
            types: batch.column(schema::TYPE).as_string::<i32>(),
            data: batch.column(schema::DATA).as_string::<i32>(),
            versions: batch.column(schema::VERSION).as_primitive::<Int64Type>(),
        })
    }

    /// The partition and offset of row `i`.
    pub fn position(&self, i: usize) -> (u32, u64) {
        (
            self.partitions.value(i) as u32,
            self.offsets.value(i) as u64,
        )
    }

    /// Appends row `i` as one NDJSON line (ending in `}\n`).
    pub fn write(&self, i: usize, out: &mut Vec<u8>) {
        fn opt(col: &arrow::array::StringArray, i: usize) -> Option<&str> {
            (!col.is_null(i)).then(|| col.value(i))
        }
        write_ndjson_fields(
            out,
            self.partitions.value(i) as u32,
            self.offsets.value(i) as u64,
            self.times.value(i),
            opt(self.keys, i),
            opt(self.ids, i),
            opt(self.types, i),
            (!self.versions.is_null(i)).then(|| self.versions.value(i) as u64),
            self.data.value(i),
        );
    }
}
