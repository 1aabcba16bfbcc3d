//! `POST /v1/streams/{name}/events`: NDJSON (or a JSON array) in, answered once durable.

use super::{Shared, read_body};
use crate::auth::Principal;
use crate::service::Result;
use axum::Json;
use axum::body::Body;
use axum::extract::{Extension, Path, State};
use strata_ingest::AppendOutcome;

pub(super) async fn append(
    State(state): Shared,
    Extension(who): Extension<Principal>,
    Path(name): Path<String>,
    body: Body,
) -> Result<Json<AppendOutcome>> {
    let service = &state.services.append;
    let target = service.target(&who, &name)?;
    let body = read_body(body, service.max_body_bytes()).await?;
    Ok(Json(service.append(target, body).await?))
}
