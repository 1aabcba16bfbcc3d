//! `POST /v1/streams/{name}/events`: NDJSON (or a JSON array), or an Arrow IPC stream
//! (`Content-Type: application/vnd.apache.arrow.stream`), in; answered once durable.

use super::{Shared, read_body};
use crate::auth::Principal;
use crate::service::BodyFormat;
use crate::service::Result;
use axum::Json;
use axum::body::Body;
use axum::extract::{Extension, Path, State};
use strata_ingest::AppendOutcome;

pub(super) async fn append(
    State(state): Shared,
    Extension(who): Extension<Principal>,
    Path(name): Path<String>,
    headers: axum::http::HeaderMap,
    body: Body,
) -> Result<Json<AppendOutcome>> {
    let service = &state.services.append;
    let target = service.target(&who, &name)?;
    let format = BodyFormat::from_content_type(
        headers
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok()),
    );
    let body = read_body(body, service.max_body_bytes()).await?;
    Ok(Json(service.append(target, body, format).await?))
}
