//! The HTTP API: an axum adapter over the [services](crate::service). Each handler turns its
//! request into one service call and its answer into JSON, NDJSON or Arrow; errors become HTTP
//! statuses in one place ([`status`]).
//!
//! | method and path | what it does |
//! |---|---|
//! | `GET /healthz` | liveness |
//! | `GET /metrics` | Prometheus text |
//! | `GET /v1/streams` | streams with partition counts and per-partition offsets |
//! | `PUT /v1/streams/{name}` | create a stream (`{"partitions": N}`) |
//! | `GET /v1/streams/{name}` | one stream |
//! | `POST /v1/streams/{name}/events` | append NDJSON or a JSON array; answers once durable |
//! | `GET /v1/streams/{name}/events` | replay stored events as NDJSON; with `follow=true` a subscription (NDJSON or SSE) |
//! | `GET /v1/subscriptions`, `PUT`/`DELETE /v1/subscriptions/{name}` | durable subscriptions |
//! | `GET /v1/subscriptions/{name}/events`, `POST /v1/subscriptions/{name}/ack` | their delivery and acknowledgements |
//! | `POST /v1/sql` | SQL queries (JSON rows, or Arrow IPC when asked) and materialized view DDL |
//! | `GET /v1/views` | materialized views with rows, applied offsets and lag |
//! | `GET /v1/views/{name}/changes?follow=true` | a view's rows, then each row as it changes |
//! | `POST /v1/views/{name}/rebuild` | recompute a view; streams NDJSON progress lines |
//! | `GET /v1/cluster` | the nodes, the partitions each holds, and their lag |

mod append;
mod cluster;
mod error;
mod follow;
mod middleware;
mod replay;
mod sql;
mod streams;
mod subscriptions;
mod views;

pub use error::status;

use crate::auth::{Auth, Operation, Principal};
use crate::service::{Error, Result, Services};
use axum::body::{Body, Bytes};
use axum::extract::{Extension, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;
use std::sync::Arc;

/// The media type of Arrow IPC streams.
pub const ARROW_STREAM: &str = "application/vnd.apache.arrow.stream";

/// What the handlers share.
pub struct AppState {
    /// The services they call.
    pub services: Services,
    /// Renders `/metrics`; `None` answers 404.
    pub metrics: Option<PrometheusHandle>,
    /// Who may do what.
    pub auth: Arc<Auth>,
    /// Requests running at once, up to `limits.max_concurrent_requests`.
    pub in_flight: Arc<tokio::sync::Semaphore>,
}

type Shared = State<Arc<AppState>>;

/// The API router over `state`.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/v1/streams", get(streams::list))
        .route("/v1/streams/{name}", get(streams::get).put(streams::put))
        .route(
            "/v1/streams/{name}/events",
            post(append::append).get(replay::replay),
        )
        .route("/v1/subscriptions", get(subscriptions::list))
        .route(
            "/v1/subscriptions/{name}",
            axum::routing::put(subscriptions::put).delete(subscriptions::delete),
        )
        .route(
            "/v1/subscriptions/{name}/events",
            get(subscriptions::events),
        )
        .route("/v1/subscriptions/{name}/ack", post(subscriptions::ack))
        .route("/v1/sql", post(sql::sql))
        .route("/v1/views", get(views::list))
        .route("/v1/views/{name}/rebuild", post(views::rebuild))
        .route("/v1/views/{name}/changes", get(views::changes))
        .route("/v1/cluster", get(cluster::cluster))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::limit_concurrency,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.auth.clone(),
            middleware::authenticate,
        ))
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(state)
}

async fn not_found(Extension(who): Extension<Principal>) -> Error {
    match who.authorize(Operation::Browse) {
        Ok(()) => Error::NotFound("no such endpoint; see the README for the HTTP API".into()),
        Err(e) => e,
    }
}

/// `200` while the node works; `503` once its store can no longer write (the node is stopping).
async fn healthz(State(state): Shared) -> Response {
    match state.services.failure() {
        None => Json(serde_json::json!({ "status": "ok" })).into_response(),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({ "status": "failed", "error": reason })),
        )
            .into_response(),
    }
}

async fn metrics(State(state): Shared, Extension(who): Extension<Principal>) -> Result<Response> {
    if !state.auth.public_metrics() {
        who.authorize(Operation::Browse)?;
    }
    match &state.metrics {
        Some(handle) => Ok((
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            handle.render(),
        )
            .into_response()),
        None => Err(Error::NotFound("metrics are not enabled".into())),
    }
}

/// Reads a whole body, refusing more than `limit` bytes with 413.
async fn read_body(body: Body, limit: usize) -> Result<Bytes> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let too_large = std::error::Error::source(&e)
            .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
        if too_large {
            Error::PayloadTooLarge(format!(
                "the request body is over the limit of {limit} bytes"
            ))
        } else {
            Error::BadRequest(format!("cannot read the request body: {e}"))
        }
    })
}

/// One NDJSON line of `v`.
fn ndjson_line<T: Serialize>(v: &T) -> Bytes {
    let mut out =
        serde_json::to_vec(v).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}").into_bytes());
    out.push(b'\n');
    Bytes::from(out)
}

/// A streamed answer of `content_type`.
fn streamed<S>(content_type: &'static str, body: S) -> Response
where
    S: futures::Stream<Item = std::io::Result<Bytes>> + Send + 'static,
{
    (
        [(header::CONTENT_TYPE, content_type)],
        Body::from_stream(body),
    )
        .into_response()
}
