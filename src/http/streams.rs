//! `GET /v1/streams`, `GET /v1/streams/{name}`, `PUT /v1/streams/{name}`.

use super::{Shared, read_body};
use crate::auth::Principal;
use crate::service::{CreateStream, Error, Result, StreamView};
use axum::Json;
use axum::body::Body;
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

pub(super) async fn list(
    State(state): Shared,
    Extension(who): Extension<Principal>,
) -> Result<Json<Vec<StreamView>>> {
    Ok(Json(state.services.streams.list(&who).await?))
}

pub(super) async fn get(
    State(state): Shared,
    Extension(who): Extension<Principal>,
    Path(name): Path<String>,
) -> Result<Json<StreamView>> {
    Ok(Json(state.services.streams.get(&who, &name).await?))
}

/// Creates a stream, or declares more fields on an existing one: 201 created, 200 existed.
pub(super) async fn put(
    State(state): Shared,
    Extension(who): Extension<Principal>,
    Path(name): Path<String>,
    body: Body,
) -> Result<Response> {
    let body = read_body(body, 1 << 20).await?;
    let request: CreateStream = if body.iter().all(u8::is_ascii_whitespace) {
        CreateStream::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            Error::BadRequest(format!(
                "expected {{\"partitions\": N, \"fields\": [{{\"name\": \"amount\", \"type\": \"double\"}}]}} \
                 (types: string, long, double, boolean, timestamp): {e}"
            ))
        })?
    };
    let created = state.services.streams.create(&who, &name, request).await?;
    let status = if created.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(created)).into_response())
}
