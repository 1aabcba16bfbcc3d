//! Columnar blocks: Arrow record batches of events stored as LZ4-compressed IPC in fjall values,
//! with a small metadata record per block so that scans skip blocks without opening them.

use crate::schema::{self, block_schema};
use crate::{Error, Result};
use arrow::array::{
    ArrayRef, Int32Array, Int64Array, RecordBatch, RecordBatchOptions, StringBuilder,
    TimestampMillisecondArray,
};
use arrow::datatypes::SchemaRef;
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::{IpcWriteOptions, StreamWriter};
use std::sync::Arc;
use strata_proto::Event;

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
const BLOCK_VERSION: u8 = 1;

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

/// Builds the columns `projection` (table column indexes) of `rows` as one record batch of `schema`.
pub(crate) fn rows_to_batch(
    rows: &[(u64, Event)],
    partition: u32,
    projection: &[usize],
    schema: SchemaRef,
) -> Result<RecordBatch> {
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
                _ => strings(rows, |e| Some(e.data.as_str())),
            }
        })
        .collect();
    let options = RecordBatchOptions::new().with_row_count(Some(rows.len()));
    Ok(RecordBatch::try_new_with_options(
        schema, columns, &options,
    )?)
}

fn strings(rows: &[(u64, Event)], get: impl Fn(&Event) -> Option<&str>) -> ArrayRef {
    let bytes = rows.iter().map(|(_, e)| get(e).map_or(0, str::len)).sum();
    let mut b = StringBuilder::with_capacity(rows.len(), bytes);
    for (_, e) in rows {
        b.append_option(get(e));
    }
    Arc::new(b.finish())
}

/// The block columns of `rows`, as stored.
const BLOCK_COLUMNS: [usize; 6] = [
    schema::OFFSET,
    schema::TIME,
    schema::KEY,
    schema::ID,
    schema::TYPE,
    schema::DATA,
];

/// Encodes `rows` as a block value and its metadata.
pub(crate) fn encode_block(rows: &[(u64, Event)]) -> Result<(Vec<u8>, BlockMeta)> {
    let batch = rows_to_batch(rows, 0, &BLOCK_COLUMNS, block_schema())?;
    let options = IpcWriteOptions::default()
        .try_with_compression(Some(arrow::ipc::CompressionType::LZ4_FRAME))?;
    let mut out = vec![BLOCK_VERSION];
    {
        let mut writer = StreamWriter::try_new_with_options(&mut out, &batch.schema(), options)?;
        writer.write(&batch)?;
        writer.finish()?;
    }
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
    Ok((out, meta))
}

/// Decodes the table columns `projection` of a block value belonging to `partition`.
pub(crate) fn decode_block(
    bytes: &[u8],
    partition: u32,
    projection: &[usize],
    schema: SchemaRef,
    location: impl Fn() -> String,
) -> Result<RecordBatch> {
    let Some((&BLOCK_VERSION, ipc)) = bytes.split_first() else {
        return Err(Error::Corrupt {
            location: location(),
            reason: "unknown block version".into(),
        });
    };
    // Block column i holds table column i + 1; read each needed one once, in stored order.
    let mut wanted: Vec<usize> = projection
        .iter()
        .filter(|&&c| c != schema::PARTITION)
        .map(|&c| c - 1)
        .collect();
    wanted.sort_unstable();
    wanted.dedup();
    let mut reader = StreamReader::try_new(std::io::Cursor::new(ipc), Some(wanted.clone()))?;
    let batch = reader.next().transpose()?.ok_or_else(|| Error::Corrupt {
        location: location(),
        reason: "empty block".into(),
    })?;
    let rows = batch.num_rows();
    let columns: Vec<ArrayRef> = projection
        .iter()
        .map(|&c| match c {
            schema::PARTITION => {
                Arc::new(Int32Array::from_value(partition as i32, rows)) as ArrayRef
            }
            c => {
                let i = wanted.binary_search(&(c - 1)).unwrap_or_default();
                batch.column(i).clone()
            }
        })
        .collect();
    let options = RecordBatchOptions::new().with_row_count(Some(rows));
    Ok(RecordBatch::try_new_with_options(
        schema, columns, &options,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, AsArray};

    fn rows(n: u64) -> Vec<(u64, Event)> {
        (0..n)
            .map(|i| {
                (
                    100 + i,
                    Event {
                        time_ms: 1000 - i as i64,
                        key: (i % 2 == 0).then(|| format!("k{i}")),
                        id: Some(format!("id{i}")),
                        event_type: None,
                        data: format!("{{\"i\":{i}}}"),
                    },
                )
            })
            .collect()
    }

    #[test]
    fn block_roundtrip_with_projection() {
        let rows = rows(10);
        let (bytes, meta) = encode_block(&rows).unwrap();
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
        let projection = [schema::DATA, schema::PARTITION, schema::OFFSET];
        let schema = Arc::new(schema::table_schema().project(&projection).unwrap());
        let batch = decode_block(&bytes, 3, &projection, schema, String::new).unwrap();
        assert_eq!(batch.num_rows(), 10);
        assert_eq!(batch.column(0).as_string::<i32>().value(4), "{\"i\":4}");
        assert_eq!(
            batch
                .column(1)
                .as_primitive::<arrow::datatypes::Int32Type>()
                .value(0),
            3
        );
        assert_eq!(
            batch
                .column(2)
                .as_primitive::<arrow::datatypes::Int64Type>()
                .value(9),
            109
        );
        let all: Vec<usize> = (0..7).collect();
        let full = decode_block(&bytes, 0, &all, schema::table_schema(), String::new).unwrap();
        assert!(full.column(schema::KEY).is_null(1));
        assert!(
            decode_block(
                &bytes[..bytes.len() / 2],
                0,
                &all,
                schema::table_schema(),
                String::new
            )
            .is_err()
        );
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
