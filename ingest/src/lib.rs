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

/// Runs blocking or CPU-bound `work` where it does not hold up the runtime's other tasks: on this
/// thread, which hands them to another worker meanwhile (`tokio::task::block_in_place`), on a
/// multi-threaded runtime — sparing the caller a trip to the blocking pool and back — and on the
/// blocking pool otherwise (on a current-thread runtime `block_in_place` would panic).
///
/// # Errors
/// The blocking pool's task failed (it panicked or the runtime is shutting down).
pub async fn off_the_runtime<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> std::result::Result<T, tokio::task::JoinError> {
    let multi_threaded = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if multi_threaded {
        return Ok(tokio::task::block_in_place(work));
    }
    tokio::task::spawn_blocking(work).await
}
