//! The error type of the views crate.

use datafusion::error::DataFusionError;

/// Errors of the SQL layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A statement that would change state or touch server files.
    #[error("strata SQL is read-only: {0}")]
    ReadOnly(String),
    /// SQL that does not plan: wrong types, unknown functions, unsupported constructs.
    #[error("{0}")]
    Invalid(String),
    /// SQL that does not parse.
    #[error("{0}")]
    Syntax(String),
    /// SQL naming a table (stream or view) that does not exist.
    #[error("{0}")]
    UnknownTable(String),
    /// SQL naming a column that does not exist.
    #[error("{0}")]
    UnknownColumn(String),
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
            D::SQL(..) => Error::Syntax(text),
            D::Plan(m) if m.starts_with("table '") && m.ends_with("' not found") => {
                Error::UnknownTable(text)
            }
            D::SchemaError(e, _)
                if matches!(**e, datafusion::common::SchemaError::FieldNotFound { .. }) =>
            {
                Error::UnknownColumn(text)
            }
            D::Plan(_) | D::SchemaError(..) | D::NotImplemented(_) | D::Execution(_) => {
                Error::Invalid(text)
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The finer kinds rest on DataFusion's errors and texts: this fails if an upgrade moves them.
    #[tokio::test]
    async fn syntax_unknown_tables_and_columns_are_told_apart() {
        let ctx = datafusion::prelude::SessionContext::new();
        let kind = |sql: &'static str| {
            let ctx = ctx.clone();
            async move { Error::from(ctx.sql(sql).await.unwrap_err()) }
        };
        assert!(matches!(kind("SELEC 1").await, Error::Syntax(_)));
        assert!(
            matches!(kind("SELECT * FROM nowhere").await, Error::UnknownTable(m) if m.contains("nowhere"))
        );
        assert!(matches!(
            kind("SELECT nothing FROM (SELECT 1 AS a)").await,
            Error::UnknownColumn(_)
        ));
        assert!(matches!(
            kind("SELECT 1 + 'a'::int + foo(1)").await,
            Error::Invalid(_)
        ));
    }
}
