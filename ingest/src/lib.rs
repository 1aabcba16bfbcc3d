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

/// Whether blocking work may run in place on this thread (`tokio::task::block_in_place`, which
/// hands the runtime's other tasks to another worker meanwhile): on a multi-threaded runtime. On
/// a current-thread runtime it would panic, and such work goes to the blocking pool instead.
pub fn can_block_in_place() -> bool {
    tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
}
