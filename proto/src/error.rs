//! The error type of the proto crate and of the [`crate::Log`] contract.

/// Errors of the shared types and of any [`crate::Log`] backend.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A stream name that does not match `[a-z][a-z0-9_]{0,62}`.
    #[error("invalid stream name {name:?}: {reason}")]
    InvalidName {
        /// The name as given.
        name: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// A declared field that cannot be used as given.
    #[error("invalid field {name:?}: {reason}")]
    InvalidField {
        /// The field's name as given.
        name: String,
        /// Why it was refused.
        reason: String,
    },
    /// A field declared again with another type.
    #[error(
        "field {name:?} is already declared as {existing}; a field's type cannot change (asked for {requested})"
    )]
    FieldConflict {
        /// The field.
        name: String,
        /// Its declared type.
        existing: crate::FieldType,
        /// The type asked for.
        requested: crate::FieldType,
    },
    /// A partition count outside the allowed range.
    #[error("invalid partition count {0}: must be between 1 and {max}", max = crate::StreamInfo::MAX_PARTITIONS)]
    InvalidPartitions(u32),
    /// An expected-version condition that cannot be used as given.
    #[error("invalid condition: {0}")]
    InvalidCondition(String),
    /// A consistency token that does not parse.
    #[error("invalid consistency token {0}")]
    InvalidToken(String),
    /// The stream does not exist.
    #[error("stream {0:?} does not exist")]
    UnknownStream(String),
    /// The stream exists with another partition count than asked for.
    #[error("stream {name:?} already exists with {existing} partitions (asked for {requested})")]
    PartitionMismatch {
        /// The stream.
        name: String,
        /// Its partition count.
        existing: u32,
        /// The count that was asked for.
        requested: u32,
    },
    /// A partition number past the stream's partition count.
    #[error("stream {stream:?} has {partitions} partitions; partition {partition} does not exist")]
    UnknownPartition {
        /// The stream.
        stream: String,
        /// The partition asked for.
        partition: u32,
        /// How many partitions the stream has.
        partitions: u32,
    },
    /// Bytes that do not decode as a record (wrong checksum, truncated, bad field).
    #[error("corrupt record data: {0}")]
    Corrupt(String),
    /// The offset asked for is no longer in the log (deleted by retention).
    #[error("{0}")]
    OffsetGone(String),
    /// The log cannot take writes right now (disk failure, brokers unreachable, shutting down).
    #[error("log unavailable: {0}")]
    Unavailable(String),
    /// The log has no space left for the write.
    #[error("log storage is full: {0}; nothing of this request was written: free space and retry")]
    StorageFull(String),
    /// A store backing an [`crate::IdLookup`] failed.
    #[error("store lookup failed: {0}")]
    Store(String),
    /// Any other I/O failure of a log backend, with where it happened.
    #[error("log i/o error at {location}: {source}")]
    Io {
        /// The file or object that failed.
        location: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// Wraps an I/O error with the place it happened, telling a full disk apart from other failures.
    pub fn io(location: impl Into<String>, source: std::io::Error) -> Self {
        let location = location.into();
        if source.kind() == std::io::ErrorKind::StorageFull {
            Error::StorageFull(format!("{location}: {source}"))
        } else {
            Error::Io { location, source }
        }
    }
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
