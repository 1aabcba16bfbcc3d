//! Replay output: full-schema record batches as NDJSON lines.

use crate::schema;
use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Int32Type, Int64Type, TimestampMillisecondType};
use strata_proto::{Line, needs_escape};

/// Appends every row of `batch` (with all table columns, in table order) to `out` as one NDJSON
/// line each: `{"partition","offset","time","key","id","type","version","data"}`.
pub fn write_batch(batch: &RecordBatch, out: &mut Vec<u8>) {
    if let Some(rows) = Rows::new(batch) {
        for i in 0..batch.num_rows() {
            rows.write(i, out);
        }
    }
}

/// The bytes of the values of `column` (of its slice, where it is one).
fn values_of(column: &arrow::array::StringArray) -> &[u8] {
    let offsets = column.value_offsets();
    let (first, last) = (offsets.first(), offsets.last());
    let range = first.zip(last).map(|(&f, &l)| f as usize..l as usize);
    range
        .and_then(|r| column.value_data().get(r))
        .unwrap_or_else(|| column.value_data())
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
    /// No key, id or type of the batch needs JSON escaping (checked once for whole columns).
    plain_texts: bool,
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
        let keys = batch.column(schema::KEY).as_string::<i32>();
        let ids = batch.column(schema::ID).as_string::<i32>();
        let types = batch.column(schema::TYPE).as_string::<i32>();
        // One pass over each column's values (contiguous bytes) instead of a check per value.
        let plain_texts = [keys, ids, types]
            .iter()
            .all(|c| !needs_escape(values_of(c)));
        Some(Self {
            partitions: batch.column(schema::PARTITION).as_primitive::<Int32Type>(),
            offsets: batch.column(schema::OFFSET).as_primitive::<Int64Type>(),
            times: batch
                .column(schema::TIME)
                .as_primitive::<TimestampMillisecondType>(),
            keys,
            ids,
            types,
            data: batch.column(schema::DATA).as_string::<i32>(),
            versions: batch.column(schema::VERSION).as_primitive::<Int64Type>(),
            plain_texts,
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
        Line {
            partition: self.partitions.value(i) as u32,
            offset: self.offsets.value(i) as u64,
            time_ms: self.times.value(i),
            key: opt(self.keys, i),
            id: opt(self.ids, i),
            event_type: opt(self.types, i),
            version: (!self.versions.is_null(i)).then(|| self.versions.value(i) as u64),
            data: self.data.value(i),
        }
        .write(out, self.plain_texts);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int32Array, Int64Array, StringArray, TimestampMillisecondArray};
    use std::sync::Arc;

    fn batch(keys: Vec<Option<&str>>) -> RecordBatch {
        let n = keys.len();
        let time = TimestampMillisecondArray::from(vec![1_714_521_600_000; n]).with_timezone("UTC");
        RecordBatch::try_new(
            schema::table_schema(),
            vec![
                Arc::new(Int32Array::from(vec![1; n])),
                Arc::new(Int64Array::from_iter_values(0..n as i64)),
                Arc::new(time),
                Arc::new(StringArray::from(keys)),
                Arc::new(StringArray::from(vec![Some("id"); n])),
                Arc::new(StringArray::from(vec![None::<&str>; n])),
                Arc::new(StringArray::from(vec!["{\"a\":1}"; n])),
                Arc::new(Int64Array::from(vec![Some(3); n])),
            ],
        )
        .unwrap()
    }

    fn keys_written(batch: &RecordBatch) -> Vec<Option<String>> {
        let mut out = Vec::new();
        write_batch(batch, &mut out);
        out.split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| {
                let v: serde_json::Value = serde_json::from_slice(l).unwrap();
                v["key"].as_str().map(str::to_owned)
            })
            .collect()
    }

    #[test]
    fn a_column_checked_at_once_still_escapes_what_needs_it() {
        let keys = vec![
            Some("plain"),
            Some("a \"quoted\" \\ key\n"),
            None,
            Some("é"),
        ];
        let b = batch(keys.clone());
        let expected: Vec<Option<String>> = keys.iter().map(|k| k.map(str::to_owned)).collect();
        assert_eq!(keys_written(&b), expected);
        // A slice without the key that needs escaping is written plainly, and the same.
        assert_eq!(keys_written(&b.slice(2, 2)), expected[2..].to_vec());
        assert_eq!(keys_written(&b.slice(0, 1)), expected[..1].to_vec());
        assert_eq!(keys_written(&b.slice(1, 1)), expected[1..2].to_vec());
    }
}
