//! Columnar blocks: each column of a block of events is one fjall value (an LZ4-compressed Arrow
//! IPC stream of one array), so a query reads only the columns it needs. A small metadata record
//! per block lets scans skip blocks by offset and time without opening them.

use crate::schema::{self, field_type};
use crate::{Error, Result};
use arrow::array::{
    ArrayRef, BooleanBuilder, Float64Builder, Int32Array, Int64Array, Int64Builder, RecordBatch,
    RecordBatchOptions, StringBuilder, TimestampMillisecondArray, TimestampMillisecondBuilder,
    new_null_array,
};
use arrow::datatypes::{Field, Schema, SchemaRef};
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::{IpcWriteOptions, StreamWriter};
use std::sync::Arc;
use strata_proto::fields::extract_fields;
use strata_proto::{Event, FieldDef, FieldType, FieldValue};

/// Where a block sits and what it holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BlockMeta {
    pub first: u64,
    pub last: u64,
    pub min_time: i64,
    pub max_time: i64,
    pub rows: u32,
}

const META_VERSION: u8 = 1;
const COLUMN_VERSION: u8 = 1;

impl BlockMeta {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(37);
        out.push(META_VERSION);
        out.extend_from_slice(&self.first.to_le_bytes());
        out.extend_from_slice(&self.last.to_le_bytes());
        out.extend_from_slice(&self.min_time.to_le_bytes());
        out.extend_from_slice(&self.max_time.to_le_bytes());
        out.extend_from_slice(&self.rows.to_le_bytes());
        out
    }

    pub fn decode(bytes: &[u8], location: impl Fn() -> String) -> Result<Self> {
        let corrupt = |reason: &str| Error::Corrupt {
            location: location(),
            reason: reason.into(),
        };
        let Some((&META_VERSION, rest)) = bytes.split_first() else {
            return Err(corrupt("unknown block metadata version"));
        };
        if rest.len() != 36 {
            return Err(corrupt("block metadata has the wrong length"));
        }
        let u64_at = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&rest[i..i + 8]);
            u64::from_le_bytes(b)
        };
        let mut rows = [0u8; 4];
        rows.copy_from_slice(&rest[32..36]);
        Ok(Self {
            first: u64_at(0),
            last: u64_at(8),
            min_time: u64_at(16) as i64,
            max_time: u64_at(24) as i64,
            rows: u32::from_le_bytes(rows),
        })
    }

    /// Whether any row may fall in `offsets` (half-open) and the inclusive `time` range.
    pub fn overlaps(&self, offsets: &std::ops::Range<u64>, time: Option<(i64, i64)>) -> bool {
        let offsets_ok = self.first < offsets.end && self.last >= offsets.start;
        let time_ok = time.is_none_or(|(lo, hi)| self.max_time >= lo && self.min_time <= hi);
        offsets_ok && time_ok
    }
}

/// Key of column `column` (a table column index, ≥ 1) of the block starting at `first`.
pub(crate) fn column_key(first: u64, column: usize) -> [u8; 10] {
    let mut key = [0u8; 10];
    key[..8].copy_from_slice(&first.to_be_bytes());
    key[8..].copy_from_slice(&(column as u16).to_be_bytes());
    key
}

/// Builds the columns `projection` (table column indexes of `fields`' stream schema) of `rows`
/// as one record batch of `schema`. Declared fields are read from `data`, and only for events at
/// or after the offset each field applies from.
pub(crate) fn rows_to_batch(
    rows: &[(u64, Event)],
    partition: u32,
    projection: &[usize],
    fields: &[FieldDef],
    schema: SchemaRef,
) -> Result<RecordBatch> {
    let wanted: Vec<usize> = projection
        .iter()
        .filter(|&&c| c >= schema::FIELDS)
        .map(|&c| c - schema::FIELDS)
        .collect();
    let values = field_values(rows, partition, fields, &wanted);
    let columns: Vec<ArrayRef> = projection
        .iter()
        .map(|&c| -> ArrayRef {
            match c {
                schema::PARTITION => Arc::new(Int32Array::from_value(partition as i32, rows.len())),
                schema::OFFSET => {
                    Arc::new(rows.iter().map(|(o, _)| *o as i64).collect::<Int64Array>())
                }
                schema::TIME => Arc::new(
                    TimestampMillisecondArray::from(
                        rows.iter().map(|(_, e)| e.time_ms).collect::<Vec<_>>(),
                    )
                    .with_timezone("UTC"),
                ),
                schema::KEY => strings(rows, |e| e.key.as_deref()),
                schema::ID => strings(rows, |e| e.id.as_deref()),
                schema::TYPE => strings(rows, |e| e.event_type.as_deref()),
                schema::DATA => strings(rows, |e| Some(e.data.as_str())),
                c => {
                    let i = c - schema::FIELDS;
                    let slot = wanted.iter().position(|w| *w == i).unwrap_or(0);
                    match fields.get(i) {
                        Some(f) => typed_array(f.field_type, values.iter().map(|row| &row[slot])),
                        None => new_null_array(&arrow::datatypes::DataType::Null, rows.len()),
                    }
                }
            }
        })
        .collect();
    let options = RecordBatchOptions::new().with_row_count(Some(rows.len()));
    Ok(RecordBatch::try_new_with_options(
        schema, columns, &options,
    )?)
}

/// For each row, the values of fields `wanted` (indexes into `fields`).
fn field_values(
    rows: &[(u64, Event)],
    partition: u32,
    fields: &[FieldDef],
    wanted: &[usize],
) -> Vec<Vec<FieldValue>> {
    if wanted.is_empty() {
        return Vec::new();
    }
    let defs: Vec<FieldDef> = wanted
        .iter()
        .filter_map(|&i| fields.get(i).cloned())
        .collect();
    rows.iter()
        .map(|(offset, event)| {
            let mut values = extract_fields(&event.data, &defs);
            for (v, def) in values.iter_mut().zip(&defs) {
                if !def.applies(partition, *offset) {
                    *v = FieldValue::Null;
                }
            }
            values
        })
        .collect()
}

fn typed_array<'a>(t: FieldType, values: impl Iterator<Item = &'a FieldValue>) -> ArrayRef {
    match t {
        FieldType::String => {
            let mut b = StringBuilder::new();
            for v in values {
                b.append_option(if let FieldValue::String(s) = v {
                    Some(s.as_str())
                } else {
                    None
                });
            }
            Arc::new(b.finish())
        }
        FieldType::Long => {
            let mut b = Int64Builder::new();
            for v in values {
                b.append_option(if let FieldValue::Long(i) = v {
                    Some(*i)
                } else {
                    None
                });
            }
            Arc::new(b.finish())
        }
        FieldType::Double => {
            let mut b = Float64Builder::new();
            for v in values {
                b.append_option(if let FieldValue::Double(f) = v {
                    Some(*f)
                } else {
                    None
                });
            }
            Arc::new(b.finish())
        }
        FieldType::Boolean => {
            let mut b = BooleanBuilder::new();
            for v in values {
                b.append_option(if let FieldValue::Boolean(x) = v {
                    Some(*x)
                } else {
                    None
                });
            }
            Arc::new(b.finish())
        }
        FieldType::Timestamp => {
            let mut b = TimestampMillisecondBuilder::new().with_timezone("UTC");
            for v in values {
                b.append_option(if let FieldValue::Timestamp(ms) = v {
                    Some(*ms)
                } else {
                    None
                });
            }
            Arc::new(b.finish())
        }
    }
}

fn strings(rows: &[(u64, Event)], get: impl Fn(&Event) -> Option<&str>) -> ArrayRef {
    let bytes = rows.iter().map(|(_, e)| get(e).map_or(0, str::len)).sum();
    let mut b = StringBuilder::with_capacity(rows.len(), bytes);
    for (_, e) in rows {
        b.append_option(get(e));
    }
    Arc::new(b.finish())
}

/// Encodes one array as a stored column value.
fn encode_column(array: &ArrayRef) -> Result<Vec<u8>> {
    let schema = Schema::new(vec![Field::new("c", array.data_type().clone(), true)]);
    let batch = RecordBatch::try_new(Arc::new(schema.clone()), vec![array.clone()])?;
    let options = IpcWriteOptions::default()
        .try_with_compression(Some(arrow::ipc::CompressionType::LZ4_FRAME))?;
    let mut out = vec![COLUMN_VERSION];
    let mut writer = StreamWriter::try_new_with_options(&mut out, &schema, options)?;
    writer.write(&batch)?;
    writer.finish()?;
    drop(writer);
    Ok(out)
}

/// Decodes a stored column value.
pub(crate) fn decode_column(bytes: &[u8], location: impl Fn() -> String) -> Result<ArrayRef> {
    let corrupt = |reason: &str| Error::Corrupt {
        location: location(),
        reason: reason.into(),
    };
    let Some((&COLUMN_VERSION, ipc)) = bytes.split_first() else {
        return Err(corrupt("unknown column version"));
    };
    let mut reader = StreamReader::try_new(std::io::Cursor::new(ipc), None)?;
    let batch = reader
        .next()
        .transpose()?
        .ok_or_else(|| corrupt("empty column"))?;
    if batch.num_columns() != 1 {
        return Err(corrupt("a column value must hold one array"));
    }
    Ok(batch.column(0).clone())
}

/// Encodes `rows` (consecutive events of one partition) as a block: one value per stored column
/// (every table column but `partition`, declared fields included), and its metadata.
pub(crate) fn encode_block(
    rows: &[(u64, Event)],
    partition: u32,
    fields: &[FieldDef],
) -> Result<(Vec<(usize, Vec<u8>)>, BlockMeta)> {
    let columns: Vec<usize> = (schema::OFFSET..schema::FIELDS + fields.len()).collect();
    let mut all_fields: Vec<Field> = vec![];
    let base = schema::table_schema();
    for &c in &columns {
        all_fields.push(match c {
            c if c < schema::FIELDS => base.field(c).clone(),
            c => Field::new(
                &fields[c - schema::FIELDS].name,
                field_type(fields[c - schema::FIELDS].field_type),
                true,
            ),
        });
    }
    let batch = rows_to_batch(
        rows,
        partition,
        &columns,
        fields,
        Arc::new(Schema::new(all_fields)),
    )?;
    let values = columns
        .iter()
        .zip(batch.columns())
        .map(|(&c, array)| Ok((c, encode_column(array)?)))
        .collect::<Result<Vec<_>>>()?;
    let (min_time, max_time) = rows.iter().fold((i64::MAX, i64::MIN), |(lo, hi), (_, e)| {
        (lo.min(e.time_ms), hi.max(e.time_ms))
    });
    let meta = BlockMeta {
        first: rows.first().map_or(0, |r| r.0),
        last: rows.last().map_or(0, |r| r.0),
        min_time,
        max_time,
        rows: rows.len() as u32,
    };
    Ok((values, meta))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{Float64Type, Int64Type};

    #[test]
    fn columns_roundtrip_with_fields_and_since() {
        let rows: Vec<(u64, Event)> = (0..10u64)
            .map(|i| {
                (
                    100 + i,
                    Event {
                        time_ms: 1000 - i as i64,
                        key: (i % 2 == 0).then(|| format!("k{i}")),
                        id: Some(format!("id{i}")),
                        event_type: None,
                        data: format!("{{\"i\":{i},\"amount\":{}.5}}", i),
                    },
                )
            })
            .collect();
        let fields = vec![
            FieldDef {
                name: "amount".into(),
                field_type: FieldType::Double,
                since: vec![0, 105],
            },
            FieldDef {
                name: "i".into(),
                field_type: FieldType::Long,
                since: vec![],
            },
        ];
        let (values, meta) = encode_block(&rows, 1, &fields).unwrap();
        assert_eq!(
            meta,
            BlockMeta {
                first: 100,
                last: 109,
                min_time: 991,
                max_time: 1000,
                rows: 10
            }
        );
        assert_eq!(
            BlockMeta::decode(&meta.encode(), String::new).unwrap(),
            meta
        );
        assert_eq!(
            values.iter().map(|(c, _)| *c).collect::<Vec<_>>(),
            vec![1, 2, 3, 4, 5, 6, 7, 8]
        );
        let amount = decode_column(&values[6].1, String::new).unwrap();
        let amount = amount.as_primitive::<Float64Type>();
        assert!(
            amount.is_null(4),
            "partition 1 has the field from offset 105 on"
        );
        assert_eq!(amount.value(5), 5.5);
        let i = decode_column(&values[7].1, String::new).unwrap();
        assert_eq!(i.as_primitive::<Int64Type>().value(9), 9);
        let keys = decode_column(&values[2].1, String::new).unwrap();
        assert!(keys.is_null(1));
        assert!(decode_column(&values[0].1[..10], String::new).is_err());
        assert_eq!(column_key(1, 7)[8..], [0, 7]);
    }

    #[test]
    fn overlap() {
        let m = BlockMeta {
            first: 10,
            last: 19,
            min_time: 100,
            max_time: 200,
            rows: 10,
        };
        assert!(m.overlaps(&(0..11), None));
        assert!(!m.overlaps(&(0..10), None));
        assert!(!m.overlaps(&(20..30), None));
        assert!(m.overlaps(&(19..30), Some((200, 300))));
        assert!(!m.overlaps(&(0..u64::MAX), Some((201, 300))));
    }
}
