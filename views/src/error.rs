//! The error type of the views crate.

use datafusion::error::DataFusionError;

/// Errors of the SQL layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A statement that would change state or touch server files.
    #[error("strata SQL is read-only: {0}")]
    ReadOnly(String),
    /// SQL that does not parse or plan: bad syntax, unknown table or column, wrong types.
    #[error("{0}")]
    Invalid(String),
    /// The query needed more memory or time than allowed.
    #[error("query over its resource limit: {0}")]
    ResourcesExhausted(String),
    /// The query failed while running for a reason not in the SQL (storage, internal).
    #[error("query failed: {0}")]
    Execution(String),
    /// The caller may not do this (a statement needing `admin`, a stream it has no grant for).
    #[error("{0}")]
    Forbidden(String),
    /// Stored view state that does not decode.
    #[error("corrupt view state: {0}")]
    Corrupt(String),
    /// The request conflicts with the state (a name taken, a rebuild running).
    #[error("{0}")]
    Conflict(String),
    /// A partition's holder cannot be reached, or the partition moved while the query ran: retry.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// A read waited longer than allowed for offsets to be stored.
    #[error("timeout: {0}")]
    Timeout(String),
    /// This node has no part that the statement needs (view DDL on a node without a store).
    #[error("{0}")]
    WrongRole(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] strata_store::Error),
}

impl From<DataFusionError> for Error {
    fn from(e: DataFusionError) -> Self {
        use DataFusionError as D;
        use arrow::error::ArrowError as A;
        let root = e.find_root();
        let text = root.strip_backtrace();
        match root {
            D::SQL(..)
            | D::Plan(_)
            | D::SchemaError(..)
            | D::NotImplemented(_)
            | D::Execution(_) => Error::Invalid(text),
            D::ArrowError(a, _)
                if matches!(
                    **a,
                    A::CastError(_)
                        | A::ParseError(_)
                        | A::DivideByZero
                        | A::ArithmeticOverflow(_)
                        | A::InvalidArgumentError(_)
                ) =>
            {
                Error::Invalid(text)
            }
            D::ResourcesExhausted(_) => Error::ResourcesExhausted(text),
            // Raised by a scan, here or on another node (where only the text crosses the wire).
            D::External(inner) => {
                let inner = inner.to_string();
                if let Some(m) = inner.strip_prefix("unavailable: ") {
                    Error::Unavailable(m.to_owned())
                } else if let Some(m) = inner.strip_prefix("timeout: ") {
                    Error::Timeout(m.to_owned())
                } else {
                    Error::Execution(text)
                }
            }
            _ => Error::Execution(text),
        }
    }
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<arrow::error::ArrowError> for Error {
    fn from(e: arrow::error::ArrowError) -> Self {
        DataFusionError::from(e).into()
    }
}
