//! Materialized views: a definition is checked once against DataFusion's logical plan, and then
//! maintained incrementally from batches of new events — the same filter, group and aggregate
//! expressions, evaluated by DataFusion on each batch, fold into per-group accumulators that merge
//! with the stored ones ([`Maintainer`] is what the store calls in each commit).
//!
//! Supported: `SELECT <group exprs and aggregates, any scalar expression over them> FROM <stream>
//! [WHERE …] GROUP BY …` with `count(*)`, `count(x)`, `sum`, `min`, `max`, `avg`,
//! `count(DISTINCT x)` and `approx_distinct(x)` (kept exact). Everything else is refused with the
//! reason.

mod accumulators;
mod check;
mod codec;
mod fold;
mod statements;

pub use fold::{Maintainer, schema_of};
pub use statements::{ViewStatement, parse_view_statement, view_statement};

use accumulators::{Acc, Aggregate};
use arrow::datatypes::SchemaRef;
use datafusion::common::ScalarValue;
use datafusion::physical_expr::PhysicalExpr;
use std::sync::Arc;

/// What one batch adds to one group of a view (see [`ViewPlan::delta`]).
#[derive(Clone, Debug)]
pub struct GroupDelta(Vec<Acc>);

/// One group: its key values and accumulators.
#[derive(Clone, Debug)]
struct Group {
    pub(super) keys: Vec<ScalarValue>,
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

impl std::fmt::Debug for ViewPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ViewPlan")
            .field("stream", &self.stream)
            .finish_non_exhaustive()
    }
}
