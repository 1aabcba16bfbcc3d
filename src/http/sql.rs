//! `POST /v1/sql`: JSON rows, or an Arrow IPC stream with `Accept:
//! application/vnd.apache.arrow.stream`.

use super::{ARROW_STREAM, Shared, read_body, streamed};
use crate::auth::Principal;
use crate::service::{Error, QueryRequest, Result};
use arrow::array::RecordBatch;
use axum::body::{Body, Bytes};
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, header};
use axum::response::Response;
use futures::StreamExt;
use serde::Deserialize;

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

/// Writes batches as a JSON array of row objects or as an Arrow IPC stream.
enum Encoder {
    Json(arrow::json::Writer<Vec<u8>, arrow::json::writer::JsonArray>),
    Arrow(arrow::ipc::writer::StreamWriter<Vec<u8>>),
}

type ArrowResult<T> = std::result::Result<T, arrow::error::ArrowError>;

impl Encoder {
    fn write(&mut self, batch: &RecordBatch) -> ArrowResult<Vec<u8>> {
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

    fn finish(&mut self) -> ArrowResult<Vec<u8>> {
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

pub(super) async fn sql(
    State(state): Shared,
    Extension(who): Extension<Principal>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response> {
    let service = &state.services.query;
    let body = read_body(body, service.max_body_bytes()).await?;
    let request: SqlRequest = serde_json::from_slice(&body)
        .map_err(|e| Error::BadRequest(format!("expected {{\"sql\": \"SELECT …\", \"after\": TOKEN (optional), \"timeout_ms\": N (optional)}}: {e}")))?;
    let arrow = headers
        .get_all(header::ACCEPT)
        .iter()
        .any(|v| v.to_str().is_ok_and(|v| v.contains(ARROW_STREAM)));
    let after = match request.after {
        None => Vec::new(),
        Some(Tokens::One(t)) => vec![t],
        Some(Tokens::Many(ts)) => ts,
    };
    let result = service
        .query(
            &who,
            QueryRequest {
                sql: request.sql,
                after,
                timeout_ms: request.timeout_ms,
                ..QueryRequest::default()
            },
        )
        .await?;
    let arrow_err =
        |e: arrow::error::ArrowError| Error::Sql(strata_views::Error::Execution(e.to_string()));
    let (mut encoder, content_type) = if arrow {
        let w = arrow::ipc::writer::StreamWriter::try_new(Vec::new(), &result.schema)
            .map_err(arrow_err)?;
        (Encoder::Arrow(w), ARROW_STREAM)
    } else {
        let w = arrow::json::WriterBuilder::new()
            .with_explicit_nulls(true)
            .build::<_, arrow::json::writer::JsonArray>(Vec::new());
        (Encoder::Json(w), "application/json")
    };
    // Each batch as it comes, then the encoding's end; the first failure ends the body.
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(4);
    let mut batches = result.batches;
    tokio::spawn(async move {
        while let Some(batch) = batches.next().await {
            let chunk = batch.and_then(|b| encoder.write(&b).map_err(arrow_err));
            match chunk {
                Ok(bytes) => {
                    if tx.send(Ok(Bytes::from(bytes))).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "query failed while streaming its result");
                    let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
                    return;
                }
            }
        }
        let tail = encoder
            .finish()
            .map_err(|e| std::io::Error::other(e.to_string()));
        let _ = tx.send(tail.map(Bytes::from)).await;
    });
    Ok(streamed(
        content_type,
        tokio_stream::wrappers::ReceiverStream::new(rx),
    ))
}
