//! The one place service errors become HTTP statuses.

use crate::service::{Error, Kind};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// The HTTP status of an error of `kind`.
pub fn status(kind: Kind) -> StatusCode {
    match kind {
        Kind::Invalid
        | Kind::Syntax
        | Kind::UnknownTable
        | Kind::UnknownColumn
        | Kind::ReadOnly => StatusCode::BAD_REQUEST,
        Kind::NotFound => StatusCode::NOT_FOUND,
        Kind::Conflict => StatusCode::CONFLICT,
        Kind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        Kind::Timeout => StatusCode::REQUEST_TIMEOUT,
        Kind::WrongRole => StatusCode::MISDIRECTED_REQUEST,
        Kind::Unauthenticated => StatusCode::UNAUTHORIZED,
        Kind::Forbidden => StatusCode::FORBIDDEN,
        Kind::Busy | Kind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Kind::Gone => StatusCode::GONE,
        Kind::StorageFull => StatusCode::INSUFFICIENT_STORAGE,
        Kind::ResourcesExhausted | Kind::TimeLimit => StatusCode::UNPROCESSABLE_ENTITY,
        Kind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// `{"error": "…"}` with the error's status; 401 adds a `WWW-Authenticate` challenge, and a busy
/// server `Retry-After`.
impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let kind = self.kind();
        let status = status(kind);
        if status.is_server_error() && kind != Kind::Busy {
            tracing::error!(status = status.as_u16(), error = %self, "request failed");
        }
        let body = match &self {
            Error::VersionConflict { keys, .. } => {
                serde_json::json!({ "error": self.to_string(), "keys": keys })
            }
            _ => serde_json::json!({ "error": self.to_string() }),
        };
        let mut response = (status, axum::Json(body)).into_response();
        let headers = response.headers_mut();
        match kind {
            Kind::Unauthenticated => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"strata\""),
                );
            }
            Kind::Busy => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        response
    }
}
