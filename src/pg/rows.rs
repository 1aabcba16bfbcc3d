//! Text-format rows of the column types analysts read most (integers, floats, booleans, text and
//! timestamps), written straight from the Arrow arrays into one buffer per batch.
//!
//! arrow-pg encodes value by value through pgwire's `ToSqlText`, which parses the session's
//! `DateStyle`, the column's time zone and a chrono format string again for every timestamp and
//! allocates for every float. The bytes written here are exactly arrow-pg's (a property test
//! compares them); any column type, format or setting not handled here sends the whole batch
//! through arrow-pg instead.

use arrow::array::{
    Array, ArrayRef, BooleanArray, Float32Array, Float64Array, Int8Array, Int16Array, Int32Array,
    Int64Array, LargeStringArray, PrimitiveArray, RecordBatch, StringArray, StringViewArray,
};
use arrow::datatypes::{
    ArrowPrimitiveType, DataType, Field, TimeUnit, TimestampMicrosecondType,
    TimestampMillisecondType, TimestampNanosecondType, TimestampSecondType,
};
use bytes::{BufMut, BytesMut};
use pgwire::api::Type;
use pgwire::api::results::{FieldFormat, FieldInfo};
use pgwire::error::PgWireResult;
use pgwire::messages::data::DataRow;
use pgwire::types::format::FormatOptions;
use pgwire::types::format::date_style::DateStyle;
use pgwire::types::format::float_digits::ExtraFloatDigits;
use std::fmt::Write;
use std::sync::Arc;

/// The rows of `batch` as `fields` describe them.
///
/// # Errors
/// An error of arrow-pg's encoders, for a batch this module leaves to them.
pub fn encode(fields: &Arc<Vec<FieldInfo>>, batch: RecordBatch) -> PgWireResult<Vec<DataRow>> {
    match text_columns(fields, &batch) {
        Some(columns) => Ok(text_rows(&columns, batch.num_rows())),
        None => arrow_pg::datatypes::encode_recordbatch(fields.clone(), batch).collect(),
    }
}

/// ISO `DateStyle`'s date and time, as pgwire formats it.
const ISO: &str = "%Y-%m-%d %H:%M:%S%.6f";

/// One column this module writes, with what its values need.
enum Column<'a> {
    Bool(&'a BooleanArray),
    Int8(&'a Int8Array),
    Int16(&'a Int16Array),
    Int32(&'a Int32Array),
    Int64(&'a Int64Array),
    Float32(&'a Float32Array, i8),
    Float64(&'a Float64Array, i8),
    Utf8(&'a StringArray),
    LargeUtf8(&'a LargeStringArray),
    Utf8View(&'a StringViewArray),
    /// A timestamp array of any unit: its nulls, its values, how many make a second, and whether
    /// the type has a zone (UTC, written `+00`).
    Timestamp {
        array: &'a dyn Array,
        values: &'a [i64],
        per_second: i64,
        zoned: bool,
    },
}

/// The columns of `batch`, if every one is written here: text format, a type handled here, and
/// the settings (`DateStyle`) this module writes.
fn text_columns<'a>(fields: &[FieldInfo], batch: &'a RecordBatch) -> Option<Vec<Column<'a>>> {
    let schema = batch.schema_ref();
    if fields.len() != batch.num_columns() {
        return None;
    }
    fields
        .iter()
        .zip(schema.fields().iter().zip(batch.columns()))
        .map(|(pg, (arrow, array))| column(pg, arrow, array))
        .collect()
}

fn column<'a>(pg: &FieldInfo, arrow: &Field, array: &'a ArrayRef) -> Option<Column<'a>> {
    // arrow-pg reads type hints (`"char"`, oid, vectors) from field metadata.
    if pg.format() != FieldFormat::Text || !arrow.metadata().is_empty() {
        return None;
    }
    let any = array.as_any();
    let options: &FormatOptions = pg.format_options();
    Some(match arrow.data_type() {
        DataType::Boolean => Column::Bool(any.downcast_ref()?),
        DataType::Int8 => Column::Int8(any.downcast_ref()?),
        DataType::Int16 => Column::Int16(any.downcast_ref()?),
        DataType::Int32 => Column::Int32(any.downcast_ref()?),
        DataType::Int64 => Column::Int64(any.downcast_ref()?),
        DataType::Float32 => Column::Float32(any.downcast_ref()?, options.extra_float_digits),
        DataType::Float64 => Column::Float64(any.downcast_ref()?, options.extra_float_digits),
        // Text is sent as it is in a scalar type (quoted in an array type).
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
            if !matches!(
                *pg.datatype(),
                Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::JSON | Type::JSONB
            ) =>
        {
            return None;
        }
        DataType::Utf8 => Column::Utf8(any.downcast_ref()?),
        DataType::LargeUtf8 => Column::LargeUtf8(any.downcast_ref()?),
        DataType::Utf8View => Column::Utf8View(any.downcast_ref()?),
        DataType::Timestamp(unit, zone) => {
            let zoned = match zone.as_deref() {
                None => false,
                Some("UTC" | "+00:00") => true,
                Some(_) => return None,
            };
            let expected = if zoned {
                Type::TIMESTAMPTZ
            } else {
                Type::TIMESTAMP
            };
            if *pg.datatype() != expected
                || DateStyle::new(&options.date_style).full_format_str() != ISO
            {
                return None;
            }
            let (values, per_second) = match unit {
                TimeUnit::Second => (values::<TimestampSecondType>(any)?, 1),
                TimeUnit::Millisecond => (values::<TimestampMillisecondType>(any)?, 1_000),
                TimeUnit::Microsecond => (values::<TimestampMicrosecondType>(any)?, 1_000_000),
                TimeUnit::Nanosecond => (values::<TimestampNanosecondType>(any)?, 1_000_000_000),
            };
            Column::Timestamp {
                array: array.as_ref(),
                values,
                per_second,
                zoned,
            }
        }
        _ => return None,
    })
}

fn values<T: ArrowPrimitiveType<Native = i64>>(any: &dyn std::any::Any) -> Option<&[i64]> {
    any.downcast_ref::<PrimitiveArray<T>>()
        .map(|a| a.values().as_ref())
}

/// Encodes `rows` rows of `columns`: one buffer for the batch, split into one `DataRow` each.
fn text_rows(columns: &[Column<'_>], rows: usize) -> Vec<DataRow> {
    let count = i16::try_from(columns.len()).unwrap_or(i16::MAX);
    let width: usize = columns.iter().map(|c| 4 + c.width(rows)).sum();
    let mut buf = BytesMut::with_capacity(width.saturating_mul(rows).min(64 << 20));
    let mut out = Vec::with_capacity(rows);
    for i in 0..rows {
        for column in columns {
            column.write(i, &mut buf);
        }
        out.push(DataRow::new(buf.split(), count));
    }
    out
}

/// The bytes of a string array's values, from its offsets.
fn text_bytes<O: Copy + TryInto<usize>>(offsets: &[O]) -> usize {
    let at = |o: Option<&O>| o.and_then(|o| (*o).try_into().ok()).unwrap_or(0);
    at(offsets.last()).saturating_sub(at(offsets.first()))
}

impl Column<'_> {
    /// About how many bytes a value of this column takes, for the batch's first allocation.
    fn width(&self, rows: usize) -> usize {
        let rows = rows.max(1);
        match self {
            Column::Bool(_) => 1,
            Column::Int8(_) | Column::Int16(_) => 6,
            Column::Int32(_) => 11,
            Column::Int64(_) => 20,
            Column::Float32(..) | Column::Float64(..) => 24,
            Column::Utf8(a) => text_bytes(a.value_offsets()) / rows,
            Column::LargeUtf8(a) => text_bytes(a.value_offsets()) / rows,
            Column::Utf8View(_) => 16,
            Column::Timestamp { .. } => 29,
        }
    }

    fn is_null(&self, i: usize) -> bool {
        match self {
            Column::Bool(a) => a.is_null(i),
            Column::Int8(a) => a.is_null(i),
            Column::Int16(a) => a.is_null(i),
            Column::Int32(a) => a.is_null(i),
            Column::Int64(a) => a.is_null(i),
            Column::Float32(a, _) => a.is_null(i),
            Column::Float64(a, _) => a.is_null(i),
            Column::Utf8(a) => a.is_null(i),
            Column::LargeUtf8(a) => a.is_null(i),
            Column::Utf8View(a) => a.is_null(i),
            Column::Timestamp { array, .. } => array.is_null(i),
        }
    }

    /// Writes row `i`'s value with its length, or the NULL marker.
    fn write(&self, i: usize, buf: &mut BytesMut) {
        if self.is_null(i) {
            buf.put_i32(-1);
            return;
        }
        let text = match self {
            Column::Utf8(a) => Some(a.value(i)),
            Column::LargeUtf8(a) => Some(a.value(i)),
            Column::Utf8View(a) => Some(a.value(i)),
            _ => None,
        };
        let start = buf.len();
        buf.put_i32(-1);
        let written = match text {
            Some(text) => {
                buf.put_slice(text.as_bytes());
                true
            }
            None => self.write_value(i, buf),
        };
        match i32::try_from(buf.len() - start - 4) {
            Ok(length) if written => {
                buf[start..start + 4].copy_from_slice(&length.to_be_bytes());
            }
            _ => {
                buf.truncate(start);
                buf.put_i32(-1);
            }
        }
    }

    /// Writes row `i`'s value (not text); false for a value sent as NULL: a timestamp out of
    /// chrono's range, as arrow-pg sends it.
    fn write_value(&self, i: usize, buf: &mut BytesMut) -> bool {
        let mut digits = itoa::Buffer::new();
        match self {
            Column::Bool(a) => buf.put_u8(if a.value(i) { b't' } else { b'f' }),
            Column::Int8(a) => buf.put_slice(digits.format(a.value(i)).as_bytes()),
            Column::Int16(a) => buf.put_slice(digits.format(a.value(i)).as_bytes()),
            Column::Int32(a) => buf.put_slice(digits.format(a.value(i)).as_bytes()),
            Column::Int64(a) => buf.put_slice(digits.format(a.value(i)).as_bytes()),
            Column::Float32(a, extra) => {
                let v = a.value(i);
                put_float(buf, v, *extra, v.is_finite() && v != 0.0, |d| {
                    d.format_f32(v)
                });
            }
            Column::Float64(a, extra) => {
                let v = a.value(i);
                put_float(buf, v, *extra, v.is_finite() && v != 0.0, |d| {
                    d.format_f64(v)
                });
            }
            Column::Timestamp {
                values,
                per_second,
                zoned,
                ..
            } => {
                let Some(&v) = values.get(i) else {
                    return false;
                };
                if !timestamp(
                    buf,
                    v.div_euclid(*per_second),
                    v.rem_euclid(*per_second),
                    *per_second,
                ) {
                    return false;
                }
                if *zoned {
                    buf.put_slice(b"+00");
                }
            }
            Column::Utf8(_) | Column::LargeUtf8(_) | Column::Utf8View(_) => {}
        }
        true
    }
}

/// Writes `seconds` since the epoch and a `fraction` of `per_second` as ISO date and time with
/// microseconds (truncated), as chrono's `%Y-%m-%d %H:%M:%S%.6f` does; false if chrono cannot hold
/// the time.
fn timestamp(buf: &mut BytesMut, seconds: i64, fraction: i64, per_second: i64) -> bool {
    let micros = if per_second > 1_000_000 {
        fraction / (per_second / 1_000_000)
    } else {
        fraction * (1_000_000 / per_second)
    };
    let days = seconds.div_euclid(86_400);
    let of_day = seconds.rem_euclid(86_400);
    let (year, month, day) = strata_proto::civil_from_days(days);
    if !(0..=9999).contains(&year) {
        // Years that need a sign or a fifth digit, and the edges of chrono's range.
        let nanos = u32::try_from(micros * 1_000).unwrap_or(0);
        return match chrono::DateTime::from_timestamp(seconds, nanos) {
            Some(t) => write!(buf, "{}", t.naive_utc().format(ISO)).is_ok(),
            None => false,
        };
    }
    let mut text = *b"0000-00-00 00:00:00.000000";
    strata_proto::put_digits(&mut text[0..4], year);
    strata_proto::put_digits(&mut text[5..7], month);
    strata_proto::put_digits(&mut text[8..10], day);
    strata_proto::put_digits(&mut text[11..13], of_day / 3_600);
    strata_proto::put_digits(&mut text[14..16], of_day / 60 % 60);
    strata_proto::put_digits(&mut text[17..19], of_day % 60);
    strata_proto::put_digits(&mut text[20..26], micros);
    buf.put_slice(&text);
    true
}

/// Writes float `v` as pgwire formats it for `extra` (`extra_float_digits`). pgwire writes the
/// shortest exact form (ryu) for `extra` ≥ 1, the setting's default, through a string of its own
/// per value: a finite, non-zero `v` is written here directly; the rest (`pgwire`) as pgwire does.
fn put_float<F: ryu::Float, S: AsRef<str>>(
    buf: &mut BytesMut,
    v: F,
    extra: i8,
    finite_nonzero: bool,
    pgwire: impl FnOnce(ExtraFloatDigits) -> S,
) {
    if extra >= 1 && finite_nonzero {
        buf.put_slice(ryu::Buffer::new().format_finite(v).as_bytes());
    } else {
        buf.put_slice(pgwire(ExtraFloatDigits(extra)).as_ref().as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{
        TimestampMicrosecondArray, TimestampMillisecondArray, TimestampNanosecondArray,
        TimestampSecondArray,
    };
    use arrow::datatypes::Schema;
    use pgwire::api::portal::Format;
    use proptest::collection::vec;
    use proptest::prelude::*;

    type Times = (Option<i64>, Option<i64>, Option<i64>, Option<i64>);
    type Row = (
        Option<bool>,
        Option<i8>,
        Option<i16>,
        Option<i32>,
        Option<i64>,
        Option<f32>,
        Option<f64>,
        Option<String>,
        Option<String>,
        Times,
    );

    fn instant() -> impl Strategy<Value = Option<i64>> {
        proptest::option::of(prop_oneof![
            any::<i64>(),
            (-1i64 << 45)..(1i64 << 45),
            (-1i64 << 35)..(1i64 << 35),
            -100_000i64..100_000,
        ])
    }

    fn row() -> impl Strategy<Value = Row> {
        (
            any::<Option<bool>>(),
            any::<Option<i8>>(),
            any::<Option<i16>>(),
            any::<Option<i32>>(),
            any::<Option<i64>>(),
            any::<Option<f32>>(),
            any::<Option<f64>>(),
            any::<Option<String>>(),
            any::<Option<String>>(),
            (instant(), instant(), instant(), instant()),
        )
    }

    fn batch(rows: &[Row], zone: Option<&str>) -> RecordBatch {
        let zone = zone.map(Arc::<str>::from);
        let column = |f: &dyn Fn(&Row) -> Option<i64>| rows.iter().map(f).collect::<Vec<_>>();
        let columns: Vec<ArrayRef> = vec![
            Arc::new(rows.iter().map(|r| r.0).collect::<BooleanArray>()),
            Arc::new(rows.iter().map(|r| r.1).collect::<Int8Array>()),
            Arc::new(rows.iter().map(|r| r.2).collect::<Int16Array>()),
            Arc::new(rows.iter().map(|r| r.3).collect::<Int32Array>()),
            Arc::new(rows.iter().map(|r| r.4).collect::<Int64Array>()),
            Arc::new(rows.iter().map(|r| r.5).collect::<Float32Array>()),
            Arc::new(rows.iter().map(|r| r.6).collect::<Float64Array>()),
            Arc::new(rows.iter().map(|r| r.7.clone()).collect::<StringArray>()),
            Arc::new(
                rows.iter()
                    .map(|r| r.8.clone())
                    .collect::<LargeStringArray>(),
            ),
            Arc::new(
                rows.iter()
                    .map(|r| r.8.clone())
                    .collect::<StringViewArray>(),
            ),
            Arc::new(
                TimestampSecondArray::from(column(&|r| r.9.0)).with_timezone_opt(zone.clone()),
            ),
            Arc::new(
                TimestampMillisecondArray::from(column(&|r| r.9.1)).with_timezone_opt(zone.clone()),
            ),
            Arc::new(
                TimestampMicrosecondArray::from(column(&|r| r.9.2)).with_timezone_opt(zone.clone()),
            ),
            Arc::new(TimestampNanosecondArray::from(column(&|r| r.9.3)).with_timezone_opt(zone)),
        ];
        let names = [
            "b", "i8", "i16", "i32", "i64", "f32", "f64", "key", "data", "view", "s", "ms", "us",
            "ns",
        ];
        let fields: Vec<Field> = names
            .iter()
            .zip(&columns)
            .map(|(n, c)| Field::new(*n, c.data_type().clone(), true))
            .collect();
        RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap()
    }

    fn pg_fields(batch: &RecordBatch, options: FormatOptions) -> Arc<Vec<FieldInfo>> {
        let fields = super::super::encode::fields(
            batch.schema_ref(),
            &Format::UnifiedText,
            Some(Arc::new(options)),
        );
        Arc::new(fields.unwrap())
    }

    fn arrow_pgs(fields: &Arc<Vec<FieldInfo>>, batch: &RecordBatch) -> Vec<DataRow> {
        arrow_pg::datatypes::encode_recordbatch(fields.clone(), batch.clone())
            .collect::<PgWireResult<Vec<_>>>()
            .unwrap()
    }

    proptest! {
        /// Every byte of every row is what arrow-pg writes, for each type, unit, zone, NULL,
        /// float digits setting and offset into the arrays.
        #[test]
        fn text_rows_are_the_bytes_arrow_pg_writes(
            rows in vec(row(), 0..24),
            zone in prop_oneof![Just(None), Just(Some("UTC")), Just(Some("+00:00"))],
            extra_float_digits in -15i8..=3,
            order in prop_oneof![Just("ISO, MDY"), Just("ISO, DMY"), Just("ISO")],
            skip in 0usize..4,
        ) {
            let whole = batch(&rows, zone);
            let skip = skip.min(whole.num_rows());
            let batch = whole.slice(skip, whole.num_rows() - skip);
            let mut options = FormatOptions::default();
            options.extra_float_digits = extra_float_digits;
            options.date_style = order.to_owned();
            let fields = pg_fields(&batch, options);
            let columns = text_columns(&fields, &batch);
            prop_assert!(columns.is_some(), "a handled batch went to arrow-pg");
            let ours = text_rows(&columns.unwrap(), batch.num_rows());
            prop_assert_eq!(ours, arrow_pgs(&fields, &batch));
        }
    }

    #[test]
    fn settings_and_types_not_written_here_go_to_arrow_pg() {
        let rows = vec![(
            Some(true),
            Some(1),
            Some(2),
            Some(3),
            Some(4),
            Some(0.5),
            Some(1.5),
            Some("k".to_owned()),
            Some("{}".to_owned()),
            (Some(1), Some(2), Some(3), Some(4)),
        )];
        let mut options = FormatOptions::default();
        options.date_style = "SQL, DMY".to_owned();
        let sql_style = batch(&rows, Some("UTC"));
        let fields = pg_fields(&sql_style, options);
        assert!(text_columns(&fields, &sql_style).is_none());
        assert_eq!(
            encode(&fields, sql_style.clone()).unwrap(),
            arrow_pgs(&fields, &sql_style)
        );
        let zoned = batch(&rows, Some("+01:00"));
        let fields = pg_fields(&zoned, FormatOptions::default());
        assert!(text_columns(&fields, &zoned).is_none());
        assert_eq!(
            encode(&fields, zoned.clone()).unwrap(),
            arrow_pgs(&fields, &zoned)
        );
    }

    #[test]
    fn a_stream_time_is_written_as_postgresql_writes_timestamptz() {
        let time = TimestampMillisecondArray::from(vec![1_796_378_400_123]).with_timezone("UTC");
        let schema = Schema::new(vec![Field::new("time", time.data_type().clone(), false)]);
        let batch = RecordBatch::try_new(Arc::new(schema), vec![Arc::new(time)]).unwrap();
        let fields = pg_fields(&batch, FormatOptions::default());
        let rows = encode(&fields, batch).unwrap();
        let text = b"2026-12-04 10:00:00.123000+00";
        let mut expected = BytesMut::new();
        expected.put_i32(text.len() as i32);
        expected.put_slice(text);
        assert_eq!(rows, vec![DataRow::new(expected, 1)]);
    }
}
