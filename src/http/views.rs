//! `GET /v1/views` and `POST /v1/views/{name}/rebuild`.

use super::{Shared, ndjson_line, streamed};
use crate::auth::Principal;
use crate::service::Result;
use axum::Json;
use axum::extract::{Extension, Path, State};
use axum::response::Response;
use futures::StreamExt;
use strata_views::ViewListing;

pub(super) async fn list(
    State(state): Shared,
    Extension(who): Extension<Principal>,
) -> Result<Json<Vec<ViewListing>>> {
    Ok(Json(state.services.views.list(&who).await?))
}

/// Rebuilds a view, answering NDJSON: a progress line every 250 ms (`done`, `total`,
/// `elapsed_ms`), then the final line (`finished: true`, `rows`) or `{"error": …}`. Refusals
/// (unknown view, a rebuild running) answer with their status instead.
pub(super) async fn rebuild(
    State(state): Shared,
    Extension(who): Extension<Principal>,
    Path(name): Path<String>,
) -> Result<Response> {
    let events = state.services.views.rebuild(&who, &name)?;
    Ok(streamed(
        "application/x-ndjson",
        events.map(|event| Ok(ndjson_line(&event))),
    ))
}
