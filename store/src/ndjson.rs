//! Replay output: full-schema record batches as NDJSON lines.

use crate::schema;
use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Int32Type, Int64Type, TimestampMillisecondType};
use strata_proto::write_ndjson_fields;

/// Appends every row of `batch` (with all table columns, in table order) to `out` as one NDJSON
/// line each: `{"partition","offset","time","key","id","type","data"}`.
pub fn write_batch(batch: &RecordBatch, out: &mut Vec<u8>) {
    if batch.num_columns() != schema::table_schema().fields().len() {
        return;
    }
    let partitions = batch.column(schema::PARTITION).as_primitive::<Int32Type>();
    let offsets = batch.column(schema::OFFSET).as_primitive::<Int64Type>();
    let times = batch
        .column(schema::TIME)
        .as_primitive::<TimestampMillisecondType>();
    let keys = batch.column(schema::KEY).as_string::<i32>();
    let ids = batch.column(schema::ID).as_string::<i32>();
    let types = batch.column(schema::TYPE).as_string::<i32>();
    let data = batch.column(schema::DATA).as_string::<i32>();
    fn opt(col: &arrow::array::StringArray, i: usize) -> Option<&str> {
        (!col.is_null(i)).then(|| col.value(i))
    }
    for i in 0..batch.num_rows() {
        write_ndjson_fields(
            out,
            partitions.value(i) as u32,
            offsets.value(i) as u64,
            times.value(i),
            opt(keys, i),
            opt(ids, i),
            opt(types, i),
            data.value(i),
        );
    }
}
