//! The table schema of a stream: the columns every stream has, then its declared fields.

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use std::sync::{Arc, LazyLock};
use strata_proto::{FieldType, StreamInfo};

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
/// Column index of `version` (Int64, nullable): the event's place among its key's events, from 1
/// (NULL without a key).
pub const VERSION: usize = 7;
/// Column index of the first declared field; field `i` is column `FIELDS + i`.
pub const FIELDS: usize = 8;

/// The type of the `time` column.
pub fn time_type() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
}

/// The Arrow type of a declared field.
pub fn field_type(t: FieldType) -> DataType {
    match t {
        FieldType::String => DataType::Utf8View,
        FieldType::Long => DataType::Int64,
        FieldType::Double => DataType::Float64,
        FieldType::Boolean => DataType::Boolean,
        FieldType::Timestamp => time_type(),
    }
}

/// The field metadata key that marks a text column as JSON, with the value [`JSON`].
pub const TEXT_KIND: &str = "strata.text";
/// The value of [`TEXT_KIND`] for a column of JSON text.
pub const JSON: &str = "json";

/// The `data` column: text, marked as JSON ([`is_json`]). The mark goes wherever the column goes
/// (under another name too) and not to text made from it, so that a front end can type the
/// column by what it is rather than by its name (PostgreSQL's `json`).
fn data_field() -> Field {
    Field::new("data", DataType::Utf8, false).with_metadata(
        [(TEXT_KIND.to_owned(), JSON.to_owned())]
            .into_iter()
            .collect(),
    )
}

/// Whether `field` is a stream's `data` column (or the same column renamed): JSON text.
pub fn is_json(field: &Field) -> bool {
    field.metadata().get(TEXT_KIND).map(String::as_str) == Some(JSON)
}

static BASE: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("partition", DataType::Int32, false),
        Field::new("offset", DataType::Int64, false),
        Field::new("time", time_type(), false),
        Field::new("key", DataType::Utf8, true),
        Field::new("id", DataType::Utf8, true),
        Field::new("type", DataType::Utf8, true),
        data_field(),
        Field::new("version", DataType::Int64, true),
    ]))
});

/// The columns every stream has: `partition, offset, time, key, id, type, data, version`.
pub fn table_schema() -> SchemaRef {
    BASE.clone()
}

/// The SQL schema of `stream`: the base columns, then each declared field (nullable).
pub fn stream_schema(stream: &StreamInfo) -> SchemaRef {
    if stream.fields.is_empty() {
        return table_schema();
    }
    let mut fields: Vec<Field> = BASE.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.extend(
        stream
            .fields
            .iter()
            .map(|f| Field::new(&f.name, field_type(f.field_type), true)),
    );
    Arc::new(Schema::new(fields))
}

/// Indexes of the base columns, in order (what replay reads).
pub fn base_columns() -> Vec<usize> {
    (0..FIELDS).collect()
}
