//! Accumulators: how each supported aggregate folds a batch into a group and merges with stored
//! state.

use super::codec;
use crate::{Error, Result};
use arrow::array::{Array, ArrayRef};
use arrow::datatypes::DataType;
use datafusion::common::ScalarValue;
use datafusion::physical_expr::PhysicalExpr;
use std::collections::HashSet;
use std::sync::Arc;

/// How one aggregate folds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    Count,
    Sum,
    Min,
    Max,
    Avg,
    CountDistinct,
}

/// One aggregate of the definition: its kind, its argument (evaluated on the input) and its
/// output type.
pub(super) struct Aggregate {
    pub(super) kind: Kind,
    pub(super) arg: Arc<dyn PhysicalExpr>,
    /// The type of `arg`'s values (what count(DISTINCT) keeps).
    pub(super) arg_type: DataType,
    pub(super) output: DataType,
}

/// A group's accumulator for one aggregate.
#[derive(Clone, Debug)]
pub(super) enum Acc {
    Count(i64),
    /// `sum` with a Float64 output (NULL until a value arrives).
    SumF64(Option<f64>),
    /// `sum` with an Int64 output (wrapping, as DataFusion's sum).
    SumI64(Option<i64>),
    /// `sum` with a UInt64 output.
    SumU64(Option<u64>),
    Sum(ScalarValue),
    Min(ScalarValue),
    Max(ScalarValue),
    Avg {
        sum: f64,
        count: i64,
    },
    Distinct(HashSet<ScalarValue>),
}

/// One aggregate's argument over a batch, in the form its accumulator adds fastest.
pub(super) enum Input {
    /// Only validity matters (`count`).
    Valid(ArrayRef),
    F64(arrow::array::Float64Array),
    I64(arrow::array::Int64Array),
    U64(arrow::array::UInt64Array),
    /// Row by row as scalars.
    Any(ArrayRef),
}

impl Input {
    pub(super) fn of(a: &Aggregate, values: ArrayRef) -> Result<Self> {
        use arrow::array::AsArray;
        use arrow::datatypes::{Float64Type, Int64Type, UInt64Type};
        let cast = |t: &DataType| arrow::compute::cast(&values, t);
        Ok(match (a.kind, &a.output) {
            (Kind::Count, _) => Input::Valid(values),
            (Kind::Avg, _) => Input::F64(
                cast(&DataType::Float64)?
                    .as_primitive::<Float64Type>()
                    .clone(),
            ),
            (Kind::Sum, DataType::Float64) => Input::F64(
                cast(&DataType::Float64)?
                    .as_primitive::<Float64Type>()
                    .clone(),
            ),
            (Kind::Sum, DataType::Int64) => {
                Input::I64(cast(&DataType::Int64)?.as_primitive::<Int64Type>().clone())
            }
            (Kind::Sum, DataType::UInt64) => Input::U64(
                cast(&DataType::UInt64)?
                    .as_primitive::<UInt64Type>()
                    .clone(),
            ),
            _ => Input::Any(values),
        })
    }
}

impl Acc {
    pub(super) fn new(a: &Aggregate) -> Result<Self> {
        let null = || ScalarValue::try_from(&a.output).map_err(Error::from);
        Ok(match a.kind {
            Kind::Count => Acc::Count(0),
            Kind::Sum => match a.output {
                DataType::Float64 => Acc::SumF64(None),
                DataType::Int64 => Acc::SumI64(None),
                DataType::UInt64 => Acc::SumU64(None),
                _ => Acc::Sum(null()?),
            },
            Kind::Min => Acc::Min(null()?),
            Kind::Max => Acc::Max(null()?),
            Kind::Avg => Acc::Avg { sum: 0.0, count: 0 },
            Kind::CountDistinct => Acc::Distinct(HashSet::new()),
        })
    }

    /// Folds one input value in (nulls are skipped, as SQL aggregates do).
    pub(super) fn add(&mut self, value: ScalarValue, output: &DataType) -> Result<()> {
        if value.is_null() {
            return Ok(());
        }
        match self {
            Acc::Count(n) => *n += 1,
            Acc::SumF64(_) | Acc::SumI64(_) | Acc::SumU64(_) => {
                let other = Acc::sum_of(value.cast_to(output)?);
                self.merge(&other)?;
            }
            Acc::Sum(s) => {
                let v = value.cast_to(output)?;
                *s = if s.is_null() { v } else { s.add(&v)? };
            }
            Acc::Min(m) => {
                let v = value.cast_to(output)?;
                if m.is_null() || v.partial_cmp(m) == Some(std::cmp::Ordering::Less) {
                    *m = v;
                }
            }
            Acc::Max(m) => {
                let v = value.cast_to(output)?;
                if m.is_null() || v.partial_cmp(m) == Some(std::cmp::Ordering::Greater) {
                    *m = v;
                }
            }
            Acc::Avg { sum, count } => {
                if let ScalarValue::Float64(Some(v)) = value.cast_to(&DataType::Float64)? {
                    *sum += v;
                    *count += 1;
                }
            }
            Acc::Distinct(set) => {
                set.insert(value);
            }
        }
        Ok(())
    }

    /// Merges another accumulator of the same aggregate into this one (a batch's delta into the
    /// stored state).
    pub(super) fn merge(&mut self, other: &Acc) -> Result<()> {
        match (self, other) {
            (Acc::Count(a), Acc::Count(b)) => *a += b,
            (Acc::SumF64(a), Acc::SumF64(b)) => {
                if let Some(b) = b {
                    *a = Some(a.unwrap_or(0.0) + b);
                }
            }
            (Acc::SumI64(a), Acc::SumI64(b)) => {
                if let Some(b) = b {
                    *a = Some(a.unwrap_or(0).wrapping_add(*b));
                }
            }
            (Acc::SumU64(a), Acc::SumU64(b)) => {
                if let Some(b) = b {
                    *a = Some(a.unwrap_or(0).wrapping_add(*b));
                }
            }
            (Acc::Sum(a), Acc::Sum(b)) => {
                if !b.is_null() {
                    *a = if a.is_null() { b.clone() } else { a.add(b)? };
                }
            }
            (Acc::Min(a), Acc::Min(b)) => {
                if !b.is_null()
                    && (a.is_null() || b.partial_cmp(a) == Some(std::cmp::Ordering::Less))
                {
                    *a = b.clone();
                }
            }
            (Acc::Max(a), Acc::Max(b)) => {
                if !b.is_null()
                    && (a.is_null() || b.partial_cmp(a) == Some(std::cmp::Ordering::Greater))
                {
                    *a = b.clone();
                }
            }
            (Acc::Avg { sum, count }, Acc::Avg { sum: s, count: c }) => {
                *sum += s;
                *count += c;
            }
            (Acc::Distinct(a), Acc::Distinct(b)) => a.extend(b.iter().cloned()),
            _ => return Err(Error::Invalid("mismatched view accumulators".into())),
        }
        Ok(())
    }

    /// A sum accumulator holding `v` (typed when its type has a fast path).
    pub(super) fn sum_of(v: ScalarValue) -> Acc {
        match v {
            ScalarValue::Float64(x) => Acc::SumF64(x),
            ScalarValue::Int64(x) => Acc::SumI64(x),
            ScalarValue::UInt64(x) => Acc::SumU64(x),
            other => Acc::Sum(other),
        }
    }

    /// Folds row `i` of a batch's argument in.
    pub(super) fn add_at(&mut self, input: &Input, i: usize, output: &DataType) -> Result<()> {
        match (self, input) {
            (Acc::Count(n), Input::Valid(a)) => {
                if a.is_valid(i) {
                    *n += 1;
                }
            }
            (Acc::SumF64(s), Input::F64(a)) => {
                if a.is_valid(i) {
                    *s = Some(s.unwrap_or(0.0) + a.value(i));
                }
            }
            (Acc::SumI64(s), Input::I64(a)) => {
                if a.is_valid(i) {
                    *s = Some(s.unwrap_or(0).wrapping_add(a.value(i)));
                }
            }
            (Acc::SumU64(s), Input::U64(a)) => {
                if a.is_valid(i) {
                    *s = Some(s.unwrap_or(0).wrapping_add(a.value(i)));
                }
            }
            (Acc::Avg { sum, count }, Input::F64(a)) => {
                if a.is_valid(i) {
                    *sum += a.value(i);
                    *count += 1;
                }
            }
            (acc, Input::Any(a)) => acc.add(ScalarValue::try_from_array(a, i)?, output)?,
            _ => return Err(Error::Invalid("mismatched view accumulator input".into())),
        }
        Ok(())
    }

    /// Appends the accumulator's stored form (see [`codec`]).
    pub(super) fn encode(&self, out: &mut Vec<u8>) -> Result<()> {
        match self {
            Acc::Count(n) => {
                out.push(0);
                out.extend_from_slice(&n.to_le_bytes());
            }
            Acc::SumF64(x) => codec::put_tagged(out, 1, &ScalarValue::Float64(*x))?,
            Acc::SumI64(x) => codec::put_tagged(out, 1, &ScalarValue::Int64(*x))?,
            Acc::SumU64(x) => codec::put_tagged(out, 1, &ScalarValue::UInt64(*x))?,
            Acc::Sum(v) => codec::put_tagged(out, 1, v)?,
            Acc::Min(v) => codec::put_tagged(out, 2, v)?,
            Acc::Max(v) => codec::put_tagged(out, 3, v)?,
            Acc::Avg { sum, count } => {
                out.push(4);
                out.extend_from_slice(&sum.to_bits().to_le_bytes());
                out.extend_from_slice(&count.to_le_bytes());
            }
            Acc::Distinct(set) => {
                out.push(5);
                let mut members = set
                    .iter()
                    .map(|v| {
                        let mut cell = Vec::new();
                        codec::put_scalar(&mut cell, v)?;
                        Ok(cell)
                    })
                    .collect::<Result<Vec<_>>>()?;
                members.sort_unstable();
                out.extend_from_slice(&(members.len() as u32).to_le_bytes());
                for m in members {
                    out.extend_from_slice(&m);
                }
            }
        }
        Ok(())
    }

    /// Reads an accumulator of aggregate `a` back from [`Acc::encode`].
    pub(super) fn decode(input: &mut &[u8], a: &Aggregate) -> Result<Self> {
        let tag = codec::take(input, 1)?[0];
        Ok(match (tag, a.kind) {
            (0, Kind::Count) => Acc::Count(codec::take_i64(input)?),
            (1, Kind::Sum) => Acc::sum_of(codec::get_scalar(input, &a.output)?),
            (2, Kind::Min) => Acc::Min(codec::get_scalar(input, &a.output)?),
            (3, Kind::Max) => Acc::Max(codec::get_scalar(input, &a.output)?),
            (4, Kind::Avg) => {
                let sum = f64::from_bits(codec::take_i64(input)? as u64);
                Acc::Avg {
                    sum,
                    count: codec::take_i64(input)?,
                }
            }
            (5, Kind::CountDistinct) => {
                let n = u32::from_le_bytes(
                    codec::take(input, 4)?
                        .try_into()
                        .map_err(|_| codec::corrupt())?,
                );
                let mut set = HashSet::with_capacity(n as usize);
                for _ in 0..n {
                    set.insert(codec::get_scalar(input, &a.arg_type)?);
                }
                Acc::Distinct(set)
            }
            _ => return Err(codec::corrupt()),
        })
    }

    /// The aggregate's value now.
    pub(super) fn value(&self, output: &DataType) -> Result<ScalarValue> {
        Ok(match self {
            Acc::Count(n) => ScalarValue::Int64(Some(*n)).cast_to(output)?,
            Acc::SumF64(x) => ScalarValue::Float64(*x).cast_to(output)?,
            Acc::SumI64(x) => ScalarValue::Int64(*x).cast_to(output)?,
            Acc::SumU64(x) => ScalarValue::UInt64(*x).cast_to(output)?,
            Acc::Sum(v) | Acc::Min(v) | Acc::Max(v) => v.clone(),
            Acc::Avg { count: 0, .. } => ScalarValue::try_from(output)?,
            Acc::Avg { sum, count } => {
                ScalarValue::Float64(Some(sum / *count as f64)).cast_to(output)?
            }
            Acc::Distinct(set) => ScalarValue::Int64(Some(set.len() as i64)).cast_to(output)?,
        })
    }
}
