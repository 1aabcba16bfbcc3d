//! The error type of the binary package, and the one place errors become HTTP statuses.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// Errors of the strata binary: configuration, start-up, the crates it wires, and API input.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Configuration that cannot be used.
    #[error("configuration error: {0}")]
    Config(String),
    /// An I/O failure while starting or serving.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
    /// The write path refused or failed.
    #[error(transparent)]
    Ingest(#[from] strata_ingest::Error),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] strata_store::Error),
    /// SQL refused or failed.
    #[error(transparent)]
    Sql(#[from] strata_views::Error),
    /// The log or the catalog refused or failed.
    #[error(transparent)]
    Log(#[from] strata_proto::Error),
    /// A request parameter or body that does not make sense.
    #[error("{0}")]
    BadRequest(String),
    /// No such endpoint or resource.
    #[error("{0}")]
    NotFound(String),
    /// A request body over the configured limit.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// A read waited for a consistency token longer than it may.
    #[error("{0}")]
    Timeout(String),
    /// The request needs a role this node does not have (e.g. SQL on an ingest node).
    #[error("{0}")]
    WrongRole(String),
    /// No valid credentials (401).
    #[error("{0}")]
    Unauthorized(String),
    /// Valid credentials without the right to do this (403).
    #[error("{0}")]
    Forbidden(String),
    /// Too many requests at once (503 with `Retry-After`).
    #[error("{0}")]
    Busy(String),
    /// The node had to stop: a part of it can no longer work until it is started again.
    #[error("the node stopped: {0}")]
    Fatal(String),
    /// A CLI request to a server failed.
    #[error("{0}")]
    Client(String),
}

impl Error {
    /// Wraps an I/O error with what was being done.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            what: what.into(),
            source,
        }
    }

    /// The HTTP status this error answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            Error::Config(_) | Error::Io { .. } | Error::Client(_) | Error::Fatal(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            Error::BadRequest(_) => StatusCode::BAD_REQUEST,
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Error::WrongRole(_) => StatusCode::MISDIRECTED_REQUEST,
            Error::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
            Error::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Error::Forbidden(_) => StatusCode::FORBIDDEN,
            Error::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
            Error::Log(e) => log_status(e),
            Error::Ingest(e) => match e {
                strata_ingest::Error::Log(e) => log_status(e),
                strata_ingest::Error::TooManyEvents { .. }
                | strata_ingest::Error::EventTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
                strata_ingest::Error::BadEvent { .. } | strata_ingest::Error::EmptyBatch => {
                    StatusCode::BAD_REQUEST
                }
            },
            Error::Store(e) => store_status(e),
            Error::Sql(e) => match e {
                strata_views::Error::ReadOnly(_) | strata_views::Error::Invalid(_) => {
                    StatusCode::BAD_REQUEST
                }
                strata_views::Error::ResourcesExhausted(_) => StatusCode::UNPROCESSABLE_ENTITY,
                strata_views::Error::UnknownView(_) => StatusCode::NOT_FOUND,
                strata_views::Error::Forbidden(_) => StatusCode::FORBIDDEN,
                strata_views::Error::Conflict(_) => StatusCode::CONFLICT,
                strata_views::Error::Execution(_) => StatusCode::INTERNAL_SERVER_ERROR,
                strata_views::Error::Store(e) => store_status(e),
            },
        }
    }
}

fn store_status(e: &strata_store::Error) -> StatusCode {
    match e {
        strata_store::Error::Log(e) => log_status(e),
        strata_store::Error::ViewExists(_) => StatusCode::CONFLICT,
        strata_store::Error::UnknownView(_) => StatusCode::NOT_FOUND,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn log_status(e: &strata_proto::Error) -> StatusCode {
    use strata_proto::Error as E;
    match e {
        E::InvalidName { .. }
        | E::InvalidToken(_)
        | E::InvalidField { .. }
        | E::InvalidPartitions(_)
        | E::UnknownPartition { .. } => StatusCode::BAD_REQUEST,
        E::UnknownStream(_) => StatusCode::NOT_FOUND,
        E::PartitionMismatch { .. } | E::FieldConflict { .. } => StatusCode::CONFLICT,
        E::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        E::OffsetGone(_) => StatusCode::GONE,
        E::StorageFull(_) => StatusCode::INSUFFICIENT_STORAGE,
        E::Corrupt(_) | E::Io { .. } | E::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() && !matches!(self, Error::Busy(_)) {
            tracing::error!(status = status.as_u16(), error = %self, "request failed");
        }
        let mut response = (
            status,
            axum::Json(serde_json::json!({ "error": self.to_string() })),
        )
            .into_response();
        let headers = response.headers_mut();
        match self {
            Error::Unauthorized(_) => {
                headers.insert(
                    axum::http::header::WWW_AUTHENTICATE,
                    axum::http::HeaderValue::from_static("Bearer realm=\"strata\""),
                );
            }
            Error::Busy(_) => {
                headers.insert(
                    axum::http::header::RETRY_AFTER,
                    axum::http::HeaderValue::from_static("1"),
                );
            }
            _ => {}
        }
        response
    }
}

/// Result alias of this package.
pub type Result<T, E = Error> = std::result::Result<T, E>;
