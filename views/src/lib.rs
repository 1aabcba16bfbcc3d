//! strata's SQL layer: every stream is a DataFusion table over its store shards.
//!
//! [`SqlEngine`] answers read-only SQL. Each stream is a table with columns `partition, offset,
//! time, key, id, type, data`; [`StreamTable`] scans one DataFusion partition per shard and pushes
//! projection and filters on `partition`, `offset`, `time` and `key` down into the shard scans.
//! JSON functions (datafusion-functions-json) reach into `data`.

mod engine;
mod error;
mod filters;
mod manage;
pub mod materialized;
mod source;
mod table;
mod view_table;

pub use engine::{Access, QueryOutput, SqlEngine};
pub use error::{Error, Result};
pub use filters::ScanBounds;
pub use manage::{Rebuild, RebuildProgress, ViewListing, ViewPartitionLag};
pub use materialized::ViewPlan;
pub use source::{Batches, ShardSource};
pub use table::{StreamScanExec, StreamTable};
pub use view_table::{ViewScanExec, ViewTable};

#[cfg(test)]
mod materialized_tests;
#[cfg(test)]
mod store_tests;
#[cfg(test)]
mod tests;
