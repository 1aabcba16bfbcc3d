//! Server-side filters of a subscription: `type = T` and a SQL boolean expression over the
//! stream's columns, evaluated by DataFusion on each batch of events as it is delivered.
//!
//! The expression is planned in the same session as `/v1/sql` (its functions, JSON functions and
//! the capped string functions that reserve their output from the query memory pool), but only
//! as a scalar expression over one batch: subqueries, aggregates, window functions and
//! placeholders are refused, so it can read nothing but the event it is given.

use crate::{Error, Result, SqlEngine};
use arrow::array::{AsArray, RecordBatch};
use arrow::compute::filter_record_batch;
use arrow::datatypes::{DataType, SchemaRef};
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::common::{DFSchema, ScalarValue};
use datafusion::logical_expr::{Expr, ExprSchemable, col, lit};
use datafusion::physical_expr::PhysicalExpr;
use std::sync::Arc;

/// The longest `where` expression accepted, in bytes.
pub const MAX_FILTER_BYTES: usize = 16 * 1024;

/// A compiled subscription filter over batches of one stream's schema.
#[derive(Clone, Debug)]
pub struct EventFilter {
    predicate: Arc<dyn PhysicalExpr>,
}

impl SqlEngine {
    /// Compiles the filter of a subscription over `schema` (a stream's SQL schema): events of
    /// type `event_type` (when given) for which `where_sql` (when given) is true. `None` when
    /// there is nothing to filter.
    ///
    /// # Errors
    /// [`Error::Syntax`] or [`Error::Invalid`] for an expression that does not parse, is not a
    /// boolean, or is not a scalar expression over the stream's own columns;
    /// [`Error::UnknownColumn`] for a column the stream does not have.
    pub fn event_filter(
        &self,
        schema: SchemaRef,
        event_type: Option<&str>,
        where_sql: Option<&str>,
    ) -> Result<Option<EventFilter>> {
        let df_schema = DFSchema::try_from(schema)?;
        let state = self.ctx.state();
        let mut parts = Vec::new();
        if let Some(t) = event_type {
            parts.push(col("type").eq(lit(t)));
        }
        if let Some(sql) = where_sql {
            if sql.len() > MAX_FILTER_BYTES {
                return Err(Error::Invalid(format!(
                    "`where` is {} bytes; at most {MAX_FILTER_BYTES} are accepted",
                    sql.len()
                )));
            }
            let expr = state.create_logical_expr(sql, &df_schema)?;
            check_scalar(&expr)?;
            match expr.get_type(&df_schema)? {
                DataType::Boolean | DataType::Null => {}
                other => {
                    return Err(Error::Invalid(format!(
                        "`where` must be a boolean expression, got one of type {other}"
                    )));
                }
            }
            parts.push(expr);
        }
        let Some(expr) = parts.into_iter().reduce(Expr::and) else {
            return Ok(None);
        };
        let predicate = self.ctx.create_physical_expr(expr, &df_schema)?;
        Ok(Some(EventFilter { predicate }))
    }
}

/// Refuses what is not a scalar expression over the row itself.
fn check_scalar(expr: &Expr) -> Result<()> {
    let mut refused: Option<&'static str> = None;
    expr.apply(|e| {
        refused = match e {
            Expr::ScalarSubquery(_)
            | Expr::Exists(_)
            | Expr::InSubquery(_)
            | Expr::SetComparison(_)
            | Expr::OuterReferenceColumn(..) => Some("a subquery"),
            Expr::AggregateFunction(_) => Some("an aggregate function"),
            Expr::WindowFunction(_) => Some("a window function"),
            Expr::Placeholder(_) => Some("a parameter placeholder"),
            Expr::ScalarVariable(..) => Some("a variable"),
            Expr::Unnest(_) | Expr::GroupingSet(_) => Some("a set-returning expression"),
            _ => None,
        };
        Ok(if refused.is_some() {
            TreeNodeRecursion::Stop
        } else {
            TreeNodeRecursion::Continue
        })
    })?;
    match refused {
        Some(what) => Err(Error::Invalid(format!(
            "`where` is evaluated on each event by itself and cannot contain {what}"
        ))),
        None => Ok(()),
    }
}

impl EventFilter {
    /// The rows of `batch` the filter keeps (NULL counts as false).
    ///
    /// # Errors
    /// The expression failing on these rows (a cast that does not hold, the query memory limit).
    pub fn apply(&self, batch: &RecordBatch) -> Result<RecordBatch> {
        let keep = self.predicate.evaluate(batch)?;
        let keep = match keep {
            datafusion::logical_expr::ColumnarValue::Array(a) => a,
            datafusion::logical_expr::ColumnarValue::Scalar(s) => match s {
                ScalarValue::Boolean(Some(true)) => return Ok(batch.clone()),
                _ => return Ok(batch.slice(0, 0)),
            },
        };
        let keep = match keep.data_type() {
            DataType::Boolean => keep.as_boolean().clone(),
            DataType::Null => return Ok(batch.slice(0, 0)),
            other => {
                return Err(Error::Invalid(format!(
                    "`where` gave {other}, not a boolean"
                )));
            }
        };
        Ok(filter_record_batch(batch, &keep)?)
    }
}
