//! strata's SQL layer: every stream is a DataFusion table over its store shards.
//!
//! [`SqlEngine`] answers read-only SQL. Each stream is a table with columns `partition, offset,
//! time, key, id, type, data`; [`StreamTable`] scans one DataFusion partition per shard and pushes
//! projection and filters on `partition`, `offset`, `time` and `key` down into the shard scans.
//! JSON functions (datafusion-functions-json) reach into `data`.

/// The [`ExecutionPlan`](datafusion::physical_plan::ExecutionPlan) methods of a plan that reads
/// storage and has no children or expressions of its own (the table scans).
macro_rules! leaf_plan {
    () => {
        fn children(&self) -> Vec<&std::sync::Arc<dyn datafusion::physical_plan::ExecutionPlan>> {
            vec![]
        }

        fn apply_expressions(
            &self,
            _f: &mut dyn FnMut(
                &std::sync::Arc<dyn datafusion::physical_expr::PhysicalExpr>,
            ) -> datafusion::error::Result<
                datafusion::common::tree_node::TreeNodeRecursion,
            >,
        ) -> datafusion::error::Result<datafusion::common::tree_node::TreeNodeRecursion> {
            Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
        }

        fn replace_children(
            self: std::sync::Arc<Self>,
            _children: Vec<std::sync::Arc<dyn datafusion::physical_plan::ExecutionPlan>>,
            _options: datafusion::physical_plan::ReplaceChildrenOptions,
        ) -> datafusion::error::Result<std::sync::Arc<dyn datafusion::physical_plan::ExecutionPlan>>
        {
            Ok(self)
        }

        fn with_new_children(
            self: std::sync::Arc<Self>,
            _children: Vec<std::sync::Arc<dyn datafusion::physical_plan::ExecutionPlan>>,
        ) -> datafusion::error::Result<std::sync::Arc<dyn datafusion::physical_plan::ExecutionPlan>>
        {
            Ok(self)
        }
    };
}

mod browse;
mod capped;
mod capped_agg;
mod engine;
mod error;
mod event_filter;
mod filters;
mod grouped_scan;
mod listing;
mod manage;
pub mod materialized;
mod pg_array;
mod pg_columns;
mod pg_functions;
mod pg_json;
mod pg_listing;
mod pg_procs;
mod pg_rewrite;
mod pg_viewdef;
mod placeholders;
mod plan_cache;
mod postgres;
mod sandbox;
mod shared;
mod source;
mod table;
mod view_table;
mod yielding;

pub use browse::{TableInfo, number_placeholders};
pub use engine::{
    Access, Described, EngineParts, ExplainHook, Flavor, Query, QueryOutput, SqlEngine, StateHook,
    runtime_env,
};
pub use error::{Error, Result};
pub use event_filter::{EventFilter, MAX_FILTER_BYTES};
pub use filters::ScanBounds;
pub use listing::{ViewListing, ViewPartitionLag};
pub use manage::{Rebuild, RebuildEvent, RebuildProgress};
pub use materialized::ViewPlan;
pub use postgres::{
    CopyFormat, PgStatement, SERVER_VERSION, default_setting, parse_postgres, version_string,
};
pub use source::{Batches, ShardSource, ViewAfter, ViewProgress, wait_stored};
pub use table::{ReadAfter, ScanSpec, StreamScanExec, StreamTable};
pub use view_table::{ViewScanExec, ViewTable};

#[cfg(test)]
mod materialized_tests;
#[cfg(test)]
mod store_tests;
#[cfg(test)]
mod tests;
