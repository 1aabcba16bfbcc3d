//! The write path of strata: decoding and validating appended events, choosing their partitions,
//! deduplicating retried ids, and the log backends events are appended to.
//!
//! [`EmbeddedLog`] is the default backend: per stream and partition, append-only segment files of
//! checksummed frames with group commit. [`KafkaLog`] puts streams in Kafka topics for deployments
//! that span machines; [`StoreGroup`] makes store nodes a consumer group over them.

mod append;
pub mod columnar;
pub mod decode;
pub mod embedded;
mod error;
#[cfg(test)]
mod fuzz;
pub mod kafka;
mod pending;

pub use append::{AppendOutcome, Ingest, IngestConfig, PartitionAppend};
pub use embedded::{EmbeddedLog, EmbeddedLogConfig};
pub use error::{Error, Result};
pub use kafka::{KafkaConfig, KafkaLog, NonJson, RetentionGap, RetentionGapInfo, StoreGroup};
