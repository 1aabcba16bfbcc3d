//! A physical optimizer rule that makes joins give the thread back: their output is wrapped in
//! DataFusion's `CooperativeExec`, which spends tokio's task budget per batch. A join can emit
//! far more batches than it reads (a cross join of four small streams emits billions of rows),
//! and an aggregate above it polls it in a loop that never returns while batches are ready, so
//! without this one such query holds a worker thread to the end: the node stops answering
//! anything else, and a cancel or a time limit cannot stop the query until it finishes.

use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::config::ConfigOptions;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::coop::CooperativeExec;
use std::sync::Arc;

/// Wraps the output of every join (and unnest) in a [`CooperativeExec`].
#[derive(Debug, Default)]
pub(crate) struct YieldAfterJoins;

impl PhysicalOptimizerRule for YieldAfterJoins {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            let name = node.name();
            if name.ends_with("JoinExec") || name == "UnnestExec" {
                Ok(Transformed::yes(
                    Arc::new(CooperativeExec::new(node)) as Arc<dyn ExecutionPlan>
                ))
            } else {
                Ok(Transformed::no(node))
            }
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "strata_yield_after_joins"
    }

    fn schema_check(&self) -> bool {
        true
    }
}
