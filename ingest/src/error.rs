//! The error type of the ingest crate.

/// Errors of the write path.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The log (or the catalog it keeps) refused or failed.
    #[error(transparent)]
    Log(#[from] strata_proto::Error),
    /// One event of a batch is malformed; the whole batch is refused.
    #[error("{location}: {reason}")]
    BadEvent {
        /// `line N` for NDJSON, `element N` for a JSON array (1-based).
        location: String,
        /// What is wrong with it.
        reason: String,
    },
    /// One event of a batch is over the size limit; the whole batch is refused.
    #[error("{location}: the event is {size} bytes, over the limit of {max}")]
    EventTooLarge {
        /// `line N` or `element N` (1-based).
        location: String,
        /// Its size in bytes.
        size: usize,
        /// The configured limit.
        max: usize,
    },
    /// The body held no events.
    #[error("the request holds no events (send NDJSON, one event per line, or a JSON array)")]
    EmptyBatch,
    /// More events in one request than allowed.
    #[error("the batch holds {count} events, over the limit of {max} per request")]
    TooManyEvents {
        /// Events in the batch.
        count: usize,
        /// The configured limit.
        max: usize,
    },
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
