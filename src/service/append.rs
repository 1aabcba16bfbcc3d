//! Appends: decoding and validating a batch of events, then appending it durably.

use super::{Error, Parts, Result, stream_name};
use crate::auth::{Operation, Principal, Scope};
use bytes::Bytes;
use std::sync::Arc;
use strata_ingest::AppendOutcome;
use strata_ingest::columnar::decode_arrow;
use strata_ingest::decode::{DecodeLimits, decode_batch};
use strata_proto::{FieldDef, StreamName};

/// A stream the caller may append to, checked by [`AppendService::target`] before the front end
/// reads the events, so that a refused append reads no body.
pub struct WriteTarget {
    name: StreamName,
    /// The stream's declared fields; `None` if the append creates the stream.
    fields: Option<Vec<FieldDef>>,
}

/// How an append body is encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyFormat {
    /// NDJSON, one event per line, or a JSON array of events.
    Json,
    /// An Arrow IPC stream whose columns are the event fields (see
    /// [`strata_ingest::columnar`]).
    ArrowStream,
}

impl BodyFormat {
    /// The format a `Content-Type` names: Arrow IPC for its media type, JSON otherwise.
    pub fn from_content_type(content_type: Option<&str>) -> Self {
        let media = content_type
            .and_then(|c| c.split(';').next())
            .map(str::trim)
            .unwrap_or_default();
        if media.eq_ignore_ascii_case(strata_ingest::columnar::ARROW_STREAM) {
            Self::ArrowStream
        } else {
            Self::Json
        }
    }
}

/// Appends events.
#[derive(Clone)]
pub struct AppendService {
    parts: Arc<Parts>,
}

impl AppendService {
    pub(super) fn new(parts: Arc<Parts>) -> Self {
        Self { parts }
    }

    /// The largest request body a front end should read for an append.
    pub fn max_body_bytes(&self) -> usize {
        self.parts.limits.max_body_bytes
    }

    /// Checks that `who` may append to `stream` on this node: the `write` scope and a grant, an
    /// ingest role, and `admin` too when the append would create the stream.
    ///
    /// # Errors
    /// Forbidden, a bad name, or the wrong role.
    pub fn target(&self, who: &Principal, stream: &str) -> Result<WriteTarget> {
        who.authorize(Operation::Write(stream))?;
        let name = stream_name(stream)?;
        self.parts.ingest()?;
        let fields = self
            .parts
            .log
            .catalog()
            .borrow()
            .get(&name)
            .map(|info| info.fields.clone());
        // A first append creates the stream: that takes `admin`, like creating it outright.
        if fields.is_none() {
            who.require(Scope::Admin).map_err(|_| {
                Error::Forbidden(format!(
                    "stream {name} does not exist, and creating it (by a first append) needs the `admin` scope"
                ))
            })?;
        }
        Ok(WriteTarget { name, fields })
    }

    /// Decodes `body` (NDJSON or a JSON array, or an Arrow IPC stream, as `format` says) and
    /// appends its events to `target`; answers once they are durable. The batch is all or nothing.
    ///
    /// # Errors
    /// A bad event (with its line or row), limits, a log that refuses or cannot be reached.
    pub async fn append(
        &self,
        target: WriteTarget,
        body: Bytes,
        format: BodyFormat,
    ) -> Result<AppendOutcome> {
        let arrival = chrono::Utc::now().timestamp_millis();
        let limits = DecodeLimits {
            max_event_bytes: self.parts.limits.max_event_bytes,
            max_events: self.parts.limits.max_batch_events,
        };
        let fields = target.fields.unwrap_or_default();
        let events = strata_ingest::off_the_runtime(move || match format {
            BodyFormat::Json => decode_batch(&body, arrival, &limits, &fields),
            BodyFormat::ArrowStream => decode_arrow(&body, arrival, &limits, &fields),
        })
        .await
        .map_err(|e| Error::BadRequest(format!("decoding failed: {e}")))??;
        let conditional = events.iter().any(|e| e.condition.is_some());
        if !conditional {
            return Ok(self.parts.ingest()?.append(&target.name, events).await?);
        }
        super::conditional::check_can_decide(&self.parts)?;
        let ids = events.iter().filter_map(|e| e.id.clone()).collect();
        let outcome = self.parts.ingest()?.append(&target.name, events).await?;
        super::conditional::decided(&self.parts, &target.name, outcome, ids).await
    }
}
