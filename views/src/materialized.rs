//! Materialized views: a definition is checked once against DataFusion's logical plan, and then
//! maintained incrementally from batches of new events — the same filter, group and aggregate
//! expressions, evaluated by DataFusion on each batch, fold into per-group accumulators that merge
//! with the stored ones ([`Maintainer`] is what the store calls in each commit).
//!
//! Supported: `SELECT <group exprs and aggregates, any scalar expression over them> FROM <stream>
//! [WHERE …] GROUP BY …` with `count(*)`, `count(x)`, `sum`, `min`, `max`, `avg`,
//! `count(DISTINCT x)` and `approx_distinct(x)` (kept exact). Everything else is refused with the
//! reason.

use crate::{Error, Result};
use arrow::array::{Array, ArrayRef, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::{DFSchema, ScalarValue};
use datafusion::logical_expr::expr::AggregateFunction;
use datafusion::logical_expr::{Expr, LogicalPlan};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::prelude::SessionContext;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

/// How one aggregate folds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Count,
    Sum,
    Min,
    Max,
    Avg,
    CountDistinct,
}

/// One aggregate of the definition: its kind, its argument (evaluated on the input) and its
/// output type.
struct Aggregate {
    kind: Kind,
    arg: Arc<dyn PhysicalExpr>,
    /// The type of `arg`'s values (what count(DISTINCT) keeps).
    arg_type: DataType,
    output: DataType,
}

/// A group's accumulator for one aggregate.
#[derive(Clone, Debug)]
enum Acc {
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
enum Input {
    /// Only validity matters (`count`).
    Valid(ArrayRef),
    F64(arrow::array::Float64Array),
    I64(arrow::array::Int64Array),
    U64(arrow::array::UInt64Array),
    /// Row by row as scalars.
    Any(ArrayRef),
}

impl Input {
    fn of(a: &Aggregate, values: ArrayRef) -> Result<Self> {
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
    fn new(a: &Aggregate) -> Result<Self> {
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
    fn add(&mut self, value: ScalarValue, output: &DataType) -> Result<()> {
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
    fn merge(&mut self, other: &Acc) -> Result<()> {
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
    fn sum_of(v: ScalarValue) -> Acc {
        match v {
            ScalarValue::Float64(x) => Acc::SumF64(x),
            ScalarValue::Int64(x) => Acc::SumI64(x),
            ScalarValue::UInt64(x) => Acc::SumU64(x),
            other => Acc::Sum(other),
        }
    }

    /// Folds row `i` of a batch's argument in.
    fn add_at(&mut self, input: &Input, i: usize, output: &DataType) -> Result<()> {
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
    fn encode(&self, out: &mut Vec<u8>) -> Result<()> {
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
    fn decode(input: &mut &[u8], a: &Aggregate) -> Result<Self> {
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
    fn value(&self, output: &DataType) -> Result<ScalarValue> {
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

/// What one batch adds to one group of a view (see [`ViewPlan::delta`]).
#[derive(Clone, Debug)]
pub struct GroupDelta(Vec<Acc>);

/// One group: its key values and accumulators.
#[derive(Clone, Debug)]
struct Group {
    keys: Vec<ScalarValue>,
    accs: Vec<Acc>,
}

/// A checked view definition, ready to fold batches of its stream's events.
pub struct ViewPlan {
    /// The stream the view reads.
    pub stream: String,
    input: SchemaRef,
    filter: Option<Arc<dyn PhysicalExpr>>,
    groups: Vec<Arc<dyn PhysicalExpr>>,
    aggregates: Vec<Aggregate>,
    /// Schema of the aggregate's output (group columns, then aggregates).
    aggregate_schema: SchemaRef,
    /// The definition's select list over the aggregate's output.
    projection: Vec<Arc<dyn PhysicalExpr>>,
    output: SchemaRef,
}

fn refuse(reason: impl Into<String>) -> Error {
    Error::Invalid(format!(
        "this view cannot be maintained incrementally: {}",
        reason.into()
    ))
}

/// The aggregate kind of `f`, or why it is refused.
fn kind_of(f: &AggregateFunction) -> Result<Kind> {
    let p = &f.params;
    if p.filter.is_some() {
        return Err(refuse("aggregate FILTER clauses are not supported"));
    }
    if !p.order_by.is_empty() {
        return Err(refuse("ordered aggregates are not supported"));
    }
    let name = f.func.name().to_ascii_lowercase();
    Ok(match (name.as_str(), p.distinct) {
        ("count", false) => Kind::Count,
        ("count", true) | ("approx_distinct", _) => Kind::CountDistinct,
        ("sum", false) => Kind::Sum,
        ("min", _) => Kind::Min,
        ("max", _) => Kind::Max,
        ("avg", false) | ("mean", false) => Kind::Avg,
        (other, true) => return Err(refuse(format!("{other}(DISTINCT …) is not supported"))),
        (other, false) => {
            return Err(refuse(format!(
                "{other}() is not supported (use count, sum, min, max, avg, count(DISTINCT …) or approx_distinct)"
            )));
        }
    })
}

/// Strips aliases.
fn unalias(e: &Expr) -> &Expr {
    match e {
        Expr::Alias(a) => unalias(&a.expr),
        other => other,
    }
}

impl ViewPlan {
    /// Checks `query` (the view's `SELECT`) in `ctx`, where its stream is a table, and prepares to
    /// maintain it; refuses what cannot be maintained incrementally, saying why.
    pub async fn new(ctx: &SessionContext, query: &str) -> Result<Self> {
        let plan = ctx.state().create_logical_plan(query).await?;
        // Projection → Aggregate → (Filter | Projection | SubqueryAlias)* → TableScan
        let (projection, aggregate) = match &plan {
            LogicalPlan::Projection(p) => (Some(p), p.input.as_ref()),
            other => (None, other),
        };
        let LogicalPlan::Aggregate(agg) = aggregate else {
            return Err(refuse(describe_unsupported(aggregate)));
        };
        let mut filters = Vec::new();
        let mut node = agg.input.as_ref();
        let scan = loop {
            match node {
                LogicalPlan::Filter(f) => {
                    filters.push(f.predicate.clone());
                    node = f.input.as_ref();
                }
                LogicalPlan::SubqueryAlias(a) => node = a.input.as_ref(),
                LogicalPlan::Projection(p)
                    if p.expr.iter().all(|e| matches!(unalias(e), Expr::Column(_))) =>
                {
                    node = p.input.as_ref()
                }
                LogicalPlan::TableScan(scan) => break scan,
                other => return Err(refuse(describe_unsupported(other))),
            }
        };
        let input = Arc::new(scan.source.schema().as_ref().clone());
        let df_input = DFSchema::try_from_qualified_schema(scan.table_name.clone(), &input)?;
        let state = ctx.state();
        let physical = |e: &Expr, schema: &DFSchema| state.create_physical_expr(e.clone(), schema);
        let filter = match filters.into_iter().reduce(|a, b| a.and(b)) {
            Some(f) => Some(physical(&f, &df_input)?),
            None => None,
        };
        let groups = agg
            .group_expr
            .iter()
            .map(|g| {
                if matches!(g, Expr::GroupingSet(_)) {
                    return Err(refuse("GROUPING SETS, CUBE and ROLLUP are not supported"));
                }
                Ok(physical(g, &df_input)?)
            })
            .collect::<Result<Vec<_>>>()?;
        let aggregate_schema: SchemaRef = Arc::new(agg.schema.as_arrow().clone());
        let mut aggregates = Vec::with_capacity(agg.aggr_expr.len());
        for (i, e) in agg.aggr_expr.iter().enumerate() {
            let Expr::AggregateFunction(f) = unalias(e) else {
                return Err(refuse(format!("{e} is not an aggregate")));
            };
            let kind = kind_of(f)?;
            let arg = match f.params.args.as_slice() {
                [arg] => physical(arg, &df_input)?,
                [] => physical(&datafusion::prelude::lit(1i64), &df_input)?,
                _ => return Err(refuse(format!("{e} takes more than one argument"))),
            };
            let output = aggregate_schema
                .field(agg.group_expr.len() + i)
                .data_type()
                .clone();
            let arg_type = arg.data_type(&input)?;
            for t in [&output, &arg_type] {
                check_storable(t)?;
            }
            aggregates.push(Aggregate {
                kind,
                arg,
                arg_type,
                output,
            });
        }
        let df_aggregate = agg.schema.as_ref();
        let (projection, output) = match projection {
            Some(p) => (
                p.expr
                    .iter()
                    .map(|e| physical(e, df_aggregate))
                    .collect::<std::result::Result<Vec<_>, _>>()?,
                Arc::new(p.schema.as_arrow().clone()),
            ),
            None => (
                (0..aggregate_schema.fields().len())
                    .map(|i| {
                        let f = aggregate_schema.field(i);
                        Ok(
                            Arc::new(datafusion::physical_expr::expressions::Column::new(
                                f.name(),
                                i,
                            )) as Arc<dyn PhysicalExpr>,
                        )
                    })
                    .collect::<Result<Vec<_>>>()?,
                aggregate_schema.clone(),
            ),
        };
        for k in 0..agg.group_expr.len() {
            check_storable(aggregate_schema.field(k).data_type())?;
        }
        Ok(Self {
            stream: scan.table_name.table().to_owned(),
            input,
            filter,
            groups,
            aggregates,
            aggregate_schema,
            projection,
            output,
        })
    }

    /// The schema of the view's rows.
    pub fn schema(&self) -> SchemaRef {
        self.output.clone()
    }

    /// What a batch of the stream's events adds to the view, per group (stored key → delta);
    /// nothing of the view changes until [`ViewPlan::merge_stored`].
    pub fn delta(&self, batch: &RecordBatch) -> Result<Vec<(Vec<u8>, GroupDelta)>> {
        Ok(self
            .fold_batch(batch)?
            .into_iter()
            .map(|(key, accs)| (key, GroupDelta(accs)))
            .collect())
    }

    /// The stored form of a group key (see [`codec`]).
    fn encode_key(&self, keys: &[ScalarValue]) -> Result<Vec<u8>> {
        // Never empty (the store's keys cannot be): a global aggregate's one group is `[VERSION]`.
        let mut out = Vec::with_capacity(16);
        out.push(codec::VERSION);
        for k in keys {
            codec::put_scalar(&mut out, k)?;
        }
        Ok(out)
    }

    /// Merges `delta` into a group's stored state (`None` for a new group) and returns the new
    /// stored state.
    pub fn merge_stored(
        &self,
        key: &[u8],
        stored: Option<&[u8]>,
        delta: GroupDelta,
    ) -> Result<Vec<u8>> {
        // A stored group is its key followed by its accumulators: the key is copied, not decoded,
        // and the stored accumulators merge into the delta's.
        let mut accs = delta.0;
        if let Some(bytes) = stored {
            let mut input = bytes.strip_prefix(key).ok_or_else(codec::corrupt)?;
            for (acc, a) in accs.iter_mut().zip(&self.aggregates) {
                acc.merge(&Acc::decode(&mut input, a)?)?;
            }
            if !input.is_empty() {
                return Err(codec::corrupt());
            }
        }
        let mut out = Vec::with_capacity(key.len() + 16 * accs.len());
        out.extend_from_slice(key);
        for acc in &accs {
            acc.encode(&mut out)?;
        }
        Ok(out)
    }

    /// The view's rows made of stored groups (as [`ViewPlan::merge_stored`] wrote them). A global
    /// aggregate has its one row even with no group stored.
    pub fn rows_of<'a>(&self, stored: impl IntoIterator<Item = &'a [u8]>) -> Result<RecordBatch> {
        self.rows_from(&self.decode_state(stored)?)
    }

    fn decode_state<'a>(
        &self,
        stored: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<BTreeMap<Vec<u8>, Group>> {
        let mut state = BTreeMap::new();
        if self.groups.is_empty() {
            let accs = self
                .aggregates
                .iter()
                .map(Acc::new)
                .collect::<Result<_>>()?;
            state.insert(
                self.encode_key(&[])?,
                Group {
                    keys: Vec::new(),
                    accs,
                },
            );
        }
        for bytes in stored {
            let group = self.decode_group(bytes)?;
            state.insert(self.encode_key(&group.keys)?, group);
        }
        Ok(state)
    }

    /// For each group key, the output column that shows it as is (`None` when the select list
    /// does not show it plainly).
    pub fn key_columns(&self) -> Vec<Option<usize>> {
        let mut out = vec![None; self.groups.len()];
        for (i, p) in self.projection.iter().enumerate() {
            if let Some(c) = p
                .as_ref()
                .downcast_ref::<datafusion::physical_expr::expressions::Column>()
                && let Some(slot) = out.get_mut(c.index())
                && slot.is_none()
            {
                *slot = Some(i);
            }
        }
        out
    }

    /// The stored key of the group whose key values are `values` (one per group expression, in
    /// order), cast to the key types; `None` when a value cannot be a key of this view exactly
    /// (lookups then scan).
    pub fn lookup_key(&self, values: &[ScalarValue]) -> Option<Vec<u8>> {
        if values.len() != self.groups.len() {
            return None;
        }
        let keys = values
            .iter()
            .enumerate()
            .map(|(k, v)| {
                let t = self.aggregate_schema.field(k).data_type();
                let exact = matches!(
                    t,
                    DataType::Boolean
                        | DataType::Int8
                        | DataType::Int16
                        | DataType::Int32
                        | DataType::Int64
                        | DataType::UInt8
                        | DataType::UInt16
                        | DataType::UInt32
                        | DataType::UInt64
                        | DataType::Utf8
                        | DataType::LargeUtf8
                        | DataType::Utf8View
                        | DataType::Date32
                        | DataType::Timestamp(_, _)
                );
                let cast = v.cast_to(t).ok()?;
                // Only values that survive the cast unchanged name a key.
                let back = cast.cast_to(&v.data_type()).ok()?;
                (exact && !v.is_null() && &back == v).then_some(cast)
            })
            .collect::<Option<Vec<_>>>()?;
        self.encode_key(&keys).ok()
    }

    fn decode_group(&self, bytes: &[u8]) -> Result<Group> {
        let mut input = bytes;
        if codec::take(&mut input, 1)?[0] != codec::VERSION {
            return Err(codec::corrupt());
        }
        let keys = (0..self.groups.len())
            .map(|k| codec::get_scalar(&mut input, self.aggregate_schema.field(k).data_type()))
            .collect::<Result<Vec<_>>>()?;
        let accs = self
            .aggregates
            .iter()
            .map(|a| Acc::decode(&mut input, a))
            .collect::<Result<Vec<_>>>()?;
        if !input.is_empty() {
            return Err(codec::corrupt());
        }
        Ok(Group { keys, accs })
    }

    /// Folds `batch` into fresh per-group accumulators: (stored key, accumulators) per group
    /// the batch touches.
    fn fold_batch(&self, batch: &RecordBatch) -> Result<Vec<(Vec<u8>, Vec<Acc>)>> {
        let batch = match &self.filter {
            Some(f) => {
                let mask = f.evaluate(batch)?.into_array(batch.num_rows())?;
                let mask = arrow::array::AsArray::as_boolean_opt(mask.as_ref())
                    .ok_or_else(|| Error::Invalid("the WHERE clause is not a boolean".into()))?
                    .clone();
                arrow::compute::filter_record_batch(batch, &mask)?
            }
            None => batch.clone(),
        };
        let n = batch.num_rows();
        if n == 0 {
            return Ok(Vec::new());
        }
        let keys: Vec<ArrayRef> = self
            .groups
            .iter()
            .map(|g| Ok(g.evaluate(&batch)?.into_array(n)?))
            .collect::<Result<_>>()?;
        let inputs: Vec<Input> = self
            .aggregates
            .iter()
            .map(|a| Input::of(a, a.arg.evaluate(&batch)?.into_array(n)?))
            .collect::<Result<_>>()?;
        let mut index: ahash::AHashMap<Vec<u8>, usize> =
            ahash::AHashMap::with_capacity(n.min(1 << 16));
        let mut groups: Vec<Vec<Acc>> = Vec::new();
        let mut key = Vec::with_capacity(32);
        for i in 0..n {
            key.clear();
            key.push(codec::VERSION);
            for k in &keys {
                codec::put_cell_at(&mut key, k, i)?;
            }
            let at = match index.get(key.as_slice()) {
                Some(&at) => at,
                None => {
                    groups.push(
                        self.aggregates
                            .iter()
                            .map(Acc::new)
                            .collect::<Result<Vec<_>>>()?,
                    );
                    index.insert(key.clone(), groups.len() - 1);
                    groups.len() - 1
                }
            };
            for ((acc, a), input) in groups[at].iter_mut().zip(&self.aggregates).zip(&inputs) {
                acc.add_at(input, i, &a.output)?;
            }
        }
        let mut groups: Vec<Option<Vec<Acc>>> = groups.into_iter().map(Some).collect();
        Ok(index
            .into_iter()
            .filter_map(|(key, at)| Some((key, groups.get_mut(at)?.take()?)))
            .collect())
    }

    fn rows_from(&self, state: &BTreeMap<Vec<u8>, Group>) -> Result<RecordBatch> {
        let groups = state.values();
        let key_count = self.groups.len();
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.aggregate_schema.fields().len());
        for k in 0..key_count {
            let values: Vec<ScalarValue> = groups.clone().map(|g| g.keys[k].clone()).collect();
            columns.push(column(values, self.aggregate_schema.field(k))?);
        }
        for (j, a) in self.aggregates.iter().enumerate() {
            let values = groups
                .clone()
                .map(|g| g.accs[j].value(&a.output))
                .collect::<Result<Vec<_>>>()?;
            columns.push(column(values, self.aggregate_schema.field(key_count + j))?);
        }
        let aggregated = RecordBatch::try_new_with_options(
            self.aggregate_schema.clone(),
            columns,
            &arrow::array::RecordBatchOptions::new().with_row_count(Some(state.len())),
        )?;
        let n = aggregated.num_rows();
        let out: Vec<ArrayRef> = self
            .projection
            .iter()
            .map(|p| Ok(p.evaluate(&aggregated)?.into_array(n)?))
            .collect::<Result<_>>()?;
        Ok(RecordBatch::try_new_with_options(
            self.output.clone(),
            out,
            &arrow::array::RecordBatchOptions::new().with_row_count(Some(n)),
        )?)
    }

    /// The schema of the stream the view reads.
    pub fn input_schema(&self) -> SchemaRef {
        self.input.clone()
    }
}

fn column(values: Vec<ScalarValue>, field: &Field) -> Result<ArrayRef> {
    if values.is_empty() {
        return Ok(arrow::array::new_empty_array(field.data_type()));
    }
    let array = ScalarValue::iter_to_array(values)?;
    if array.data_type() == field.data_type() {
        Ok(array)
    } else {
        Ok(arrow::compute::cast(&array, field.data_type())?)
    }
}

fn describe_unsupported(plan: &LogicalPlan) -> String {
    match plan {
        LogicalPlan::Join(_) => "joins are not supported".into(),
        LogicalPlan::Window(_) => "window functions are not supported".into(),
        LogicalPlan::Sort(_) => "ORDER BY inside a view definition is not supported (order when you query the view)".into(),
        LogicalPlan::Limit(_) => "LIMIT inside a view definition is not supported (limit when you query the view)".into(),
        LogicalPlan::Distinct(_) => "SELECT DISTINCT is not supported (use GROUP BY)".into(),
        LogicalPlan::Union(_) => "UNION is not supported".into(),
        LogicalPlan::Filter(_) => "HAVING is not supported yet (filter when you query the view)".into(),
        LogicalPlan::TableScan(_) | LogicalPlan::Projection(_) => {
            "a view must aggregate (GROUP BY with count, sum, min, max, avg or count(DISTINCT …)); a plain SELECT would only copy the stream".into()
        }
        other => format!("{} is not supported", other.display()),
    }
}

/// A schema helper for tests and callers: the Arrow schema of `fields`.
pub fn schema_of(fields: Vec<Field>) -> SchemaRef {
    Arc::new(Schema::new(fields))
}

/// A view statement of `POST /v1/sql`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ViewStatement {
    /// `CREATE MATERIALIZED VIEW name AS <query>`.
    Create {
        /// The view's name (a stream-name-like SQL identifier).
        name: String,
        /// The query text, as written.
        query: String,
        /// `IF NOT EXISTS` was given.
        if_not_exists: bool,
    },
    /// `SHOW VIEWS` or `SHOW MATERIALIZED VIEWS`.
    Show,
    /// `DROP MATERIALIZED VIEW [IF EXISTS] name`.
    Drop {
        /// The view's name.
        name: String,
        /// `IF EXISTS` was given.
        if_exists: bool,
    },
}

/// Recognizes `CREATE MATERIALIZED VIEW`, `DROP MATERIALIZED VIEW` and `SHOW VIEWS` in SQL text;
/// `None` for any other SQL.
pub fn parse_view_statement(sql: &str) -> Result<Option<ViewStatement>> {
    let mut statements = datafusion::sql::parser::DFParser::parse_sql(sql)?;
    if statements.len() != 1 {
        return Ok(None);
    }
    match statements.pop_front() {
        Some(statement) => view_statement(&statement),
        None => Ok(None),
    }
}

/// The view statement `statement` is, if it is one (see [`parse_view_statement`]).
pub fn view_statement(
    statement: &datafusion::sql::parser::Statement,
) -> Result<Option<ViewStatement>> {
    use datafusion::sql::parser::Statement as DfStatement;
    use datafusion::sql::sqlparser::ast::{ObjectType, Statement};
    let DfStatement::Statement(statement) = statement else {
        return Ok(None);
    };
    let name_of = |name: &datafusion::sql::sqlparser::ast::ObjectName| -> Result<String> {
        let text = name.to_string();
        strata_proto::StreamName::new(&text)
            .map(|n| n.to_string())
            .map_err(|e| Error::Invalid(format!("view name: {e}")))
    };
    Ok(match statement.as_ref() {
        Statement::CreateView(view) if view.materialized => {
            if view.or_replace || view.temporary || !view.columns.is_empty() {
                return Err(Error::Invalid(
                    "CREATE MATERIALIZED VIEW takes a name and AS <query> (no OR REPLACE, TEMPORARY or column list)"
                        .into(),
                ));
            }
            Some(ViewStatement::Create {
                name: name_of(&view.name)?,
                query: view.query.to_string(),
                if_not_exists: view.if_not_exists,
            })
        }
        Statement::Drop {
            object_type: ObjectType::MaterializedView,
            if_exists,
            names,
            ..
        } => {
            let [name] = names.as_slice() else {
                return Err(Error::Invalid(
                    "DROP MATERIALIZED VIEW takes one name".into(),
                ));
            };
            Some(ViewStatement::Drop {
                name: name_of(name)?,
                if_exists: *if_exists,
            })
        }
        Statement::ShowViews { .. } => Some(ViewStatement::Show),
        _ => None,
    })
}

/// Refuses column types the view state cannot store.
fn check_storable(t: &DataType) -> Result<()> {
    match t {
        DataType::Null
        | DataType::Boolean
        | DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::UInt8
        | DataType::UInt16
        | DataType::UInt32
        | DataType::UInt64
        | DataType::Float32
        | DataType::Float64
        | DataType::Utf8
        | DataType::LargeUtf8
        | DataType::Utf8View
        | DataType::Date32
        | DataType::Timestamp(_, _) => Ok(()),
        other => Err(refuse(format!(
            "a column of type {other} cannot be kept in a view"
        ))),
    }
}

/// A value as JSON: numbers exact (floats as their bits), text as strings, NULL as null.
fn scalar_to_json(v: &ScalarValue) -> Result<serde_json::Value> {
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
fn json_to_scalar(v: &serde_json::Value, t: &DataType) -> Result<ScalarValue> {
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

/// Folds batches of a stream into a view's stored groups, for the store (see
/// [`strata_store::ViewFold`]).
pub struct Maintainer(pub Arc<ViewPlan>);

impl strata_store::ViewFold for Maintainer {
    fn fold(
        &self,
        rows: &RecordBatch,
        stored: &mut strata_store::ReadGroup<'_>,
    ) -> strata_store::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let view = |e: Error| strata_store::Error::View(e.to_string());
        let deltas = self.0.delta(rows).map_err(view)?;
        let mut out = Vec::with_capacity(deltas.len());
        for (key, delta) in deltas {
            let current = stored(&key)?;
            let merged = self
                .0
                .merge_stored(&key, current.as_deref(), delta)
                .map_err(view)?;
            out.push((key, merged));
        }
        Ok(out)
    }
}

/// The stored encoding of view state (version 2, binary): a group key is its key values as
/// cells; a group's state is the version byte, its key cells, then each accumulator (a tag, then
/// its payload). A cell is a tag (0 NULL, 1 boolean, 2 signed, 3 unsigned, 4 text) and the value
/// (8 bytes little-endian for numbers, floats as their bits; u32 length and UTF-8 for text),
/// read back as the column's type (see `scalar_to_json`/`json_to_scalar`).
mod codec {
    use super::{json_to_scalar, scalar_to_json};
    use crate::{Error, Result};
    use arrow::datatypes::DataType;
    use datafusion::common::ScalarValue;
    use serde_json::Value as J;

    pub const VERSION: u8 = 2;

    pub fn corrupt() -> Error {
        Error::Invalid("corrupt view state".into())
    }

    pub fn take<'a>(input: &mut &'a [u8], n: usize) -> Result<&'a [u8]> {
        if input.len() < n {
            return Err(corrupt());
        }
        let (head, rest) = input.split_at(n);
        *input = rest;
        Ok(head)
    }

    pub fn take_i64(input: &mut &[u8]) -> Result<i64> {
        Ok(i64::from_le_bytes(
            take(input, 8)?.try_into().map_err(|_| corrupt())?,
        ))
    }

    pub fn put_scalar(out: &mut Vec<u8>, v: &ScalarValue) -> Result<()> {
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
    pub fn put_cell_at(out: &mut Vec<u8>, a: &arrow::array::ArrayRef, i: usize) -> Result<()> {
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
                out.extend_from_slice(
                    &i64::from(a.as_primitive::<Int32Type>().value(i)).to_le_bytes(),
                );
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

    pub fn put_tagged(out: &mut Vec<u8>, tag: u8, v: &ScalarValue) -> Result<()> {
        out.push(tag);
        put_scalar(out, v)
    }

    pub fn get_scalar(input: &mut &[u8], t: &DataType) -> Result<ScalarValue> {
        let cell = match take(input, 1)?[0] {
            0 => J::Null,
            1 => J::Bool(take(input, 1)?[0] != 0),
            2 => J::from(take_i64(input)?),
            3 => J::from(take_i64(input)? as u64),
            4 => {
                let len = u32::from_le_bytes(take(input, 4)?.try_into().map_err(|_| corrupt())?);
                let text =
                    std::str::from_utf8(take(input, len as usize)?).map_err(|_| corrupt())?;
                J::String(text.to_owned())
            }
            _ => return Err(corrupt()),
        };
        json_to_scalar(&cell, t)
    }
}
