//! The table schema every stream has, and its column indexes.

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use std::sync::{Arc, LazyLock};

/// Column index of `partition` (Int32).
pub const PARTITION: usize = 0;
/// Column index of `offset` (Int64).
pub const OFFSET: usize = 1;
/// Column index of `time` (timestamp, milliseconds, UTC).
pub const TIME: usize = 2;
/// Column index of `key` (Utf8, nullable).
pub const KEY: usize = 3;
/// Column index of `id` (Utf8, nullable).
pub const ID: usize = 4;
/// Column index of `type` (Utf8, nullable).
pub const TYPE: usize = 5;
/// Column index of `data` (Utf8: the event's JSON text).
pub const DATA: usize = 6;

/// The type of the `time` column.
pub fn time_type() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
}

static TABLE: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("partition", DataType::Int32, false),
        Field::new("offset", DataType::Int64, false),
        Field::new("time", time_type(), false),
        Field::new("key", DataType::Utf8, true),
        Field::new("id", DataType::Utf8, true),
        Field::new("type", DataType::Utf8, true),
        Field::new("data", DataType::Utf8, false),
    ]))
});

/// The SQL table schema of every stream: `partition, offset, time, key, id, type, data`.
pub fn table_schema() -> SchemaRef {
    TABLE.clone()
}

/// The schema of a stored block: the table schema without `partition` (constant per shard).
pub(crate) fn block_schema() -> SchemaRef {
    static BLOCK: LazyLock<SchemaRef> = LazyLock::new(|| {
        let fields: Vec<_> = TABLE.fields().iter().skip(1).cloned().collect();
        Arc::new(Schema::new(fields))
    });
    BLOCK.clone()
}
