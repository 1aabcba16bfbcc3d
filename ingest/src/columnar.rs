//! Decoding of columnar append bodies: an Arrow IPC stream whose columns are the event fields
//! (`key`, `id`, `type`, `time`, `data` as JSON text) and, optionally, the stream's declared typed
//! fields as columns of their own types (written into `data` as members). The same rules as
//! NDJSON apply to every row: the first bad row fails the whole batch, naming it.

use crate::decode::{DecodeLimits, MAX_KEY_BYTES, MAX_TYPE_BYTES, parse_rfc3339};
use crate::{Error, Result};
use arrow::array::{Array, ArrayRef, AsArray, Int64Array, RecordBatch, StringArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Float64Type, Int64Type, TimeUnit, TimestampMillisecondType};
use arrow::ipc::reader::StreamReader;
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use strata_proto::fields::validate_fields;
use strata_proto::{Event, FieldDef, FieldType};

/// The media type of an Arrow IPC stream.
pub const ARROW_STREAM: &str = "application/vnd.apache.arrow.stream";

/// Where a stream-level problem is reported.
const STREAM: &str = "the Arrow IPC stream";

fn bad(location: impl Into<String>, reason: impl Into<String>) -> Error {
    Error::BadEvent {
        location: location.into(),
        reason: reason.into(),
    }
}

/// How the `time` column is given.
enum Time {
    Millis(Int64Array),
    Text(StringArray),
}

/// One batch's columns, cast to the types rows are read from.
struct Columns {
    data: StringArray,
    key: Option<StringArray>,
    id: Option<StringArray>,
    event_type: Option<StringArray>,
    time: Option<Time>,
    /// Declared fields given as columns: name, type, values.
    typed: Vec<(String, FieldType, ArrayRef)>,
}

fn is_text(t: &DataType) -> bool {
    matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
}

fn text_column(batch: &RecordBatch, name: &str) -> Result<Option<StringArray>> {
    let Some(column) = batch.column_by_name(name) else {
        return Ok(None);
    };
    if !is_text(column.data_type()) {
        return Err(bad(
            STREAM,
            format!(
                "column `{name}` must be text (Utf8), got {}",
                column.data_type()
            ),
        ));
    }
    let cast = cast(column, &DataType::Utf8).map_err(|e| bad(STREAM, e.to_string()))?;
    Ok(Some(cast.as_string::<i32>().clone()))
}

fn time_column(batch: &RecordBatch) -> Result<Option<Time>> {
    let Some(column) = batch.column_by_name("time") else {
        return Ok(None);
    };
    let time = match column.data_type() {
        DataType::Timestamp(_, _) => {
            let millis = DataType::Timestamp(TimeUnit::Millisecond, None);
            let cast = cast(column, &millis).map_err(|e| bad(STREAM, e.to_string()))?;
            let values = cast.as_primitive::<TimestampMillisecondType>();
            Time::Millis(Int64Array::new(
                values.values().clone(),
                values.nulls().cloned(),
            ))
        }
        DataType::Int64 => Time::Millis(column.as_primitive::<Int64Type>().clone()),
        t if is_text(t) => match text_column(batch, "time")? {
            Some(text) => Time::Text(text),
            None => return Ok(None),
        },
        other => {
            return Err(bad(
                STREAM,
                format!(
                    "column `time` must be a timestamp, Int64 epoch milliseconds or RFC 3339 text, got {other}"
                ),
            ));
        }
    };
    Ok(Some(time))
}

/// Casts a declared field's column to the type its values are read as, refusing types that
/// would lose meaning (text for a number, a float for an integer).
fn typed_column(name: &str, field: FieldType, column: &ArrayRef) -> Result<ArrayRef> {
    let t = column.data_type();
    let target = match field {
        FieldType::String if is_text(t) => DataType::Utf8,
        FieldType::Long if t.is_integer() => DataType::Int64,
        FieldType::Double if t.is_numeric() => DataType::Float64,
        FieldType::Boolean if *t == DataType::Boolean => DataType::Boolean,
        FieldType::Timestamp if matches!(t, DataType::Timestamp(_, _)) => {
            DataType::Timestamp(TimeUnit::Millisecond, None)
        }
        FieldType::Timestamp if *t == DataType::Int64 => DataType::Int64,
        FieldType::Timestamp if is_text(t) => DataType::Utf8,
        _ => {
            return Err(bad(
                STREAM,
                format!(
                    "column `{name}` is declared as {}, but its Arrow type is {t}",
                    field.name()
                ),
            ));
        }
    };
    cast(column, &target).map_err(|e| bad(STREAM, format!("column `{name}`: {e}")))
}

impl Columns {
    fn of(batch: &RecordBatch, fields: &[FieldDef]) -> Result<Self> {
        let mut typed = Vec::new();
        for (column, array) in batch.schema().fields().iter().zip(batch.columns()) {
            let name = column.name();
            if ["data", "key", "id", "type", "time"].contains(&name.as_str()) {
                continue;
            }
            let Some(def) = fields.iter().find(|f| f.name == *name) else {
                let declared: Vec<&str> = fields.iter().map(|f| f.name.as_str()).collect();
                return Err(bad(
                    STREAM,
                    format!(
                        "column `{name}` is neither an event field (key, id, type, time, data) nor a declared field of the stream ({})",
                        if declared.is_empty() {
                            "it declares none".to_owned()
                        } else {
                            declared.join(", ")
                        }
                    ),
                ));
            };
            typed.push((
                name.clone(),
                def.field_type,
                typed_column(name, def.field_type, array)?,
            ));
        }
        let data = text_column(batch, "data")?.ok_or_else(|| {
            bad(
                STREAM,
                "missing column `data` (JSON text, required; `{}` when the declared fields carry everything)",
            )
        })?;
        Ok(Self {
            data,
            key: text_column(batch, "key")?,
            id: text_column(batch, "id")?,
            event_type: text_column(batch, "type")?,
            time: time_column(batch)?,
            typed,
        })
    }

    fn event(
        &self,
        row: usize,
        arrival_ms: i64,
        limits: &DecodeLimits,
        fields: &[FieldDef],
    ) -> std::result::Result<Event, String> {
        let text = |c: &Option<StringArray>, name: &str, max: usize| {
            let Some(c) = c else { return Ok(None) };
            if c.is_null(row) {
                return Ok(None);
            }
            let v = c.value(row);
            if v.len() > max {
                return Err(format!(
                    "`{name}` is {} bytes, over the limit of {max}",
                    v.len()
                ));
            }
            Ok(Some(v.to_owned()))
        };
        let key = text(&self.key, "key", MAX_KEY_BYTES)?;
        let id = text(&self.id, "id", MAX_KEY_BYTES)?;
        let event_type = text(&self.event_type, "type", MAX_TYPE_BYTES)?;
        let time_ms = match &self.time {
            Some(Time::Millis(t)) if t.is_valid(row) => t.value(row),
            Some(Time::Text(t)) if t.is_valid(row) => parse_rfc3339(t.value(row))?,
            _ => arrival_ms,
        };
        let raw = if self.data.is_null(row) {
            "null"
        } else {
            self.data.value(row)
        };
        let data = if self.typed.is_empty() {
            let parsed: &RawValue =
                serde_json::from_str(raw).map_err(|e| format!("`data` is not JSON: {e}"))?;
            crate::decode::one_line_json(parsed.get())?
        } else {
            self.with_typed(row, raw)?
        };
        if data.len() > limits.max_event_bytes {
            return Err(format!(
                "event is {} bytes, over the limit of {}",
                data.len(),
                limits.max_event_bytes
            ));
        }
        validate_fields(&data, fields)?;
        Ok(Event {
            time_ms,
            key,
            id,
            event_type,
            data,
            condition: None,
        })
    }

    /// The bytes of a row's text columns (what its NDJSON line would roughly hold).
    fn row_bytes(&self, row: usize) -> usize {
        let len = |c: &Option<StringArray>| {
            c.as_ref()
                .filter(|c| c.is_valid(row))
                .map_or(0, |c| c.value(row).len())
        };
        let data = if self.data.is_valid(row) {
            self.data.value(row).len()
        } else {
            0
        };
        data + len(&self.key) + len(&self.id) + len(&self.event_type)
    }

    /// `data` with the declared fields' columns written in as members.
    fn with_typed(&self, row: usize, raw: &str) -> std::result::Result<String, String> {
        let mut object: Map<String, Value> = match serde_json::from_str(raw) {
            Ok(Value::Object(o)) => o,
            Ok(_) => {
                return Err(
                    "`data` must be a JSON object when declared fields come as columns".to_owned(),
                );
            }
            Err(e) => return Err(format!("`data` is not JSON: {e}")),
        };
        for (name, field, values) in &self.typed {
            if values.is_null(row) {
                continue;
            }
            let value = match (field, values.data_type()) {
                (FieldType::String, _) | (FieldType::Timestamp, DataType::Utf8) => {
                    Value::from(values.as_string::<i32>().value(row))
                }
                (FieldType::Long, _) | (FieldType::Timestamp, DataType::Int64) => {
                    Value::from(values.as_primitive::<Int64Type>().value(row))
                }
                (FieldType::Timestamp, _) => {
                    Value::from(values.as_primitive::<TimestampMillisecondType>().value(row))
                }
                (FieldType::Double, _) => {
                    let v = values.as_primitive::<Float64Type>().value(row);
                    serde_json::Number::from_f64(v)
                        .map(Value::Number)
                        .ok_or_else(|| format!("field `{name}` is {v}, which JSON cannot hold"))?
                }
                (FieldType::Boolean, _) => Value::from(values.as_boolean().value(row)),
            };
            if object.insert(name.clone(), value).is_some() {
                return Err(format!(
                    "field `{name}` is given both as a column and inside `data`"
                ));
            }
        }
        Ok(Value::Object(object).to_string())
    }
}

/// Refuses compressed record batches: their buffers say how large they decompress to, so a body
/// within the size limit could make the reader allocate gigabytes. Walks the stream's framing
/// (`0xFFFFFFFF`, metadata length, metadata, body) without decoding any buffer.
fn refuse_compression(body: &[u8]) -> Result<()> {
    let word = |at: usize| -> Option<u32> {
        body.get(at..at + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
    };
    let mut at = 0usize;
    while let Some(mut len) = word(at) {
        at += 4;
        if len == u32::MAX {
            match word(at) {
                Some(l) => len = l,
                None => break,
            }
            at += 4;
        }
        if len == 0 {
            break;
        }
        // Anything malformed is left to the reader, which names it.
        let Some(meta) = body.get(at..at.saturating_add(len as usize)) else {
            break;
        };
        let Ok(message) = arrow::ipc::root_as_message(meta) else {
            break;
        };
        let compressed = message
            .header_as_record_batch()
            .is_some_and(|b| b.compression().is_some())
            || message
                .header_as_dictionary_batch()
                .and_then(|d| d.data())
                .is_some_and(|b| b.compression().is_some());
        if compressed {
            return Err(bad(
                STREAM,
                "compressed record batches (LZ4/ZSTD) are not accepted; send them uncompressed",
            ));
        }
        at = at
            .saturating_add(len as usize)
            .saturating_add(usize::try_from(message.bodyLength()).unwrap_or(usize::MAX));
    }
    Ok(())
}

/// Decodes an Arrow IPC stream (see the module documentation) into events. Rows without a `time`
/// get `arrival_ms`.
///
/// # Errors
/// [`Error::BadEvent`] for a stream that is not Arrow IPC, a missing `data` column, a column of the
/// wrong type or unknown name, or a bad row (named `row N`, 1-based over the whole stream);
/// [`Error::TooManyEvents`], [`Error::EventTooLarge`] and [`Error::EmptyBatch`] as for NDJSON.
pub fn decode_arrow(
    body: &[u8],
    arrival_ms: i64,
    limits: &DecodeLimits,
    fields: &[FieldDef],
) -> Result<Vec<Event>> {
    refuse_compression(body)?;
    let reader = StreamReader::try_new(body, None)
        .map_err(|e| bad(STREAM, format!("cannot be read: {e}")))?;
    let mut events = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| bad(STREAM, format!("cannot be read: {e}")))?;
        if events.len() + batch.num_rows() > limits.max_events {
            return Err(Error::TooManyEvents {
                count: events.len() + batch.num_rows(),
                max: limits.max_events,
            });
        }
        let columns = Columns::of(&batch, fields)?;
        for row in 0..batch.num_rows() {
            let n = events.len() + 1;
            let size = columns.row_bytes(row);
            if size > limits.max_event_bytes {
                return Err(Error::EventTooLarge {
                    location: format!("row {n}"),
                    size,
                    max: limits.max_event_bytes,
                });
            }
            let event = columns
                .event(row, arrival_ms, limits, fields)
                .map_err(|reason| bad(format!("row {n}"), reason))?;
            events.push(event);
        }
    }
    if events.is_empty() {
        return Err(Error::EmptyBatch);
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Float32Array, StringArray, TimestampSecondArray};
    use arrow::datatypes::{Field, Schema};
    use arrow::ipc::writer::StreamWriter;
    use std::sync::Arc;

    fn ipc(columns: Vec<(&str, ArrayRef)>) -> Vec<u8> {
        let batch = RecordBatch::try_from_iter(columns).unwrap();
        let mut out = Vec::new();
        let mut w = StreamWriter::try_new(&mut out, &batch.schema()).unwrap();
        w.write(&batch).unwrap();
        w.finish().unwrap();
        drop(w);
        out
    }

    fn strings(v: &[Option<&str>]) -> ArrayRef {
        Arc::new(StringArray::from(v.to_vec()))
    }

    fn declared(name: &str, field_type: FieldType) -> FieldDef {
        FieldDef {
            name: name.into(),
            field_type,
            since: vec![],
        }
    }

    #[test]
    fn rows_become_events() {
        let body = ipc(vec![
            ("key", strings(&[Some("k1"), None])),
            ("id", strings(&[Some("a"), Some("b")])),
            ("type", strings(&[Some("order"), None])),
            (
                "time",
                Arc::new(TimestampSecondArray::from(vec![Some(1), None])) as ArrayRef,
            ),
            ("data", strings(&[Some("{\"x\": 1}"), Some("[1,\n2]")])),
        ]);
        let events = decode_arrow(&body, 42, &DecodeLimits::default(), &[]).unwrap();
        assert_eq!(
            events[0],
            Event {
                time_ms: 1000,
                key: Some("k1".into()),
                id: Some("a".into()),
                event_type: Some("order".into()),
                data: "{\"x\": 1}".into(),
                condition: None,
            }
        );
        assert_eq!(events[1].time_ms, 42);
        assert_eq!(events[1].key, None);
        assert_eq!(events[1].data, "[1,2]");
    }

    #[test]
    fn declared_fields_come_as_typed_columns() {
        let fields = [
            declared("amount", FieldType::Double),
            declared("country", FieldType::String),
        ];
        let body = ipc(vec![
            ("data", strings(&[Some("{\"n\":1}"), Some("{}")])),
            (
                "amount",
                Arc::new(Float32Array::from(vec![Some(1.5), None])) as ArrayRef,
            ),
            ("country", strings(&[Some("NL"), Some("DE")])),
        ]);
        let events = decode_arrow(&body, 0, &DecodeLimits::default(), &fields).unwrap();
        let first: Value = serde_json::from_str(&events[0].data).unwrap();
        assert_eq!(
            first,
            serde_json::json!({"n": 1, "amount": 1.5, "country": "NL"})
        );
        assert_eq!(events[1].data, "{\"country\":\"DE\"}");
        // The wrong Arrow type for a declared field, and an undeclared column.
        let wrong = ipc(vec![
            ("data", strings(&[Some("{}")])),
            ("amount", strings(&[Some("1.5")])),
        ]);
        let e = decode_arrow(&wrong, 0, &DecodeLimits::default(), &fields).unwrap_err();
        assert!(e.to_string().contains("declared as double"), "{e}");
        let unknown = ipc(vec![
            ("data", strings(&[Some("{}")])),
            ("colour", strings(&[Some("red")])),
        ]);
        let e = decode_arrow(&unknown, 0, &DecodeLimits::default(), &fields).unwrap_err();
        assert!(e.to_string().contains("column `colour` is neither"), "{e}");
    }

    #[test]
    fn bad_input_is_refused_whole() {
        let limits = DecodeLimits::default();
        let e = decode_arrow(b"not arrow", 0, &limits, &[]).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("the Arrow IPC stream: cannot be read"),
            "{e}"
        );
        let no_data = ipc(vec![("key", strings(&[Some("k")]))]);
        let e = decode_arrow(&no_data, 0, &limits, &[]).unwrap_err();
        assert!(e.to_string().contains("missing column `data`"), "{e}");
        let not_json = ipc(vec![("data", strings(&[Some("{}"), Some("{oops")]))]);
        let e = decode_arrow(&not_json, 0, &limits, &[]).unwrap_err();
        assert!(
            e.to_string().starts_with("row 2: `data` is not JSON"),
            "{e}"
        );
        let numeric_key = ipc(vec![
            ("data", strings(&[Some("{}")])),
            ("key", Arc::new(Int64Array::from(vec![1])) as ArrayRef),
        ]);
        let e = decode_arrow(&numeric_key, 0, &limits, &[]).unwrap_err();
        assert!(e.to_string().contains("column `key` must be text"), "{e}");
        let bad_time = ipc(vec![
            ("data", strings(&[Some("{}")])),
            ("time", strings(&[Some("yesterday")])),
        ]);
        let e = decode_arrow(&bad_time, 0, &limits, &[]).unwrap_err();
        assert!(e.to_string().contains("not RFC 3339"), "{e}");
        let few = DecodeLimits {
            max_events: 1,
            ..limits
        };
        let two = ipc(vec![("data", strings(&[Some("1"), Some("2")]))]);
        assert!(matches!(
            decode_arrow(&two, 0, &few, &[]),
            Err(Error::TooManyEvents { .. })
        ));
        let small = DecodeLimits {
            max_event_bytes: 10,
            ..limits
        };
        let big = ipc(vec![("data", strings(&[Some("\"0123456789abcdef\"")]))]);
        assert!(matches!(
            decode_arrow(&big, 0, &small, &[]),
            Err(Error::EventTooLarge { .. })
        ));
        // A compressed stream is refused before anything is decompressed.
        let batch = RecordBatch::try_from_iter(vec![("data", strings(&[Some("{}")]))]).unwrap();
        let options = arrow::ipc::writer::IpcWriteOptions::default()
            .try_with_compression(Some(arrow::ipc::CompressionType::LZ4_FRAME))
            .unwrap();
        let mut lz4 = Vec::new();
        let mut w = StreamWriter::try_new_with_options(&mut lz4, &batch.schema(), options).unwrap();
        w.write(&batch).unwrap();
        w.finish().unwrap();
        drop(w);
        let e = decode_arrow(&lz4, 0, &limits, &[]).unwrap_err();
        assert!(e.to_string().contains("compressed record batches"), "{e}");
        // Two uncompressed batches in one stream are read past the first.
        let mut two = Vec::new();
        let mut w = StreamWriter::try_new(&mut two, &batch.schema()).unwrap();
        w.write(&batch).unwrap();
        w.write(&batch).unwrap();
        w.finish().unwrap();
        drop(w);
        assert_eq!(decode_arrow(&two, 0, &limits, &[]).unwrap().len(), 2);
        // A schema and no rows.
        let schema = Arc::new(Schema::new(vec![Field::new("data", DataType::Utf8, true)]));
        let mut empty = Vec::new();
        StreamWriter::try_new(&mut empty, &schema)
            .unwrap()
            .finish()
            .unwrap();
        assert!(matches!(
            decode_arrow(&empty, 0, &limits, &[]),
            Err(Error::EmptyBatch)
        ));
    }
}
