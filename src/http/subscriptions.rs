//! Named durable subscriptions: `GET /v1/subscriptions`, `PUT`/`DELETE
//! /v1/subscriptions/{name}`, `GET /v1/subscriptions/{name}/events` (delivery, framed as a
//! subscription, see [`super::follow`]) and `POST /v1/subscriptions/{name}/ack`.

use super::{Shared, follow, read_body};
use crate::auth::Principal;
use crate::service::{CreateSubscription, Error, Result, SubscriptionView};
use axum::Json;
use axum::body::Body;
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use std::collections::HashMap;

pub(super) async fn list(
    State(state): Shared,
    Extension(who): Extension<Principal>,
) -> Json<Vec<SubscriptionView>> {
    Json(state.services.durable.list(&who))
}

/// The body of `PUT /v1/subscriptions/{name}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Create {
    stream: String,
    #[serde(rename = "type")]
    event_type: Option<String>,
    #[serde(rename = "where")]
    filter: Option<String>,
    from: Option<String>,
}

/// Creates a subscription: 201 created, 200 when it exists with the same definition.
pub(super) async fn put(
    State(state): Shared,
    Extension(who): Extension<Principal>,
    Path(name): Path<String>,
    body: Body,
) -> Result<Response> {
    let body = read_body(body, 64 << 10).await?;
    let create: Create = serde_json::from_slice(&body).map_err(|e| {
        Error::BadRequest(format!(
            "expected {{\"stream\": S, \"where\": EXPR, \"type\": T, \"from\": \"start\" | \"end\" | CURSOR}}: {e}"
        ))
    })?;
    let request = CreateSubscription {
        stream: create.stream,
        event_type: create.event_type,
        filter: create.filter,
        from: create.from,
    };
    let (view, created) = state.services.durable.create(&who, &name, request).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(view)).into_response())
}

pub(super) async fn delete(
    State(state): Shared,
    Extension(who): Extension<Principal>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>> {
    state.services.durable.delete(&who, &name).await?;
    Ok(Json(serde_json::json!({ "deleted": name })))
}

/// Delivers from the acknowledged cursor; `takeover=true` replaces a live consumer.
pub(super) async fn events(
    State(state): Shared,
    Extension(who): Extension<Principal>,
    Path(name): Path<String>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response> {
    super::replay::only(
        &params,
        &["takeover", "heartbeat_ms"],
        "use takeover and heartbeat_ms (the subscription says what to read)",
    )?;
    let takeover = match params.get("takeover").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(Error::BadRequest(format!(
                "`takeover` must be true or false, got {other:?}"
            )));
        }
    };
    let heartbeat = super::replay::heartbeat(&params)?;
    let framing = follow::Framing::from_accept(&headers);
    let deliveries = state
        .services
        .durable
        .consume(&who, &name, takeover, heartbeat)
        .await?;
    Ok(follow::respond(framing, deliveries))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Ack {
    cursor: String,
}

/// Moves the acknowledged cursor; answers the acknowledged cursor.
pub(super) async fn ack(
    State(state): Shared,
    Extension(who): Extension<Principal>,
    Path(name): Path<String>,
    body: Body,
) -> Result<Json<serde_json::Value>> {
    let body = read_body(body, 64 << 10).await?;
    let ack: Ack = serde_json::from_slice(&body)
        .map_err(|e| Error::BadRequest(format!("expected {{\"cursor\": C}}: {e}")))?;
    let cursor = state.services.durable.ack(&who, &name, &ack.cursor).await?;
    Ok(Json(serde_json::json!({ "cursor": cursor })))
}
