//! `GET /v1/streams/{name}/events`: replay as NDJSON, or with `follow=true` a subscription
//! (NDJSON or Server-Sent Events, see [`super::follow`]).

use super::{Shared, follow, streamed};
use crate::auth::Principal;
use crate::service::{Error, FollowRequest, ReplayRequest, Result, Source, Start};
use axum::extract::{Extension, Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use std::collections::HashMap;
use std::time::Duration;
use strata_ingest::decode::parse_rfc3339;
use tokio_stream::wrappers::ReceiverStream;

const KNOWN: [&str; 6] = ["partition", "from", "from_time", "key", "limit", "source"];
/// What only a subscription (`follow=true`) takes.
const FOLLOW_ONLY: [&str; 4] = ["cursor", "type", "where", "heartbeat_ms"];

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
        if FOLLOW_ONLY.contains(&unknown.as_str()) {
            return Err(Error::BadRequest(format!(
                "`{unknown}` is a parameter of subscriptions; add follow=true"
            )));
        }
        return Err(Error::BadRequest(format!(
            "unknown parameter `{unknown}`; use partition, from, from_time, key, limit and source (and follow=true for a subscription)"
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
    let from_time = from_time(params)?;
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

/// `from_time` as epoch milliseconds or RFC 3339.
fn from_time(params: &HashMap<String, String>) -> Result<Option<i64>> {
    params
        .get("from_time")
        .map(|t| match t.parse::<i64>() {
            Ok(ms) => Ok(ms),
            Err(_) => parse_rfc3339(t)
                .map_err(|e| Error::BadRequest(e.replacen("`time`", "`from_time`", 1))),
        })
        .transpose()
}

/// The subscription the query parameters ask for; a `Last-Event-ID` (an SSE client resuming)
/// is the cursor, whatever else says where to start.
fn follow_request(
    stream: String,
    params: &HashMap<String, String>,
    last_event_id: Option<&str>,
) -> Result<FollowRequest> {
    const ALLOWED: [&str; 10] = [
        "follow",
        "partition",
        "from",
        "from_time",
        "key",
        "cursor",
        "type",
        "where",
        "heartbeat_ms",
        "source",
    ];
    if let Some(unknown) = params.keys().find(|k| !ALLOWED.contains(&k.as_str())) {
        return Err(Error::BadRequest(format!(
            "`{unknown}` is not a parameter of subscriptions; use partition, from (an offset or `end`), from_time, cursor, key, type, where and heartbeat_ms"
        )));
    }
    if params.get("source").is_some_and(|s| s != "store") {
        return Err(Error::BadRequest(
            "subscriptions read the shards (`source=store`); follow=true cannot read the log"
                .into(),
        ));
    }
    let starts = ["from", "from_time", "cursor"]
        .iter()
        .filter(|p| params.contains_key(**p))
        .count();
    if starts > 1 {
        return Err(Error::BadRequest(
            "give one of `from`, `from_time` and `cursor`: each says where to start".into(),
        ));
    }
    let start = match (last_event_id, params.get("cursor"), params.get("from")) {
        (Some(id), _, _) => Start::Cursor(id.to_owned()),
        (None, Some(c), _) => Start::Cursor(c.clone()),
        (None, None, Some(f)) if f == "end" => Start::End,
        (None, None, Some(_)) => Start::Offset(
            param(params, "from", "an offset (a whole number ≥ 0) or `end`")?.unwrap_or(0),
        ),
        (None, None, None) => match from_time(params)? {
            Some(t) => Start::Time(t),
            None => Start::Beginning,
        },
    };
    Ok(FollowRequest {
        stream,
        partition: param(params, "partition", "a partition number")?,
        key: params.get("key").cloned(),
        start,
        event_type: params.get("type").cloned(),
        filter: params.get("where").cloned(),
        heartbeat: heartbeat(params)?,
    })
}

/// Refuses a parameter not in `allowed`, with `hint` saying what to use.
pub(super) fn only(params: &HashMap<String, String>, allowed: &[&str], hint: &str) -> Result<()> {
    match params.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(unknown) => Err(Error::BadRequest(format!(
            "unknown parameter `{unknown}`; {hint}"
        ))),
        None => Ok(()),
    }
}

/// `heartbeat_ms` of a subscription (default and at most 10 s).
pub(super) fn heartbeat(params: &HashMap<String, String>) -> Result<Duration> {
    let heartbeat_ms: u64 =
        param(params, "heartbeat_ms", "milliseconds (100 to 10000)")?.unwrap_or(10_000);
    if !(100..=10_000).contains(&heartbeat_ms) {
        return Err(Error::BadRequest(format!(
            "`heartbeat_ms` must be between 100 and 10000, got {heartbeat_ms}"
        )));
    }
    Ok(Duration::from_millis(heartbeat_ms))
}

pub(super) async fn replay(
    State(state): Shared,
    Extension(who): Extension<Principal>,
    Path(name): Path<String>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response> {
    match params.get("follow").map(String::as_str) {
        None | Some("false") => {}
        Some("true") => {
            let last_event_id = headers
                .get("last-event-id")
                .map(|v| {
                    v.to_str()
                        .map_err(|_| Error::BadRequest("`Last-Event-ID` is not a cursor".into()))
                })
                .transpose()?;
            let request = follow_request(name, &params, last_event_id)?;
            let framing = follow::Framing::from_accept(&headers);
            let deliveries = state.services.subscribe.follow(&who, request).await?;
            return Ok(follow::respond(framing, deliveries));
        }
        Some(other) => {
            return Err(Error::BadRequest(format!(
                "`follow` must be true or false, got {other:?}"
            )));
        }
    }
    let mut params = params;
    params.remove("follow");
    let request = request(name, &params)?;
    let chunks = state.services.replay.replay(&who, request).await?;
    Ok(streamed(
        "application/x-ndjson",
        ReceiverStream::new(chunks),
    ))
}
