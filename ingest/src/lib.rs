//! The write path of strata: decoding and validating appended events, choosing their partitions,
//! deduplicating retried ids, and the log backends events are appended to.
//!
//! [`EmbeddedLog`] is the default backend: per stream and partition, append-only segment files of
//! checksummed frames with group commit.

mod append;
pub mod decode;
pub mod embedded;
mod error;

pub use append::{AppendOutcome, Ingest, IngestConfig, PartitionAppend};
pub use embedded::{EmbeddedLog, EmbeddedLogConfig};
pub use error::{Error, Result};
