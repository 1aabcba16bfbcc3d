//! The table provider of a materialized view: reads the view's stored groups, never the events.
//! Planning reads nothing: [`ViewScanExec`] reads the groups when it runs.

use crate::materialized::ViewPlan;
use crate::source::{ShardSource, ViewAfter};
use crate::table::ReadAfter;
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{ParamValues, ScalarValue};
use datafusion::datasource::TableType;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{BinaryExpr, Expr, Operator, TableProviderFilterPushDown};
use datafusion::physical_expr::EquivalenceProperties;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::filter::FilterExecBuilder;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
    SendableRecordBatchStream,
};
use std::collections::HashMap;
use std::sync::Arc;
use strata_proto::StreamName;

/// A materialized view as a SQL table. Equality filters on every group column of the view
/// (`country = 'NL'`, `country IN ('NL', 'DE')`) become point reads of those groups, which apply
/// them exactly; anything else reads the view's groups in full, the scan applies the equalities
/// on group columns it did not read by, and DataFusion applies the other filters after the
/// read. An equality may compare with a placeholder (`country = $1`): a plan kept for its
/// shape (the engine's plan cache) gets the value before it runs.
pub struct ViewTable {
    source: Arc<dyn ShardSource>,
    name: String,
    plan: Arc<ViewPlan>,
}

impl std::fmt::Debug for ViewTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ViewTable")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl ViewTable {
    /// The view `name`, maintained by `plan`.
    pub fn new(source: Arc<dyn ShardSource>, name: String, plan: Arc<ViewPlan>) -> Self {
        Self { source, name, plan }
    }

    /// `expr` as an equality of an output column with values — `col = v`, `v = col` or
    /// `col IN (v, …)` — as the column's index and the value expressions.
    fn compared<'e>(&self, expr: &'e Expr) -> Option<(usize, Vec<&'e Expr>)> {
        let schema = self.plan.schema();
        let column = |e: &Expr| match e {
            Expr::Column(c) => schema.index_of(&c.name).ok(),
            _ => None,
        };
        match expr {
            Expr::BinaryExpr(BinaryExpr {
                left,
                op: Operator::Eq,
                right,
            }) => match (column(left), column(right)) {
                (Some(c), None) => Some((c, vec![right.as_ref()])),
                (None, Some(c)) => Some((c, vec![left.as_ref()])),
                _ => None,
            },
            Expr::InList(list) if !list.negated && list.list.len() <= 1000 => {
                Some((column(&list.expr)?, list.list.iter().collect()))
            }
            _ => None,
        }
    }

    /// The literal values `expr` allows for an output column: `col = v`, `v = col` or
    /// `col IN (v, …)`.
    fn equalities(&self, expr: &Expr) -> Option<(usize, Vec<ScalarValue>)> {
        let (c, values) = self.compared(expr)?;
        let values = values
            .into_iter()
            .map(|e| match e {
                Expr::Literal(v, _) => Some(v.clone()),
                _ => None,
            })
            .collect::<Option<Vec<_>>>()?;
        Some((c, values))
    }

    /// Whether `expr` is an equality on a group column with literals or placeholders (`col = v`,
    /// `col = $1`, `col IN (v, …)`): the scan applies it, by the point read or a filter.
    fn pins_group_column(&self, expr: &Expr) -> bool {
        self.compared(expr).is_some_and(|(c, values)| {
            self.plan.key_columns().contains(&Some(c))
                && values
                    .iter()
                    .all(|e| matches!(e, Expr::Literal(..) | Expr::Placeholder(_)))
        })
    }

    /// The stored keys the filters pin down, when they pin every group column, with the
    /// filters that pinned them (the first equality on each group column): the point read
    /// applies exactly those.
    fn lookup_keys(&self, filters: &[&Expr]) -> Option<(Vec<Vec<u8>>, Vec<usize>)> {
        let key_columns = self.plan.key_columns();
        if key_columns.is_empty() {
            return None;
        }
        let mut allowed: HashMap<usize, Vec<ScalarValue>> = HashMap::new();
        let mut pinning: HashMap<usize, usize> = HashMap::new();
        for (i, f) in filters.iter().enumerate() {
            if let Some((c, values)) = self.equalities(f)
                && !allowed.contains_key(&c)
            {
                allowed.insert(c, values);
                pinning.insert(c, i);
            }
        }
        // Every combination of allowed values, one per group column.
        let mut combos: Vec<Vec<ScalarValue>> = vec![Vec::new()];
        for column in &key_columns {
            let values = allowed.get(&(*column)?)?;
            combos = combos
                .into_iter()
                .flat_map(|prefix| {
                    values.iter().map(move |v| {
                        let mut next = prefix.clone();
                        next.push(v.clone());
                        next
                    })
                })
                .collect();
            if combos.len() > 1000 {
                return None;
            }
        }
        let mut keys = combos
            .iter()
            .map(|c| self.plan.lookup_key(c))
            .collect::<Option<Vec<_>>>()?;
        // `IN ('NL', 'NL')` reads the group once.
        keys.sort_unstable();
        keys.dedup();
        let used = key_columns
            .iter()
            .filter_map(|c| pinning.get(&(*c)?).copied())
            .collect();
        Some((keys, used))
    }
}

#[async_trait]
impl TableProvider for ViewTable {
    fn schema(&self) -> SchemaRef {
        self.plan.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        // An equality on a group column is applied exactly by the scan: by the point read when
        // the filters pin every group column (the stored key of each value is the group whose
        // column equals it; `lookup_key` names a key only for a value of the key's own type that
        // survives the cast unchanged, never NULL), otherwise by a filter over the groups read.
        // So DataFusion need not filter (nor repartition to filter) again.
        Ok(filters
            .iter()
            .map(|f| {
                if self.pins_group_column(f) {
                    TableProviderFilterPushDown::Exact
                } else if self.equalities(f).is_some() {
                    TableProviderFilterPushDown::Inexact
                } else {
                    TableProviderFilterPushDown::Unsupported
                }
            })
            .collect())
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if filters.iter().any(|f| {
            f.exists(|e| Ok(matches!(e, Expr::Placeholder(_))))
                .unwrap_or(true)
        }) {
            // A kept plan (the engine's plan cache): the filters are bound to values before it
            // runs ([`ViewScanExec::bind`]).
            let mut exec = self.exec(None, projection.cloned())?;
            exec.pending = filters.to_vec();
            return Ok(Arc::new(exec));
        }
        let (keys, used) = match self.lookup_keys(&filters.iter().collect::<Vec<_>>()) {
            Some((keys, used)) => (Some(keys), used),
            None => (None, Vec::new()),
        };
        // Equalities on group columns the point read does not apply (it did not pin every
        // group column, or a value cannot be a key): the scan filters by them itself, as
        // `supports_filters_pushdown` promised.
        let rest: Vec<Expr> = filters
            .iter()
            .enumerate()
            .filter(|(i, f)| !used.contains(i) && self.pins_group_column(f))
            .map(|(_, f)| f.clone())
            .collect();
        let Some(predicate) = datafusion::logical_expr::utils::conjunction(rest) else {
            return Ok(Arc::new(self.exec(keys, projection.cloned())?));
        };
        let all = self.exec(keys, None)?;
        let schema = datafusion::common::DFSchema::try_from(self.plan.schema())?;
        let predicate = state.create_physical_expr(predicate, &schema)?;
        Ok(Arc::new(
            FilterExecBuilder::new(predicate, Arc::new(all))
                .apply_projection(projection.cloned())?
                .build()?,
        ))
    }
}

impl ViewTable {
    /// The plan this view is maintained by (a cached plan over it is valid while the view's
    /// registry holds the same one).
    pub(crate) fn view_plan(&self) -> &Arc<ViewPlan> {
        &self.plan
    }

    /// A read of the groups `keys` (all of them when `None`), of the columns `projection`.
    fn exec(
        &self,
        keys: Option<Vec<Vec<u8>>>,
        projection: Option<Vec<usize>>,
    ) -> Result<ViewScanExec> {
        let schema = match &projection {
            Some(p) => Arc::new(self.plan.schema().project(p)?),
            None => self.plan.schema(),
        };
        Ok(ViewScanExec {
            source: self.source.clone(),
            name: self.name.clone(),
            plan: self.plan.clone(),
            keys,
            pending: Vec::new(),
            projection,
            properties: Arc::new(PlanProperties::new(
                EquivalenceProperties::new(schema.clone()),
                Partitioning::UnknownPartitioning(1),
                EmissionType::Final,
                Boundedness::Bounded,
            )),
            schema,
        })
    }
}

/// The physical read of a view: the groups the filters pinned (point reads), or all of them, read
/// when the plan runs.
#[derive(Debug)]
pub struct ViewScanExec {
    source: Arc<dyn ShardSource>,
    name: String,
    plan: Arc<ViewPlan>,
    /// The encoded keys of the groups to read; `None` reads every group.
    keys: Option<Vec<Vec<u8>>>,
    /// Filters with placeholders, which [`ViewScanExec::bind`] turns into keys; a scan with
    /// pending filters does not run.
    pending: Vec<Expr>,
    projection: Option<Vec<usize>>,
    schema: SchemaRef,
    properties: Arc<PlanProperties>,
}

impl DisplayAs for ViewScanExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "ViewScanExec: view={}", self.name)?;
        match &self.keys {
            Some(keys) => write!(f, ", lookup={} groups", keys.len())?,
            None => write!(f, ", scan")?,
        }
        let names: Vec<&str> = self
            .schema
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect();
        write!(f, ", projection=[{}]", names.join(", "))
    }
}

impl ViewScanExec {
    /// Whether this scan waits for placeholder values.
    pub(crate) fn is_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// This scan with the placeholders of its filters replaced by `values`, reading the groups
    /// they pin; `None` when the bound filters do not all become the point read (the plan must
    /// then be made again with the values in place).
    ///
    /// # Errors
    /// A placeholder without a value.
    pub(crate) fn bind(&self, values: &ParamValues) -> Result<Option<Self>> {
        let bound = self
            .pending
            .iter()
            .map(|f| {
                f.clone()
                    .transform(|e| match e {
                        Expr::Placeholder(p) => {
                            let (value, metadata) =
                                values.get_placeholders_with_values(&p.id)?.into_inner();
                            Ok(Transformed::yes(Expr::Literal(value, metadata)))
                        }
                        other => Ok(Transformed::no(other)),
                    })
                    .map(|t| t.data)
            })
            .collect::<Result<Vec<_>>>()?;
        let table = ViewTable::new(self.source.clone(), self.name.clone(), self.plan.clone());
        let Some((keys, used)) = table.lookup_keys(&bound.iter().collect::<Vec<_>>()) else {
            return Ok(None);
        };
        if used.len() != bound.len() {
            return Ok(None);
        }
        Ok(Some(table.exec(Some(keys), self.projection.clone())?))
    }
}

impl ExecutionPlan for ViewScanExec {
    fn name(&self) -> &str {
        "ViewScanExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    leaf_plan!();

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        if partition != 0 {
            return Err(DataFusionError::Internal(format!(
                "ViewScanExec has no partition {partition}"
            )));
        }
        if self.is_pending() {
            return Err(DataFusionError::Plan(
                "a placeholder of the query has no value".into(),
            ));
        }
        let (source, name, plan) = (self.source.clone(), self.name.clone(), self.plan.clone());
        let (keys, projection) = (self.keys.clone(), self.projection.clone());
        let stream = StreamName::new(&plan.stream).map_err(|e| {
            DataFusionError::External(Box::new(crate::Error::Invalid(e.to_string())))
        })?;
        // Read-your-writes: the offsets of `after` on the view's stream.
        let after = context
            .session_config()
            .get_extension::<ReadAfter>()
            .map(|r| ViewAfter {
                offsets: r
                    .offsets
                    .iter()
                    .filter(|((s, _), _)| *s == plan.stream)
                    .map(|((_, p), o)| (*p, *o))
                    .collect(),
                wait: r.wait,
            })
            .unwrap_or_default();
        let read = async move {
            let mode = if keys.is_some() { "lookup" } else { "scan" };
            let n = name.clone();
            let values = tokio::task::spawn_blocking(move || match keys {
                Some(keys) => source.view_get(&stream, &n, &keys, &after),
                None => source.view_groups(&stream, &n, &after),
            })
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))?
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
            metrics::counter!("strata_view_reads_total", "view" => name.clone(), "mode" => mode)
                .increment(1);
            metrics::counter!("strata_view_groups_read_total", "view" => name, "mode" => mode)
                .increment(values.len() as u64);
            let batch = plan
                .rows_of(values.iter().map(Vec::as_slice))
                .map_err(|e| DataFusionError::External(Box::new(e)))?;
            match projection {
                Some(p) => Ok(batch.project(&p)?),
                None => Ok(batch),
            }
        };
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.schema.clone(),
            futures::stream::once(read),
        )))
    }
}
