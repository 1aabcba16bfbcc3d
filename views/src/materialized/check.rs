//! The definition check: a view's `SELECT` against DataFusion's logical plan, refusing what
//! cannot be maintained incrementally with the reason.

use super::ViewPlan;
use super::accumulators::{Aggregate, Kind};
use crate::{Error, Result};
use arrow::datatypes::{DataType, SchemaRef};
use datafusion::common::DFSchema;
use datafusion::logical_expr::expr::AggregateFunction;
use datafusion::logical_expr::{Expr, LogicalPlan};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::prelude::SessionContext;
use std::sync::Arc;

pub(super) fn refuse(reason: impl Into<String>) -> Error {
    Error::Invalid(format!(
        "this view cannot be maintained incrementally: {}",
        reason.into()
    ))
}

/// The aggregate kind of `f`, or why it is refused.
pub(super) fn kind_of(f: &AggregateFunction) -> Result<Kind> {
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
pub(super) fn unalias(e: &Expr) -> &Expr {
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
}

pub(super) fn describe_unsupported(plan: &LogicalPlan) -> String {
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

/// Refuses column types the view state cannot store.
pub(super) fn check_storable(t: &DataType) -> Result<()> {
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
