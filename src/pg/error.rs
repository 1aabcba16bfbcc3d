//! The one place service errors become PostgreSQL errors: the SQLSTATE of each kind, and the
//! same message as over HTTP.

use crate::service::{Error, Kind};
use pgwire::error::{ErrorInfo, PgWireError};

/// The SQLSTATE of an error of `kind`.
pub fn sqlstate(kind: Kind) -> &'static str {
    match kind {
        Kind::Syntax => "42601",
        Kind::UnknownTable => "42P01",
        Kind::UnknownColumn => "42703",
        Kind::Invalid => "22023",
        Kind::ReadOnly => "25006",
        Kind::NotFound => "42704",
        Kind::Conflict => "42710",
        Kind::TooLarge => "54000",
        Kind::Timeout | Kind::TimeLimit => "57014",
        Kind::WrongRole => "0A000",
        Kind::Unauthenticated => "28000",
        Kind::Forbidden => "42501",
        Kind::Busy => "53300",
        Kind::Unavailable => "57P03",
        Kind::Gone => "22023",
        Kind::StorageFull => "53100",
        Kind::ResourcesExhausted => "53200",
        Kind::Internal => "XX000",
    }
}

/// The PostgreSQL error of a service error.
pub fn info(e: &Error) -> ErrorInfo {
    let kind = e.kind();
    if kind == Kind::Internal {
        tracing::error!(error = %e, "PostgreSQL request failed");
    }
    ErrorInfo::new("ERROR".into(), sqlstate(kind).into(), e.to_string())
}

/// [`info`] as pgwire's error.
pub fn wire(e: &Error) -> PgWireError {
    PgWireError::UserError(Box::new(info(e)))
}

/// A query stopped by a cancel request.
pub fn canceled() -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "ERROR".into(),
        "57014".into(),
        "canceling statement due to user request".into(),
    )))
}

/// A protocol-level refusal with its own SQLSTATE.
pub fn other(code: &str, message: String) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "ERROR".into(),
        code.into(),
        message,
    )))
}

/// The answer of a statement that failed within a query string: its error as a response (the
/// statements before it keep theirs); errors that are not a statement's end the connection.
///
/// # Errors
/// `e` itself when it is not a statement's error.
pub fn failed_statement(e: PgWireError) -> Result<pgwire::api::results::Response, PgWireError> {
    match e {
        PgWireError::UserError(info) => Ok(pgwire::api::results::Response::Error(info)),
        other => Err(other),
    }
}
