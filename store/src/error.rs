//! The error type of the store crate.

/// Errors of store nodes.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The fjall database failed.
    #[error("store i/o error: {0}")]
    Storage(#[from] fjall::Error),
    /// Encoding or decoding a columnar block failed.
    #[error("store block error: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    /// The log (or its catalog) failed or refused.
    #[error(transparent)]
    Log(#[from] strata_proto::Error),
    /// Stored bytes that do not decode, with where they are.
    #[error("corrupt shard data at {location}: {reason}")]
    Corrupt {
        /// Shard and key.
        location: String,
        /// What is wrong.
        reason: String,
    },
    /// A view or stream of that name exists.
    #[error("a view named {0} exists already")]
    ViewExists(String),
    /// No view of that name.
    #[error("no view named {0}")]
    UnknownView(String),
    /// A view's maintenance failed.
    #[error("view maintenance failed: {0}")]
    View(String),
    /// A blocking task of the store did not finish.
    #[error("store task failed: {0}")]
    Task(String),
}

impl From<Error> for strata_proto::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Log(e) => e,
            other => strata_proto::Error::Store(other.to_string()),
        }
    }
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
