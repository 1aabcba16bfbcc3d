//! The table provider of a materialized view: reads the view's stored groups, never the events.

use crate::materialized::ViewPlan;
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::ScalarValue;
use datafusion::datasource::TableType;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::{BinaryExpr, Expr, Operator, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use std::collections::HashMap;
use std::sync::Arc;
use strata_store::Store;

/// A materialized view as a SQL table. Equality filters on every group column of the view
/// (`country = 'NL'`, `country IN ('NL', 'DE')`) become point reads of those groups; anything else
/// reads the view's groups in full. Filters stay applied by DataFusion after the read.
pub struct ViewTable {
    store: Arc<Store>,
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
    pub fn new(store: Arc<Store>, name: String, plan: Arc<ViewPlan>) -> Self {
        Self { store, name, plan }
    }

    /// The literal values `expr` allows for an output column: `col = v`, `v = col` or
    /// `col IN (v, …)`.
    fn equalities(&self, expr: &Expr) -> Option<(usize, Vec<ScalarValue>)> {
        let schema = self.plan.schema();
        let column = |e: &Expr| match e {
            Expr::Column(c) => schema.index_of(&c.name).ok(),
            _ => None,
        };
        let literal = |e: &Expr| match e {
            Expr::Literal(v, _) => Some(v.clone()),
            _ => None,
        };
        match expr {
            Expr::BinaryExpr(BinaryExpr {
                left,
                op: Operator::Eq,
                right,
            }) => match (column(left), literal(right), column(right), literal(left)) {
                (Some(c), Some(v), _, _) | (_, _, Some(c), Some(v)) => Some((c, vec![v])),
                _ => None,
            },
            Expr::InList(list) if !list.negated && list.list.len() <= 1000 => {
                let c = column(&list.expr)?;
                let values = list.list.iter().map(literal).collect::<Option<Vec<_>>>()?;
                Some((c, values))
            }
            _ => None,
        }
    }

    /// The stored keys the filters pin down, when they pin every group column.
    fn lookup_keys(&self, filters: &[Expr]) -> Option<Vec<Vec<u8>>> {
        let key_columns = self.plan.key_columns();
        if key_columns.is_empty() {
            return None;
        }
        let mut allowed: HashMap<usize, Vec<ScalarValue>> = HashMap::new();
        for f in filters {
            if let Some((c, values)) = self.equalities(f) {
                allowed.entry(c).or_insert(values);
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
        combos.iter().map(|c| self.plan.lookup_key(c)).collect()
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
        Ok(filters
            .iter()
            .map(|f| {
                if self.equalities(f).is_some() {
                    TableProviderFilterPushDown::Inexact
                } else {
                    TableProviderFilterPushDown::Unsupported
                }
            })
            .collect())
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let keys = self.lookup_keys(filters);
        let (store, name) = (self.store.clone(), self.name.clone());
        let mode = if keys.is_some() { "lookup" } else { "scan" };
        let values = tokio::task::spawn_blocking(move || match keys {
            Some(keys) => store.view_get(&name, &keys),
            None => Ok(store
                .view_groups(&name)?
                .into_iter()
                .map(|(_, v)| v)
                .collect()),
        })
        .await
        .map_err(|e| DataFusionError::External(Box::new(e)))?
        .map_err(|e| DataFusionError::External(Box::new(e)))?;
        metrics::counter!("strata_view_reads_total", "view" => self.name.clone(), "mode" => mode)
            .increment(1);
        metrics::counter!("strata_view_groups_read_total", "view" => self.name.clone(), "mode" => mode)
            .increment(values.len() as u64);
        let batch = self
            .plan
            .rows_of(values.iter().map(Vec::as_slice))
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        let exec: Arc<dyn ExecutionPlan> = MemorySourceConfig::try_new_exec(
            &[vec![batch]],
            self.plan.schema(),
            projection.cloned(),
        )?;
        Ok(exec)
    }
}
