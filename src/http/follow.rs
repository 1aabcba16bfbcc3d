//! How a subscription's deliveries go out over HTTP: NDJSON lines (each event with its `cursor`,
//! a heartbeat as a line with only the cursor) or Server-Sent Events (the cursor is each event's
//! `id`, so an `EventSource` resumes by itself with `Last-Event-ID`).

use crate::service::{Cursor, Deliveries, Delivery, ViewDeliveries, ViewDelivery};
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use strata_store::ndjson::Rows;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

/// The framing a client asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// `application/x-ndjson` (the default).
    Ndjson,
    /// `text/event-stream`, when the client accepts it.
    Sse,
}

impl Framing {
    /// Server-Sent Events when `Accept` names `text/event-stream`, NDJSON otherwise.
    pub fn from_accept(headers: &HeaderMap) -> Self {
        let sse = headers
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.contains("text/event-stream"));
        if sse { Self::Sse } else { Self::Ndjson }
    }

    fn content_type(self) -> &'static str {
        match self {
            Self::Ndjson => "application/x-ndjson",
            Self::Sse => "text/event-stream",
        }
    }
}

/// The streamed answer of a subscription. A failure after the first delivery ends the body with
/// one last line saying why (NDJSON `{"error": …}`, SSE `event: error`).
pub fn respond(framing: Framing, deliveries: Deliveries) -> Response {
    respond_with(framing, deliveries, encode)
}

/// The streamed answer of a followed view: lines `{"row": {…}, "cursor": C}`.
pub fn respond_view(framing: Framing, deliveries: ViewDeliveries) -> Response {
    respond_with(framing, deliveries, encode_view)
}

fn respond_with<T: Send + 'static>(
    framing: Framing,
    deliveries: tokio::sync::mpsc::Receiver<crate::service::Result<T>>,
    encode: fn(Framing, T, &mut Vec<u8>),
) -> Response {
    let body = ReceiverStream::new(deliveries).map(move |delivery| {
        let mut out = Vec::new();
        match delivery {
            Ok(delivery) => encode(framing, delivery, &mut out),
            Err(e) => encode_error(framing, &e.to_string(), &mut out),
        }
        Ok::<_, std::io::Error>(Bytes::from(out))
    });
    (
        [
            (header::CONTENT_TYPE, framing.content_type()),
            (header::CACHE_CONTROL, "no-cache"),
            // Proxies that buffer responses (nginx) pass each delivery on at once.
            (header::HeaderName::from_static("x-accel-buffering"), "no"),
        ],
        Body::from_stream(body),
    )
        .into_response()
}

/// Appends a followed view's `delivery` to `out`: each row as `{"row": {…}, "cursor": C}`.
pub fn encode_view(framing: Framing, delivery: ViewDelivery, out: &mut Vec<u8>) {
    match delivery {
        ViewDelivery::Rows { batch, cursor } => {
            let mut lines = Vec::new();
            let mut writer = arrow::json::LineDelimitedWriter::new(&mut lines);
            if let Err(e) = writer.write(&batch).and_then(|()| writer.finish()) {
                encode_error(
                    framing,
                    &format!("a row could not be written as JSON: {e}"),
                    out,
                );
                return;
            }
            for line in lines.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                if framing == Framing::Sse {
                    out.extend_from_slice(b"id: ");
                    write_cursor(&cursor, out);
                    out.extend_from_slice(b"\ndata: ");
                }
                out.extend_from_slice(b"{\"row\":");
                out.extend_from_slice(line);
                out.extend_from_slice(b",\"cursor\":\"");
                write_cursor(&cursor, out);
                out.extend_from_slice(b"\"}\n");
                if framing == Framing::Sse {
                    out.push(b'\n');
                }
            }
        }
        ViewDelivery::Heartbeat(cursor) => encode(framing, Delivery::Heartbeat(cursor), out),
    }
}

/// Appends `delivery` to `out`.
pub fn encode(framing: Framing, delivery: Delivery, out: &mut Vec<u8>) {
    match delivery {
        Delivery::Events { batch, mut cursor } => {
            let Some(rows) = Rows::new(&batch) else {
                return;
            };
            out.reserve(batch.num_rows() * 384);
            for i in 0..batch.num_rows() {
                let (partition, offset) = rows.position(i);
                cursor.offsets.insert(partition, offset + 1);
                match framing {
                    Framing::Ndjson => {
                        rows.write(i, out);
                        // The line ends `}\n`: the cursor goes in as its last field.
                        out.truncate(out.len().saturating_sub(2));
                        out.extend_from_slice(b",\"cursor\":\"");
                        write_cursor(&cursor, out);
                        out.extend_from_slice(b"\"}\n");
                    }
                    Framing::Sse => {
                        out.extend_from_slice(b"id: ");
                        write_cursor(&cursor, out);
                        out.extend_from_slice(b"\ndata: ");
                        rows.write(i, out);
                        out.push(b'\n');
                    }
                }
            }
        }
        Delivery::Heartbeat(cursor) => match framing {
            Framing::Ndjson => {
                out.extend_from_slice(b"{\"cursor\":\"");
                write_cursor(&cursor, out);
                out.extend_from_slice(b"\"}\n");
            }
            // A comment keeps proxies from closing the connection; an `id` with no data moves
            // the client's `Last-Event-ID` without dispatching an event.
            Framing::Sse => {
                out.extend_from_slice(b": heartbeat\nid: ");
                write_cursor(&cursor, out);
                out.extend_from_slice(b"\n\n");
            }
        },
    }
}

fn encode_error(framing: Framing, message: &str, out: &mut Vec<u8>) {
    let json = serde_json::json!({ "error": message }).to_string();
    match framing {
        Framing::Ndjson => {
            out.extend_from_slice(json.as_bytes());
            out.push(b'\n');
        }
        Framing::Sse => {
            out.extend_from_slice(b"event: error\ndata: ");
            out.extend_from_slice(json.as_bytes());
            out.extend_from_slice(b"\n\n");
        }
    }
}

/// A cursor's text has only name characters, digits, `.` and `-`: nothing to escape in JSON or
/// in an SSE field.
fn write_cursor(cursor: &Cursor, out: &mut Vec<u8>) {
    use std::io::Write;
    let _ = write!(out, "{cursor}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::RecordBatch;
    use std::collections::BTreeMap;
    use std::sync::Arc;
    use strata_proto::StreamName;

    fn events() -> RecordBatch {
        use arrow::array::TimestampMillisecondArray;
        use arrow::array::{ArrayRef, Int32Array, Int64Array, StringArray};
        let schema = strata_store::schema::table_schema();
        let columns: Vec<ArrayRef> = vec![
            Arc::new(Int32Array::from(vec![1, 1])),
            Arc::new(Int64Array::from(vec![4, 9])),
            Arc::new(TimestampMillisecondArray::from(vec![0, 1000]).with_timezone("UTC")),
            Arc::new(StringArray::from(vec![Some("k"), None])),
            Arc::new(StringArray::from(vec![None, Some("e-9")])),
            Arc::new(StringArray::from(vec![Some("order"), None])),
            Arc::new(StringArray::from(vec!["{\"a\":1}", "{\"b\":\"x\\ny\"}"])),
            Arc::new(Int64Array::from(vec![Some(3), None])),
        ];
        RecordBatch::try_new(schema, columns).unwrap()
    }

    fn cursor() -> Cursor {
        Cursor {
            stream: StreamName::new("orders").unwrap(),
            offsets: BTreeMap::from([(0, 7), (1, 4)]),
        }
    }

    #[test]
    fn ndjson_events_carry_their_cursor() {
        let mut out = Vec::new();
        let delivery = Delivery::Events {
            batch: events(),
            cursor: cursor(),
        };
        encode(Framing::Ndjson, delivery, &mut out);
        let lines: Vec<serde_json::Value> = out
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["offset"], 4);
        assert_eq!(lines[0]["cursor"], "v1.orders.0-7.1-5");
        assert_eq!(lines[1]["cursor"], "v1.orders.0-7.1-10");
        assert_eq!(lines[1]["data"]["b"], "x\ny");
        let mut beat = Vec::new();
        encode(Framing::Ndjson, Delivery::Heartbeat(cursor()), &mut beat);
        assert_eq!(beat, b"{\"cursor\":\"v1.orders.0-7.1-4\"}\n");
    }

    #[test]
    fn sse_uses_the_cursor_as_event_id() {
        let mut out = Vec::new();
        let delivery = Delivery::Events {
            batch: events(),
            cursor: cursor(),
        };
        encode(Framing::Sse, delivery, &mut out);
        let text = String::from_utf8(out).unwrap();
        let frames: Vec<&str> = text.split("\n\n").filter(|f| !f.is_empty()).collect();
        assert_eq!(frames.len(), 2, "{text}");
        assert!(
            frames[0].starts_with("id: v1.orders.0-7.1-5\ndata: {"),
            "{text}"
        );
        // Each event's data is one line: a line break inside `data` stays escaped.
        assert!(frames.iter().all(|f| f.lines().count() == 2), "{text}");
        let mut beat = Vec::new();
        encode(Framing::Sse, Delivery::Heartbeat(cursor()), &mut beat);
        assert_eq!(beat, b": heartbeat\nid: v1.orders.0-7.1-4\n\n");
    }
}
