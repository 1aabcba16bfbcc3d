//! The HTTP API.
//!
//! | method and path | what it does |
//! |---|---|
//! | `GET /healthz` | liveness |
//! | `GET /metrics` | Prometheus text |
//! | `GET /v1/streams` | streams with partition counts and per-partition offsets |
//! | `PUT /v1/streams/{name}` | create a stream (`{"partitions": N}`) |
//! | `GET /v1/streams/{name}` | one stream |
//! | `POST /v1/streams/{name}/events` | append NDJSON or a JSON array; answers once durable |
//! | `GET /v1/streams/{name}/events` | replay stored events as NDJSON |
//! | `POST /v1/sql` | SQL queries (JSON rows, or Arrow IPC when asked) and materialized view DDL |
//! | `GET /v1/views` | materialized views with rows, applied offsets and lag |
//! | `POST /v1/views/{name}/rebuild` | recompute a view; streams NDJSON progress lines |
//! | `GET /v1/cluster` | the nodes, the partitions each holds, and their lag |

use crate::auth::{Auth, Principal, Scope};
use crate::config::{Limits, Role};
use crate::{Error, Result};
use arrow::array::RecordBatch;
use axum::body::{Body, Bytes};
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::StreamExt;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use strata_ingest::decode::{DecodeLimits, decode_batch, parse_rfc3339};
use strata_ingest::{Ingest, KafkaLog, StoreGroup};
use strata_proto::{
    ConsistencyToken, FieldSpec, HeldPartition, Log, NodeStatus, StreamInfo, StreamName,
    partition_for_key,
};
use strata_store::{ScanRequest, Store};
use strata_views::SqlEngine;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// The media type of Arrow IPC streams.
pub const ARROW_STREAM: &str = "application/vnd.apache.arrow.stream";

/// Who this node is, for `/v1/cluster`.
pub struct NodeInfo {
    /// The node's id.
    pub id: String,
    /// What it does.
    pub role: Role,
    /// Its HTTP address.
    pub http: String,
    /// The Kafka log, on Kafka.
    pub kafka: Option<Arc<KafkaLog>>,
    /// Its membership of the store consumer group, on Kafka with a store.
    pub group: Option<Arc<StoreGroup>>,
}

/// Everything the handlers share.
pub struct AppState {
    /// The write path (`None` on store-only nodes).
    pub ingest: Option<Arc<Ingest>>,
    /// The log (for the catalog and end offsets).
    pub log: Arc<dyn Log>,
    /// The store (`None` on ingest-only nodes).
    pub store: Option<Arc<Store>>,
    /// The SQL engine (with the store).
    pub sql: Option<Arc<SqlEngine>>,
    /// Renders `/metrics`; `None` answers 404.
    pub metrics: Option<PrometheusHandle>,
    /// Request limits.
    pub limits: Limits,
    /// Partition count of streams created without one.
    pub default_partitions: u32,
    /// This node.
    pub node: NodeInfo,
    /// Who may do what.
    pub auth: Arc<Auth>,
    /// Requests running at once, up to `limits.max_concurrent_requests`.
    pub in_flight: Arc<tokio::sync::Semaphore>,
}

impl AppState {
    fn ingest(&self) -> Result<&Arc<Ingest>> {
        self.ingest.as_ref().ok_or_else(|| {
            Error::WrongRole(format!(
                "this node has role {}; send appends to an ingest node",
                self.node.role.name()
            ))
        })
    }

    fn store(&self) -> Result<&Arc<Store>> {
        self.store.as_ref().ok_or_else(|| {
            Error::WrongRole(format!(
                "this node has role {} and keeps no shards; ask a store node (or replay with source=log)",
                self.node.role.name()
            ))
        })
    }

    fn sql(&self) -> Result<&Arc<SqlEngine>> {
        self.sql.as_ref().ok_or_else(|| {
            Error::WrongRole(format!(
                "this node has role {} and answers no SQL; ask a store node",
                self.node.role.name()
            ))
        })
    }
}

type Shared = State<Arc<AppState>>;

/// The API router over `state`.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/v1/streams", get(list_streams))
        .route("/v1/streams/{name}", get(get_stream).put(put_stream))
        .route("/v1/streams/{name}/events", post(append).get(replay))
        .route("/v1/sql", post(sql))
        .route("/v1/views", get(list_views))
        .route("/v1/views/{name}/rebuild", post(rebuild_view))
        .route("/v1/cluster", get(cluster))
        .fallback(|| async {
            Error::NotFound("no such endpoint; see the README for the HTTP API".into())
        })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            limit_concurrency,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.auth.clone(),
            crate::auth::layer,
        ))
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(state)
}

/// Answers 503 (with `Retry-After`) rather than queueing when `limits.max_concurrent_requests`
/// requests are running already; `/healthz` and `/metrics` are never turned away. The permit is
/// held until the response body has been sent, so streamed answers count while they stream.
async fn limit_concurrency(
    State(state): Shared,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let path = request.uri().path();
    if path == "/healthz" || path == "/metrics" {
        return next.run(request).await;
    }
    let Ok(permit) = state.in_flight.clone().try_acquire_owned() else {
        metrics::counter!("strata_requests_refused_total", "reason" => "busy").increment(1);
        return Error::Busy(format!(
            "the server is running its limit of {} requests at once; retry shortly",
            state.limits.max_concurrent_requests
        ))
        .into_response();
    };
    let response = next.run(request).await;
    let (parts, body) = response.into_parts();
    let body = Body::from_stream(PermitStream {
        inner: body.into_data_stream(),
        _permit: permit,
    });
    Response::from_parts(parts, body)
}

/// A response body that holds a concurrency permit until it is dropped.
struct PermitStream<S> {
    inner: S,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl<S: futures::Stream + Unpin> futures::Stream for PermitStream<S> {
    type Item = S::Item;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        std::pin::Pin::new(&mut self.inner).poll_next(cx)
    }
}

/// `200` while the node works; `503` once its store can no longer write (the node is stopping).
async fn healthz(State(state): Shared) -> Response {
    match state.store.as_ref().and_then(|s| s.failure()) {
        None => Json(serde_json::json!({ "status": "ok" })).into_response(),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({ "status": "failed", "error": reason })),
        )
            .into_response(),
    }
}

async fn metrics(State(state): Shared) -> Response {
    match &state.metrics {
        Some(handle) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            handle.render(),
        )
            .into_response(),
        None => Error::NotFound("metrics are not enabled".into()).into_response(),
    }
}

fn stream_name(name: &str) -> Result<StreamName> {
    Ok(StreamName::new(name)?)
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

#[derive(Serialize)]
struct PartitionOffsets {
    partition: u32,
    /// The log's end: the offset the next appended event gets (`null` if the log cannot say).
    next_offset: Option<u64>,
    /// The store's progress: events below it are visible to SQL and replay (`null` without a
    /// store).
    stored_offset: Option<u64>,
    /// Why this node stopped consuming the partition (the log no longer holds its next offset).
    #[serde(skip_serializing_if = "Option::is_none")]
    stalled: Option<String>,
}

#[derive(Serialize)]
struct StreamView {
    name: String,
    partitions: u32,
    fields: Vec<serde_json::Value>,
    offsets: Vec<PartitionOffsets>,
}

async fn stream_view(state: &AppState, info: &strata_proto::StreamInfo) -> Result<StreamView> {
    let stored: Vec<Option<u64>> = match &state.store {
        Some(store) => store
            .status(&info.name)?
            .into_iter()
            .map(|s| Some(s.stored_offset))
            .collect(),
        None => vec![None; info.partitions as usize],
    };
    // The log's end as shown, `null` when the log cannot say (brokers unreachable).
    let ends = futures::future::join_all(
        (0..info.partitions).map(|p| state.log.end_offset(&info.name, p)),
    )
    .await;
    let gaps: Vec<strata_ingest::RetentionGapInfo> = state
        .node
        .group
        .as_ref()
        .map(|g| g.gaps())
        .unwrap_or_default()
        .into_iter()
        .filter(|g| g.stream == info.name)
        .collect();
    let offsets = (0..)
        .zip(stored)
        .zip(ends)
        .map(|((partition, stored_offset), end)| PartitionOffsets {
            partition,
            next_offset: end
                .inspect_err(|e| tracing::debug!(error = %e, "no end offset"))
                .ok(),
            stored_offset,
            stalled: gaps
                .iter()
                .find(|g| g.partition == partition)
                .map(|g| g.message()),
        })
        .collect();
    Ok(StreamView {
        name: info.name.to_string(),
        partitions: info.partitions,
        fields: field_list(info),
        offsets,
    })
}

async fn list_streams(
    State(state): Shared,
    Extension(who): Extension<Principal>,
) -> Result<Json<Vec<StreamView>>> {
    let catalog = state.log.catalog().borrow().clone();
    let mut out = Vec::with_capacity(catalog.len());
    for info in catalog.values().filter(|i| who.may_use(i.name.as_str())) {
        out.push(stream_view(&state, info).await?);
    }
    Ok(Json(out))
}

async fn get_stream(
    State(state): Shared,
    Extension(who): Extension<Principal>,
    Path(name): Path<String>,
) -> Result<Json<StreamView>> {
    let name = stream_name(&name)?;
    who.require_stream(name.as_str())?;
    let info = state
        .log
        .catalog()
        .borrow()
        .get(&name)
        .cloned()
        .ok_or_else(|| strata_proto::Error::UnknownStream(name.to_string()))?;
    Ok(Json(stream_view(&state, &info).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateStream {
    partitions: Option<u32>,
    #[serde(default)]
    fields: Vec<FieldSpec>,
}

/// Creates a stream, or declares more fields on an existing one.
async fn put_stream(
    State(state): Shared,
    Extension(who): Extension<Principal>,
    Path(name): Path<String>,
    body: Body,
) -> Result<Response> {
    let name = stream_name(&name)?;
    who.require_stream(name.as_str())?;
    let body = read_body(body, 1 << 20).await?;
    let request: CreateStream = if body.iter().all(u8::is_ascii_whitespace) {
        CreateStream {
            partitions: None,
            fields: Vec::new(),
        }
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            Error::BadRequest(format!(
                "expected {{\"partitions\": N, \"fields\": [{{\"name\": \"amount\", \"type\": \"double\"}}]}} \
                 (types: string, long, double, boolean, timestamp): {e}"
            ))
        })?
    };
    let existing = state
        .log
        .catalog()
        .borrow()
        .get(&name)
        .map(|info| info.partitions);
    let partitions = request
        .partitions
        .or(existing)
        .unwrap_or(state.default_partitions);
    let (mut info, created) = state
        .log
        .create_stream(&name, partitions, &request.fields)
        .await?;
    if !created && !request.fields.is_empty() {
        info = state.log.add_fields(&name, &request.fields).await?;
    }
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let body = serde_json::json!({
        "name": info.name,
        "partitions": info.partitions,
        "fields": field_list(&info),
        "created": created,
    });
    Ok((status, Json(body)).into_response())
}

fn field_list(info: &StreamInfo) -> Vec<serde_json::Value> {
    info.fields
        .iter()
        .map(|f| serde_json::json!({ "name": f.name, "type": f.field_type }))
        .collect()
}

async fn append(
    State(state): Shared,
    Extension(who): Extension<Principal>,
    Path(name): Path<String>,
    body: Body,
) -> Result<Response> {
    let name = stream_name(&name)?;
    who.require_stream(name.as_str())?;
    state.ingest()?;
    let body = read_body(body, state.limits.max_body_bytes).await?;
    let arrival = chrono::Utc::now().timestamp_millis();
    let limits = DecodeLimits {
        max_event_bytes: state.limits.max_event_bytes,
        max_events: state.limits.max_batch_events,
    };
    let fields = state
        .log
        .catalog()
        .borrow()
        .get(&name)
        .map(|info| info.fields.clone());
    // A first append creates the stream: that takes `admin`, like creating it outright.
    let fields = match fields {
        Some(fields) => fields,
        None => {
            who.require(Scope::Admin).map_err(|_| {
                Error::Forbidden(format!(
                    "stream {name} does not exist, and creating it (by a first append) needs the `admin` scope"
                ))
            })?;
            Vec::new()
        }
    };
    let events =
        tokio::task::spawn_blocking(move || decode_batch(&body, arrival, &limits, &fields))
            .await
            .map_err(|e| Error::BadRequest(format!("decoding failed: {e}")))??;
    let outcome = state.ingest()?.append(&name, events).await?;
    Ok(Json(outcome).into_response())
}

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

async fn replay(
    State(state): Shared,
    Extension(who): Extension<Principal>,
    Path(name): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response> {
    const KNOWN: [&str; 6] = ["partition", "from", "from_time", "key", "limit", "source"];
    if let Some(unknown) = params.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(Error::BadRequest(format!(
            "unknown parameter `{unknown}`; use partition, from, from_time, key, limit and source"
        )));
    }
    let name = stream_name(&name)?;
    who.require_stream(name.as_str())?;
    let from_log = match params.get("source").map(String::as_str) {
        None | Some("store") => false,
        Some("log") => true,
        Some(other) => {
            return Err(Error::BadRequest(format!(
                "`source` must be `store` (the shards, the default) or `log`, got {other:?}"
            )));
        }
    };
    let info = if from_log {
        state
            .log
            .catalog()
            .borrow()
            .get(&name)
            .cloned()
            .ok_or_else(|| strata_proto::Error::UnknownStream(name.to_string()))?
    } else {
        state.store()?.stream(&name)?
    };
    let partition: Option<u32> = param(&params, "partition", "a partition number")?;
    let from: Option<u64> = param(&params, "from", "an offset (a whole number ≥ 0)")?;
    let limit: Option<usize> = param(&params, "limit", "a whole number ≥ 0")?;
    let key = params.get("key").cloned();
    let from_time = match params.get("from_time") {
        Some(t) => Some(match t.parse::<i64>() {
            Ok(ms) => ms,
            Err(_) => parse_rfc3339(t)
                .map_err(|e| Error::BadRequest(e.replacen("`time`", "`from_time`", 1)))?,
        }),
        None => None,
    };
    let partitions: Vec<u32> = match (partition, &key) {
        (Some(p), _) => {
            info.check_partition(p)?;
            vec![p]
        }
        (None, Some(k)) => vec![partition_for_key(k.as_bytes(), info.partitions)],
        (None, None) if from.is_some() && info.partitions > 1 => {
            return Err(Error::BadRequest(format!(
                "`from` is an offset within one partition; add `partition` (the stream has {} partitions)",
                info.partitions
            )));
        }
        (None, None) => (0..info.partitions).collect(),
    };
    let request = ReplayRequest {
        name,
        from: from.unwrap_or(0),
        from_time,
        key,
        limit: limit.unwrap_or(usize::MAX),
    };
    let rx = if from_log {
        replay_log(&state, request, partitions).await?
    } else {
        replay_store(state.store()?.clone(), request, partitions).await?
    };
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(ReceiverStream::new(rx)),
    )
        .into_response())
}

/// What a replay asks for, whatever it reads from.
struct ReplayRequest {
    name: StreamName,
    from: u64,
    from_time: Option<i64>,
    key: Option<String>,
    limit: usize,
}

type Chunks = mpsc::Receiver<std::io::Result<Bytes>>;

/// Replays from the shards: columnar scans, written as NDJSON.
async fn replay_store(store: Arc<Store>, r: ReplayRequest, partitions: Vec<u32>) -> Result<Chunks> {
    let mut starts = Vec::with_capacity(partitions.len());
    for p in partitions {
        let mut start = r.from;
        if let Some(t) = r.from_time {
            let (store, name) = (store.clone(), r.name.clone());
            let at = tokio::task::spawn_blocking(move || store.offset_for_time(&name, p, t))
                .await
                .map_err(|e| Error::BadRequest(format!("replay failed: {e}")))??;
            start = start.max(at);
        }
        starts.push((p, start));
    }
    let (tx, rx) = mpsc::channel::<std::io::Result<Bytes>>(4);
    tokio::task::spawn_blocking(move || {
        let mut remaining = r.limit;
        for (p, start) in starts {
            if remaining == 0 {
                break;
            }
            let request = ScanRequest {
                offsets: start..u64::MAX,
                key: r.key.clone(),
                limit: Some(remaining),
                ..ScanRequest::all()
            };
            let scan = match store.scan(&r.name, p, request) {
                Ok(scan) => scan,
                Err(e) => {
                    let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
                    return;
                }
            };
            for batch in scan {
                let batch = match batch {
                    Ok(b) => b,
                    Err(e) => {
                        let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
                        return;
                    }
                };
                remaining = remaining.saturating_sub(batch.num_rows());
                let mut out = Vec::with_capacity(batch.num_rows() * 384);
                strata_store::ndjson::write_batch(&batch, &mut out);
                if tx.blocking_send(Ok(Bytes::from(out))).is_err() {
                    return;
                }
            }
        }
    });
    Ok(rx)
}

/// A partition being replayed from the log: its end (where the log can say), its reader, and a
/// batch read ahead.
struct LogReplay {
    end: Option<u64>,
    reader: Box<dyn strata_proto::LogReader>,
    ahead: Option<Vec<strata_proto::Record>>,
}

async fn open_log_replay(
    log: &Arc<dyn Log>,
    r: &ReplayRequest,
    partition: u32,
    exact_ends: bool,
) -> strata_proto::Result<LogReplay> {
    let end = if exact_ends {
        Some(log.end_offset(&r.name, partition).await?)
    } else {
        None
    };
    let reader = log.open_reader(&r.name, partition, r.from).await?;
    Ok(LogReplay {
        end,
        reader,
        ahead: None,
    })
}

/// Replays straight from the log: up to the partition's end offset where the log's answer is
/// exact, otherwise (Kafka) until the partition has been idle for a second.
/// `from_time` starts at the first record at or after it; `key` keeps that key's records.
async fn replay_log(state: &AppState, r: ReplayRequest, partitions: Vec<u32>) -> Result<Chunks> {
    let (tx, rx) = mpsc::channel::<std::io::Result<Bytes>>(4);
    let log = state.log.clone();
    let exact_ends = log.end_offsets_are_exact();
    let first_wait = Duration::from_secs(if exact_ends { 1 } else { 5 });
    // The first partition is opened and its first batch read before answering, so that offsets
    // the log no longer holds (410) or a log that cannot be read (503) get their status instead
    // of a broken body.
    let mut first = match partitions.first() {
        Some(&p) if r.limit > 0 => {
            let mut opened = open_log_replay(&log, &r, p, exact_ends).await?;
            if opened.end.is_none_or(|end| opened.reader.position() < end) {
                let batch = opened
                    .reader
                    .next_batch(r.limit.min(10_000), first_wait)
                    .await?;
                opened.ahead = Some(batch);
            }
            Some(opened)
        }
        _ => None,
    };
    tokio::spawn(async move {
        let fail = |e: String| Err(std::io::Error::other(e));
        let mut remaining = r.limit;
        for p in partitions {
            if remaining == 0 {
                break;
            }
            let opened = match first.take() {
                Some(opened) => Ok(opened),
                None => open_log_replay(&log, &r, p, exact_ends).await,
            };
            let LogReplay {
                end,
                mut reader,
                mut ahead,
            } = match opened {
                Ok(opened) => opened,
                Err(e) => {
                    let _ = tx.send(fail(e.to_string())).await;
                    return;
                }
            };
            let mut started = r.from_time.is_none();
            let mut wait = first_wait;
            loop {
                let batch = match ahead.take() {
                    Some(batch) => batch,
                    None if remaining > 0 && end.is_none_or(|end| reader.position() < end) => {
                        match reader.next_batch(remaining.min(10_000), wait).await {
                            Ok(batch) => batch,
                            Err(e) => {
                                let _ = tx.send(fail(e.to_string())).await;
                                return;
                            }
                        }
                    }
                    None => break,
                };
                if batch.is_empty() {
                    break;
                }
                wait = Duration::from_secs(1);
                let mut out = Vec::with_capacity(batch.len() * 256);
                for record in batch {
                    if end.is_some_and(|end| record.offset >= end) || remaining == 0 {
                        break;
                    }
                    if !started {
                        match r.from_time {
                            Some(t) if record.event.time_ms < t => continue,
                            _ => started = true,
                        }
                    }
                    if r.key.is_some() && record.event.key != r.key {
                        continue;
                    }
                    record.write_ndjson(&mut out);
                    remaining -= 1;
                }
                if !out.is_empty() && tx.send(Ok(Bytes::from(out))).await.is_err() {
                    return;
                }
            }
        }
    });
    Ok(rx)
}

/// This node's status: the partitions it holds with their stored offsets and lag.
pub(crate) async fn local_status(state: &AppState) -> NodeStatus {
    let mut partitions = Vec::new();
    if let Some(store) = &state.store {
        let held: Vec<(StreamName, u32, Option<u64>)> = match &state.node.group {
            Some(group) => group.assignment(),
            None => {
                let catalog = state.log.catalog().borrow().clone();
                let mut held = Vec::new();
                for info in catalog.values() {
                    for p in 0..info.partitions {
                        let end = state.log.end_offset(&info.name, p).await.ok();
                        held.push((info.name.clone(), p, end));
                    }
                }
                held
            }
        };
        for (stream, partition, end) in held {
            let stored_offset = store.next_offset(&stream, partition).unwrap_or(0);
            partitions.push(HeldPartition {
                stream: stream.to_string(),
                partition,
                stored_offset,
                log_end_offset: end,
                lag: end.map(|e| e.saturating_sub(stored_offset)),
            });
        }
    }
    NodeStatus {
        node: state.node.id.clone(),
        role: state.node.role.name().to_owned(),
        http: state.node.http.clone(),
        updated_ms: chrono::Utc::now().timestamp_millis(),
        partitions,
    }
}

#[derive(Serialize)]
struct ClusterNode {
    #[serde(flatten)]
    status: NodeStatus,
    /// Whether the node published its status recently.
    alive: bool,
}

#[derive(Serialize)]
struct ClusterPartition {
    stream: String,
    partition: u32,
    node: String,
    stored_offset: u64,
    log_end_offset: Option<u64>,
    lag: Option<u64>,
}

/// The nodes (as each last published itself; this node's status is current) and, per partition,
/// the live node that holds it.
async fn cluster(
    State(state): Shared,
    Extension(who): Extension<Principal>,
) -> Result<Json<serde_json::Value>> {
    let local = local_status(&state).await;
    let mut nodes = match &state.node.kafka {
        Some(kafka) => kafka.nodes(),
        None => Default::default(),
    };
    let stale_after = state.node.kafka.as_ref().map_or(0, |k| {
        (k.config().refresh_ms.max(200) * 3).max(10_000) as i64
    });
    nodes.insert(local.node.clone(), local);
    let now = chrono::Utc::now().timestamp_millis();
    let mut list = Vec::with_capacity(nodes.len());
    let mut partitions = Vec::new();
    for mut status in nodes.into_values() {
        status.partitions.retain(|p| who.may_use(&p.stream));
        let alive = now - status.updated_ms <= stale_after;
        if alive {
            for p in &status.partitions {
                partitions.push(ClusterPartition {
                    stream: p.stream.clone(),
                    partition: p.partition,
                    node: status.node.clone(),
                    stored_offset: p.stored_offset,
                    log_end_offset: p.log_end_offset,
                    lag: p.lag,
                });
            }
        }
        list.push(ClusterNode { status, alive });
    }
    partitions.sort_by(|a, b| (&a.stream, a.partition).cmp(&(&b.stream, b.partition)));
    Ok(Json(
        serde_json::json!({ "nodes": list, "partitions": partitions }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SqlRequest {
    sql: String,
    /// Consistency tokens from appends: the query runs once the store has applied them.
    #[serde(default)]
    after: Option<Tokens>,
    /// How long to wait for `after`, in milliseconds (default 10 s, at most 5 min).
    timeout_ms: Option<u64>,
}

/// One token or several.
#[derive(Deserialize)]
#[serde(untagged)]
enum Tokens {
    One(String),
    Many(Vec<String>),
}

impl Tokens {
    fn parse(self) -> Result<Vec<ConsistencyToken>> {
        let list = match self {
            Tokens::One(t) => vec![t],
            Tokens::Many(ts) => ts,
        };
        if list.len() > 1000 {
            return Err(Error::BadRequest(
                "`after` holds more than 1000 tokens".into(),
            ));
        }
        list.iter()
            .map(|t| t.parse::<ConsistencyToken>().map_err(Error::from))
            .collect()
    }
}

/// Waits until the store has applied every offset of `tokens`, for at most `timeout`.
async fn wait_applied(store: &Store, tokens: &[ConsistencyToken], timeout: Duration) -> Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    for token in tokens {
        for (&partition, &offset) in &token.offsets {
            let mut progress = store.subscribe(&token.stream, partition)?;
            let reached = tokio::time::timeout_at(deadline, progress.wait_for(|n| *n >= offset));
            if !matches!(reached.await, Ok(Ok(_))) {
                let applied = *progress.borrow();
                return Err(Error::Timeout(format!(
                    "waited {} ms for `after`: partition {partition} of {} is applied up to offset {applied}, not yet {offset} (is this node holding that partition? see /v1/cluster)",
                    timeout.as_millis(),
                    token.stream
                )));
            }
            // Views caught up with the shard move in its commits; one catching up gets there
            // by itself.
            let mut poll = Duration::from_millis(1);
            while let Some((view, applied)) = store.views_behind(&token.stream, partition, offset) {
                if tokio::time::Instant::now() + poll > deadline {
                    return Err(Error::Timeout(format!(
                        "waited {} ms for `after`: view {view} has applied partition {partition} of {} up to offset {applied}, not yet {offset} (see SHOW VIEWS)",
                        timeout.as_millis(),
                        token.stream
                    )));
                }
                tokio::time::sleep(poll).await;
                poll = (poll * 2).min(Duration::from_millis(50));
            }
        }
    }
    Ok(())
}

async fn list_views(
    State(state): Shared,
    Extension(who): Extension<Principal>,
) -> Result<Json<Vec<strata_views::ViewListing>>> {
    let mut listing = state.sql()?.view_listing().await?;
    listing.retain(|v| who.may_use(&v.stream));
    Ok(Json(listing))
}

/// One NDJSON line of `v`.
fn ndjson_line<T: Serialize>(v: &T) -> Bytes {
    let mut out =
        serde_json::to_vec(v).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}").into_bytes());
    out.push(b'\n');
    Bytes::from(out)
}

/// Rebuilds a view, answering NDJSON: a progress line every 250 ms (`done`, `total`,
/// `elapsed_ms`), then the final line (`finished: true`, `rows`) or `{"error": …}`.
async fn rebuild_view(
    State(state): Shared,
    Extension(who): Extension<Principal>,
    Path(name): Path<String>,
) -> Result<Response> {
    let engine = state.sql()?.clone();
    if let Some(def) = state.store()?.view_def(&name) {
        who.require_stream(def.stream.as_str())?;
    }
    let (progress, mut watch) =
        tokio::sync::watch::channel(strata_views::RebuildProgress::default());
    let mut task = tokio::spawn(async move { engine.rebuild_view(&name, progress).await });
    // Refusals (unknown view, a rebuild running) answer with their status, not a stream.
    let early = tokio::time::timeout(Duration::from_millis(50), &mut task).await;
    let (tx, rx) = mpsc::channel::<std::io::Result<Bytes>>(4);
    match early {
        Ok(Ok(Err(e))) => return Err(e.into()),
        Ok(Err(e)) => return Err(Error::Sql(strata_views::Error::Execution(e.to_string()))),
        Ok(Ok(Ok(done))) => {
            let _ = tx.send(Ok(ndjson_line(&done))).await;
        }
        Err(_) => {
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(250));
                let outcome = loop {
                    tokio::select! {
                        joined = &mut task => break joined,
                        _ = tick.tick() => {
                            let now = watch.borrow_and_update().clone();
                            if tx.send(Ok(ndjson_line(&now))).await.is_err() {
                                // The client left; the rebuild goes on to its end.
                                return;
                            }
                        }
                    }
                };
                let last = match outcome {
                    Ok(Ok(done)) => ndjson_line(&done),
                    Ok(Err(e)) => ndjson_line(&serde_json::json!({ "error": e.to_string() })),
                    Err(e) => ndjson_line(&serde_json::json!({ "error": e.to_string() })),
                };
                let _ = tx.send(Ok(last)).await;
            });
        }
    }
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(ReceiverStream::new(rx)),
    )
        .into_response())
}

/// Records a query's duration when its response has been sent (or dropped).
struct QueryTimer(Instant);

impl Drop for QueryTimer {
    fn drop(&mut self) {
        metrics::histogram!("strata_query_seconds").record(self.0.elapsed().as_secs_f64());
    }
}

enum Encoder {
    Json(arrow::json::Writer<Vec<u8>, arrow::json::writer::JsonArray>),
    Arrow(arrow::ipc::writer::StreamWriter<Vec<u8>>),
}

impl Encoder {
    fn write(
        &mut self,
        batch: &RecordBatch,
    ) -> std::result::Result<Vec<u8>, arrow::error::ArrowError> {
        match self {
            Encoder::Json(w) => {
                w.write(batch)?;
                Ok(std::mem::take(w.get_mut()))
            }
            Encoder::Arrow(w) => {
                w.write(batch)?;
                Ok(std::mem::take(w.get_mut()))
            }
        }
    }

    fn finish(&mut self) -> std::result::Result<Vec<u8>, arrow::error::ArrowError> {
        match self {
            Encoder::Json(w) => {
                w.finish()?;
                let mut out = std::mem::take(w.get_mut());
                if out.is_empty() {
                    // No rows at all: an empty JSON array.
                    out.extend_from_slice(b"[]");
                }
                out.push(b'\n');
                Ok(out)
            }
            Encoder::Arrow(w) => {
                w.finish()?;
                Ok(std::mem::take(w.get_mut()))
            }
        }
    }
}

async fn sql(
    State(state): Shared,
    Extension(who): Extension<Principal>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response> {
    let timer = QueryTimer(Instant::now());
    let body = read_body(body, state.limits.max_body_bytes).await?;
    let request: SqlRequest = serde_json::from_slice(&body)
        .map_err(|e| Error::BadRequest(format!("expected {{\"sql\": \"SELECT …\", \"after\": TOKEN (optional), \"timeout_ms\": N (optional)}}: {e}")))?;
    let arrow = headers
        .get_all(header::ACCEPT)
        .iter()
        .any(|v| v.to_str().is_ok_and(|v| v.contains(ARROW_STREAM)));
    let engine = state.sql()?;
    if let Some(after) = request.after {
        let tokens = after.parse()?;
        let timeout = Duration::from_millis(request.timeout_ms.unwrap_or(10_000).min(300_000));
        wait_applied(state.store()?, &tokens, timeout).await?;
    }
    // The query's time limit covers planning, the first batch and streaming the rest.
    let limit_ms = state.limits.query_timeout_ms;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(limit_ms);
    let too_long = move || {
        metrics::counter!("strata_queries_refused_total", "reason" => "time").increment(1);
        format!("the query ran longer than its limit of {limit_ms} ms (limits.query_timeout_ms)")
    };
    let output = tokio::time::timeout_at(deadline, engine.query_as(&request.sql, &who.access()))
        .await
        .map_err(|_| strata_views::Error::ResourcesExhausted(too_long()))??;
    let mut batches = output.batches;
    // Run the query up to its first batch before answering, so that a failing query gets an
    // error status rather than a broken body.
    let first = tokio::time::timeout_at(deadline, batches.next())
        .await
        .map_err(|_| strata_views::Error::ResourcesExhausted(too_long()))?
        .transpose()
        .map_err(strata_views::Error::from)?;
    let arrow_err =
        |e: arrow::error::ArrowError| Error::Sql(strata_views::Error::Execution(e.to_string()));
    let (mut encoder, content_type) = if arrow {
        let w = arrow::ipc::writer::StreamWriter::try_new(Vec::new(), &output.schema)
            .map_err(arrow_err)?;
        (Encoder::Arrow(w), ARROW_STREAM)
    } else {
        let w = arrow::json::WriterBuilder::new()
            .with_explicit_nulls(true)
            .build::<_, arrow::json::writer::JsonArray>(Vec::new());
        (Encoder::Json(w), "application/json")
    };
    let (tx, rx) = mpsc::channel::<std::io::Result<Bytes>>(4);
    tokio::spawn(async move {
        let _timer = timer;
        let io = |e: String| std::io::Error::other(e);
        let mut next = first.map(Ok);
        loop {
            let batch = match next.take() {
                Some(b) => b,
                None => match tokio::time::timeout_at(deadline, batches.next()).await {
                    Ok(Some(b)) => b.map_err(|e| e.to_string()),
                    Ok(None) => break,
                    Err(_) => Err(too_long()),
                },
            };
            let chunk = batch.and_then(|b| encoder.write(&b).map_err(|e| e.to_string()));
            match chunk {
                Ok(bytes) => {
                    if tx.send(Ok(Bytes::from(bytes))).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "query failed while streaming its result");
                    let _ = tx.send(Err(io(e))).await;
                    return;
                }
            }
        }
        let tail = encoder.finish().map_err(|e| io(e.to_string()));
        let _ = tx.send(tail.map(Bytes::from)).await;
    });
    Ok((
        [(header::CONTENT_TYPE, content_type)],
        Body::from_stream(ReceiverStream::new(rx)),
    )
        .into_response())
}
