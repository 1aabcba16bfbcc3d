//! `GET /v1/streams/{name}/events`: replay as NDJSON.

use super::{Shared, streamed};
use crate::auth::Principal;
use crate::service::{Error, ReplayRequest, Result, Source};
use axum::extract::{Extension, Path, Query, State};
use axum::response::Response;
use std::collections::HashMap;
use strata_ingest::decode::parse_rfc3339;
use tokio_stream::wrappers::ReceiverStream;

const KNOWN: [&str; 6] = ["partition", "from", "from_time", "key", "limit", "source"];

fn param<T: std::str::FromStr>(
    params: &HashMap<String, String>,
    name: &str,
    what: &str,
) -> Result<Option<T>> {
    params
        .get(name)
        .map(|v| {
            v.parse::<T>()
                .map_err(|_| Error::BadRequest(format!("`{name}` must be {what}, got {v:?}")))
        })
        .transpose()
}

/// The replay the query parameters ask for.
fn request(stream: String, params: &HashMap<String, String>) -> Result<ReplayRequest> {
    if let Some(unknown) = params.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(Error::BadRequest(format!(
            "unknown parameter `{unknown}`; use partition, from, from_time, key, limit and source"
        )));
    }
    let source = match params.get("source").map(String::as_str) {
        None | Some("store") => Source::Store,
        Some("log") => Source::Log,
        Some(other) => {
            return Err(Error::BadRequest(format!(
                "`source` must be `store` (the shards, the default) or `log`, got {other:?}"
            )));
        }
    };
    let from_time = match params.get("from_time") {
        Some(t) => Some(match t.parse::<i64>() {
            Ok(ms) => ms,
            Err(_) => parse_rfc3339(t)
                .map_err(|e| Error::BadRequest(e.replacen("`time`", "`from_time`", 1)))?,
        }),
        None => None,
    };
    Ok(ReplayRequest {
        stream,
        partition: param(params, "partition", "a partition number")?,
        from: param(params, "from", "an offset (a whole number ≥ 0)")?,
        from_time,
        key: params.get("key").cloned(),
        limit: param(params, "limit", "a whole number ≥ 0")?,
        source,
    })
}

pub(super) async fn replay(
    State(state): Shared,
    Extension(who): Extension<Principal>,
    Path(name): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response> {
    let request = request(name, &params)?;
    let chunks = state.services.replay.replay(&who, request).await?;
    Ok(streamed(
        "application/x-ndjson",
        ReceiverStream::new(chunks),
    ))
}
