//! The stored encoding of view state (version 2, binary): a group key is its key values as
//! cells; a group's state is the version byte, its key cells, then each accumulator (a tag, then
//! its payload). A cell is a tag (0 NULL, 1 boolean, 2 signed, 3 unsigned, 4 text) and the value
//! (8 bytes little-endian for numbers, floats as their bits; u32 length and UTF-8 for text),
//! read back as the column's type (see `scalar_to_json`/`json_to_scalar`).

use super::check::refuse;
use crate::{Error, Result};
use arrow::datatypes::DataType;
use datafusion::common::ScalarValue;
use serde_json::Value as J;

pub(super) const VERSION: u8 = 2;

pub(super) fn corrupt() -> Error {
    Error::Corrupt("a stored group of a view does not decode".into())
}

pub(super) fn take<'a>(input: &mut &'a [u8], n: usize) -> Result<&'a [u8]> {
    if input.len() < n {
        return Err(corrupt());
    }
    let (head, rest) = input.split_at(n);
    *input = rest;
    Ok(head)
}

pub(super) fn take_i64(input: &mut &[u8]) -> Result<i64> {
    Ok(i64::from_le_bytes(
        take(input, 8)?.try_into().map_err(|_| corrupt())?,
    ))
}

pub(super) fn put_scalar(out: &mut Vec<u8>, v: &ScalarValue) -> Result<()> {
    let int = |out: &mut Vec<u8>, i: i64| {
        out.push(2);
        out.extend_from_slice(&i.to_le_bytes());
    };
    // The common types directly; the rest through their JSON form.
    match v {
        _ if v.is_null() => out.push(0),
        ScalarValue::Utf8(Some(s))
        | ScalarValue::LargeUtf8(Some(s))
        | ScalarValue::Utf8View(Some(s)) => put_str(out, s),
        ScalarValue::Int64(Some(i))
        | ScalarValue::TimestampSecond(Some(i), _)
        | ScalarValue::TimestampMillisecond(Some(i), _)
        | ScalarValue::TimestampMicrosecond(Some(i), _)
        | ScalarValue::TimestampNanosecond(Some(i), _) => int(out, *i),
        ScalarValue::Int32(Some(i)) => int(out, i64::from(*i)),
        ScalarValue::Float64(Some(x)) => {
            out.push(3);
            out.extend_from_slice(&x.to_bits().to_le_bytes());
        }
        _ => put_json(out, v)?,
    }
    Ok(())
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.push(4);
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// The cell of row `i` of `a`: the same bytes as [`put_scalar`] of its scalar, without
/// making the scalar for the common types.
pub(super) fn put_cell_at(out: &mut Vec<u8>, a: &arrow::array::ArrayRef, i: usize) -> Result<()> {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{Float64Type, Int32Type, Int64Type};
    if a.data_type() != &DataType::Null && a.is_null(i) {
        out.push(0);
        return Ok(());
    }
    match a.data_type() {
        DataType::Utf8 => put_str(out, a.as_string::<i32>().value(i)),
        DataType::LargeUtf8 => put_str(out, a.as_string::<i64>().value(i)),
        DataType::Utf8View => put_str(out, a.as_string_view().value(i)),
        DataType::Int64 => {
            out.push(2);
            out.extend_from_slice(&a.as_primitive::<Int64Type>().value(i).to_le_bytes());
        }
        DataType::Int32 => {
            out.push(2);
            out.extend_from_slice(&i64::from(a.as_primitive::<Int32Type>().value(i)).to_le_bytes());
        }
        DataType::Float64 => {
            out.push(3);
            out.extend_from_slice(
                &a.as_primitive::<Float64Type>()
                    .value(i)
                    .to_bits()
                    .to_le_bytes(),
            );
        }
        _ => put_scalar(out, &ScalarValue::try_from_array(a, i)?)?,
    }
    Ok(())
}

fn put_json(out: &mut Vec<u8>, v: &ScalarValue) -> Result<()> {
    match scalar_to_json(v)? {
        J::Null => out.push(0),
        J::Bool(b) => out.extend_from_slice(&[1, u8::from(b)]),
        J::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => {
                out.push(2);
                out.extend_from_slice(&i.to_le_bytes());
            }
            (None, Some(u)) => {
                out.push(3);
                out.extend_from_slice(&u.to_le_bytes());
            }
            _ => return Err(corrupt()),
        },
        J::String(s) => {
            out.push(4);
            out.extend_from_slice(&(s.len() as u32).to_le_bytes());
            out.extend_from_slice(s.as_bytes());
        }
        _ => return Err(corrupt()),
    }
    Ok(())
}

pub(super) fn put_tagged(out: &mut Vec<u8>, tag: u8, v: &ScalarValue) -> Result<()> {
    out.push(tag);
    put_scalar(out, v)
}

pub(super) fn get_scalar(input: &mut &[u8], t: &DataType) -> Result<ScalarValue> {
    let cell = match take(input, 1)?[0] {
        0 => J::Null,
        1 => J::Bool(take(input, 1)?[0] != 0),
        2 => J::from(take_i64(input)?),
        3 => J::from(take_i64(input)? as u64),
        4 => {
            let len = u32::from_le_bytes(take(input, 4)?.try_into().map_err(|_| corrupt())?);
            let text = std::str::from_utf8(take(input, len as usize)?).map_err(|_| corrupt())?;
            J::String(text.to_owned())
        }
        _ => return Err(corrupt()),
    };
    json_to_scalar(&cell, t)
}

/// A value as JSON: numbers exact (floats as their bits), text as strings, NULL as null.
pub(super) fn scalar_to_json(v: &ScalarValue) -> Result<serde_json::Value> {
    use serde_json::Value as J;
    if v.is_null() {
        return Ok(J::Null);
    }
    Ok(match v {
        ScalarValue::Boolean(Some(b)) => J::Bool(*b),
        ScalarValue::Int8(Some(x)) => (*x).into(),
        ScalarValue::Int16(Some(x)) => (*x).into(),
        ScalarValue::Int32(Some(x)) => (*x).into(),
        ScalarValue::Int64(Some(x)) => (*x).into(),
        ScalarValue::UInt8(Some(x)) => (*x).into(),
        ScalarValue::UInt16(Some(x)) => (*x).into(),
        ScalarValue::UInt32(Some(x)) => (*x).into(),
        ScalarValue::UInt64(Some(x)) => (*x).into(),
        ScalarValue::Float32(Some(x)) => f64::from(*x).to_bits().into(),
        ScalarValue::Float64(Some(x)) => x.to_bits().into(),
        ScalarValue::Utf8(Some(s))
        | ScalarValue::LargeUtf8(Some(s))
        | ScalarValue::Utf8View(Some(s)) => J::String(s.clone()),
        ScalarValue::Date32(Some(x)) => (*x).into(),
        ScalarValue::TimestampSecond(Some(x), _)
        | ScalarValue::TimestampMillisecond(Some(x), _)
        | ScalarValue::TimestampMicrosecond(Some(x), _)
        | ScalarValue::TimestampNanosecond(Some(x), _) => (*x).into(),
        other => {
            return Err(refuse(format!(
                "a value of type {} cannot be kept in a view",
                other.data_type()
            )));
        }
    })
}

/// Reads a value of type `t` back from [`scalar_to_json`].
pub(super) fn json_to_scalar(v: &serde_json::Value, t: &DataType) -> Result<ScalarValue> {
    use arrow::datatypes::TimeUnit;
    if v.is_null() {
        return Ok(ScalarValue::try_from(t)?);
    }
    let bad = || Error::Invalid(format!("corrupt view state: {v} is not a {t}"));
    let int = || v.as_i64().ok_or_else(bad);
    let uint = || v.as_u64().ok_or_else(bad);
    let narrow = |x: i64| -> Result<ScalarValue> { Ok(ScalarValue::Int64(Some(x)).cast_to(t)?) };
    Ok(match t {
        DataType::Boolean => ScalarValue::Boolean(Some(v.as_bool().ok_or_else(bad)?)),
        DataType::Int8 | DataType::Int16 | DataType::Int32 => narrow(int()?)?,
        DataType::Int64 => ScalarValue::Int64(Some(int()?)),
        DataType::UInt8 | DataType::UInt16 | DataType::UInt32 => {
            ScalarValue::UInt64(Some(uint()?)).cast_to(t)?
        }
        DataType::UInt64 => ScalarValue::UInt64(Some(uint()?)),
        DataType::Float32 => ScalarValue::Float32(Some(f64::from_bits(uint()?) as f32)),
        DataType::Float64 => ScalarValue::Float64(Some(f64::from_bits(uint()?))),
        DataType::Utf8 => ScalarValue::Utf8(Some(v.as_str().ok_or_else(bad)?.to_owned())),
        DataType::LargeUtf8 => ScalarValue::LargeUtf8(Some(v.as_str().ok_or_else(bad)?.to_owned())),
        DataType::Utf8View => ScalarValue::Utf8View(Some(v.as_str().ok_or_else(bad)?.to_owned())),
        DataType::Date32 => ScalarValue::Date32(Some(i32::try_from(int()?).map_err(|_| bad())?)),
        DataType::Timestamp(unit, tz) => {
            let (x, tz) = (Some(int()?), tz.clone());
            match unit {
                TimeUnit::Second => ScalarValue::TimestampSecond(x, tz),
                TimeUnit::Millisecond => ScalarValue::TimestampMillisecond(x, tz),
                TimeUnit::Microsecond => ScalarValue::TimestampMicrosecond(x, tz),
                TimeUnit::Nanosecond => ScalarValue::TimestampNanosecond(x, tz),
            }
        }
        _ => return Err(bad()),
    })
}
