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
use arrow::array::{ArrayRef, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::row::{RowConverter, SortField};
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
    Sum(ScalarValue),
    Min(ScalarValue),
    Max(ScalarValue),
    Avg { sum: f64, count: i64 },
    Distinct(HashSet<ScalarValue>),
}

impl Acc {
    fn new(a: &Aggregate) -> Result<Self> {
        let null = || ScalarValue::try_from(&a.output).map_err(Error::from);
        Ok(match a.kind {
            Kind::Count => Acc::Count(0),
            Kind::Sum => Acc::Sum(null()?),
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

    /// The accumulator as JSON (see [`scalar_to_json`]).
    fn to_json(&self) -> Result<serde_json::Value> {
        use serde_json::json;
        Ok(match self {
            Acc::Count(n) => json!({ "count": n }),
            Acc::Sum(v) => json!({ "sum": scalar_to_json(v)? }),
            Acc::Min(v) => json!({ "min": scalar_to_json(v)? }),
            Acc::Max(v) => json!({ "max": scalar_to_json(v)? }),
            Acc::Avg { sum, count } => json!({ "avg": [sum.to_bits(), count] }),
            Acc::Distinct(set) => {
                let mut values = set.iter().map(scalar_to_json).collect::<Result<Vec<_>>>()?;
                values.sort_by_key(|v| v.to_string());
                json!({ "distinct": values })
            }
        })
    }

    /// Reads an accumulator of aggregate `a` back from [`Acc::to_json`].
    fn from_json(v: &serde_json::Value, a: &Aggregate) -> Result<Self> {
        let bad = || Error::Invalid(format!("corrupt view state: {v}"));
        let (tag, inner) = v
            .as_object()
            .and_then(|o| o.iter().next())
            .ok_or_else(bad)?;
        Ok(match (tag.as_str(), a.kind) {
            ("count", Kind::Count) => Acc::Count(inner.as_i64().ok_or_else(bad)?),
            ("sum", Kind::Sum) => Acc::Sum(json_to_scalar(inner, &a.output)?),
            ("min", Kind::Min) => Acc::Min(json_to_scalar(inner, &a.output)?),
            ("max", Kind::Max) => Acc::Max(json_to_scalar(inner, &a.output)?),
            ("avg", Kind::Avg) => {
                let sum = inner
                    .get(0)
                    .and_then(serde_json::Value::as_u64)
                    .ok_or_else(bad)?;
                let count = inner
                    .get(1)
                    .and_then(serde_json::Value::as_i64)
                    .ok_or_else(bad)?;
                Acc::Avg {
                    sum: f64::from_bits(sum),
                    count,
                }
            }
            ("distinct", Kind::CountDistinct) => {
                let values = inner.as_array().ok_or_else(bad)?;
                let arg_type = a.arg_type.clone();
                Acc::Distinct(
                    values
                        .iter()
                        .map(|v| json_to_scalar(v, &arg_type))
                        .collect::<Result<_>>()?,
                )
            }
            _ => return Err(bad()),
        })
    }

    /// The aggregate's value now.
    fn value(&self, output: &DataType) -> Result<ScalarValue> {
        Ok(match self {
            Acc::Count(n) => ScalarValue::Int64(Some(*n)).cast_to(output)?,
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
pub struct GroupDelta(Group);

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
    rows: RowConverter,
    state: BTreeMap<Vec<u8>, Group>,
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
        let sort_fields = (0..agg.group_expr.len())
            .map(|i| SortField::new(aggregate_schema.field(i).data_type().clone()))
            .collect();
        let rows = RowConverter::new(sort_fields)?;
        let mut plan = Self {
            stream: scan.table_name.table().to_owned(),
            input,
            filter,
            groups,
            aggregates,
            aggregate_schema,
            projection,
            output,
            rows,
            state: BTreeMap::new(),
        };
        if plan.groups.is_empty() {
            // A global aggregate has its one row even before any event.
            let accs = plan
                .aggregates
                .iter()
                .map(Acc::new)
                .collect::<Result<Vec<_>>>()?;
            plan.state.insert(
                Vec::new(),
                Group {
                    keys: Vec::new(),
                    accs,
                },
            );
        }
        Ok(plan)
    }

    /// The schema of the view's rows.
    pub fn schema(&self) -> SchemaRef {
        self.output.clone()
    }

    /// Folds a batch of the stream's events (in the stream's table schema) into the view.
    pub fn apply(&mut self, batch: &RecordBatch) -> Result<()> {
        let mut state = std::mem::take(&mut self.state);
        let folded = self.fold(&mut state, batch);
        self.state = state;
        folded
    }

    /// What a batch of the stream's events adds to the view, per group (encoded key → delta);
    /// nothing of the view changes until [`ViewPlan::merge`].
    pub fn delta(&self, batch: &RecordBatch) -> Result<BTreeMap<Vec<u8>, GroupDelta>> {
        let mut state = BTreeMap::new();
        self.fold(&mut state, batch)?;
        state
            .into_values()
            .map(|g| Ok((self.encode_key(&g.keys)?, GroupDelta(g))))
            .collect()
    }

    /// The stored form of a group key (stable across versions: JSON of the key values).
    fn encode_key(&self, keys: &[ScalarValue]) -> Result<Vec<u8>> {
        let cells = keys
            .iter()
            .map(scalar_to_json)
            .collect::<Result<Vec<_>>>()?;
        Ok(serde_json::Value::Array(cells).to_string().into_bytes())
    }

    /// Merges `delta` into a group's stored state (`None` for a new group) and returns the new
    /// stored state.
    pub fn merge_stored(&self, stored: Option<&[u8]>, delta: &GroupDelta) -> Result<Vec<u8>> {
        let mut group = match stored {
            Some(bytes) => self.decode_group(bytes)?,
            None => Group {
                keys: delta.0.keys.clone(),
                accs: self
                    .aggregates
                    .iter()
                    .map(Acc::new)
                    .collect::<Result<_>>()?,
            },
        };
        for (acc, d) in group.accs.iter_mut().zip(&delta.0.accs) {
            acc.merge(d)?;
        }
        self.encode_group(&group)
    }

    /// Replaces the view's state with stored groups (as [`ViewPlan::merge_stored`] wrote them).
    pub fn load<'a>(&mut self, stored: impl IntoIterator<Item = &'a [u8]>) -> Result<()> {
        self.state = self.decode_state(stored)?;
        Ok(())
    }

    /// The view's rows made of stored groups (as [`ViewPlan::merge_stored`] wrote them), without
    /// touching the plan's own state. A global aggregate has its one row even with no group stored.
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
                Vec::new(),
                Group {
                    keys: Vec::new(),
                    accs,
                },
            );
        }
        for bytes in stored {
            let group = self.decode_group(bytes)?;
            let key = if group.keys.is_empty() {
                Vec::new()
            } else {
                let arrays = group
                    .keys
                    .iter()
                    .map(|k| k.to_array())
                    .collect::<std::result::Result<Vec<_>, _>>()?;
                self.rows.convert_columns(&arrays)?.row(0).as_ref().to_vec()
            };
            state.insert(key, group);
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

    fn encode_group(&self, group: &Group) -> Result<Vec<u8>> {
        let keys = group
            .keys
            .iter()
            .map(scalar_to_json)
            .collect::<Result<Vec<_>>>()?;
        let accs = group
            .accs
            .iter()
            .map(Acc::to_json)
            .collect::<Result<Vec<_>>>()?;
        Ok(serde_json::json!({ "keys": keys, "accs": accs })
            .to_string()
            .into_bytes())
    }

    fn decode_group(&self, bytes: &[u8]) -> Result<Group> {
        let bad = || Error::Invalid("corrupt view state".into());
        let v: serde_json::Value = serde_json::from_slice(bytes).map_err(|_| bad())?;
        let keys = v["keys"]
            .as_array()
            .ok_or_else(bad)?
            .iter()
            .enumerate()
            .map(|(k, cell)| json_to_scalar(cell, self.aggregate_schema.field(k).data_type()))
            .collect::<Result<Vec<_>>>()?;
        let accs = v["accs"]
            .as_array()
            .ok_or_else(bad)?
            .iter()
            .zip(&self.aggregates)
            .map(|(cell, a)| Acc::from_json(cell, a))
            .collect::<Result<Vec<_>>>()?;
        if keys.len() != self.groups.len() || accs.len() != self.aggregates.len() {
            return Err(bad());
        }
        Ok(Group { keys, accs })
    }

    fn fold(&self, state: &mut BTreeMap<Vec<u8>, Group>, batch: &RecordBatch) -> Result<()> {
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
            return Ok(());
        }
        let keys: Vec<ArrayRef> = self
            .groups
            .iter()
            .map(|g| Ok(g.evaluate(&batch)?.into_array(n)?))
            .collect::<Result<_>>()?;
        let args: Vec<ArrayRef> = self
            .aggregates
            .iter()
            .map(|a| Ok(a.arg.evaluate(&batch)?.into_array(n)?))
            .collect::<Result<_>>()?;
        let rows = if keys.is_empty() {
            None
        } else {
            Some(self.rows.convert_columns(&keys)?)
        };
        for i in 0..n {
            let key = rows
                .as_ref()
                .map_or_else(Vec::new, |r| r.row(i).as_ref().to_vec());
            if !state.contains_key(&key) {
                let keys = keys
                    .iter()
                    .map(|k| ScalarValue::try_from_array(k, i))
                    .collect::<std::result::Result<Vec<_>, _>>()?;
                let accs = self
                    .aggregates
                    .iter()
                    .map(Acc::new)
                    .collect::<Result<Vec<_>>>()?;
                state.insert(key.clone(), Group { keys, accs });
            }
            let Some(group) = state.get_mut(&key) else {
                continue;
            };
            for ((acc, a), arg) in group.accs.iter_mut().zip(&self.aggregates).zip(&args) {
                acc.add(ScalarValue::try_from_array(arg, i)?, &a.output)?;
            }
        }
        Ok(())
    }

    /// The view's rows now.
    pub fn rows(&self) -> Result<RecordBatch> {
        self.rows_from(&self.state)
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

/// Recognizes `CREATE MATERIALIZED VIEW`, `DROP MATERIALIZED VIEW` and `SHOW VIEWS`; `None` for
/// any other SQL.
pub fn parse_view_statement(sql: &str) -> Result<Option<ViewStatement>> {
    use datafusion::sql::parser::{DFParser, Statement as DfStatement};
    use datafusion::sql::sqlparser::ast::{ObjectType, Statement};
    let mut statements = DFParser::parse_sql(sql)?;
    if statements.len() != 1 {
        return Ok(None);
    }
    let Some(DfStatement::Statement(statement)) = statements.pop_front() else {
        return Ok(None);
    };
    let name_of = |name: &datafusion::sql::sqlparser::ast::ObjectName| -> Result<String> {
        let text = name.to_string();
        strata_proto::StreamName::new(&text)
            .map(|n| n.to_string())
            .map_err(|e| Error::Invalid(format!("view name: {e}")))
    };
    Ok(match *statement {
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
                if_exists,
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
                .merge_stored(current.as_deref(), &delta)
                .map_err(view)?;
            out.push((key, merged));
        }
        Ok(out)
    }
}
