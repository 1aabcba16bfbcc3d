//! `GET /v1/views`, `POST /v1/views/{name}/rebuild` and `GET /v1/views/{name}/changes`.

use super::{Shared, ndjson_line, streamed};
use crate::auth::Principal;
use crate::service::{Error, Result};
use axum::Json;
use axum::extract::{Extension, Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use futures::StreamExt;
use std::collections::HashMap;
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

/// Follows a view (`follow=true`): its rows, then each row that changes, with the cursor;
/// NDJSON, or Server-Sent Events when asked.
pub(super) async fn changes(
    State(state): Shared,
    Extension(who): Extension<Principal>,
    Path(name): Path<String>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response> {
    super::replay::only(
        &params,
        &["follow", "heartbeat_ms"],
        "use follow=true and heartbeat_ms",
    )?;
    if params.get("follow").map(String::as_str) != Some("true") {
        return Err(Error::BadRequest(
            "a view's changes are followed: add follow=true (its rows now are `SELECT * FROM` the view)".into(),
        ));
    }
    let heartbeat = super::replay::heartbeat(&params)?;
    let framing = super::follow::Framing::from_accept(&headers);
    let deliveries = state
        .services
        .view_changes
        .follow(&who, &name, heartbeat)
        .await?;
    Ok(super::follow::respond_view(framing, deliveries))
}
