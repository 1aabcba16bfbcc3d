//! The event envelope.

/// One validated event as the log and the store keep it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// Event time, milliseconds since the Unix epoch (UTC).
    pub time_ms: i64,
    /// Partitioning key: events with the same key go to the same partition, in order.
    pub key: Option<String>,
    /// Producer-chosen id: an event whose id the partition already holds is not stored twice.
    pub id: Option<String>,
    /// Free-form event type.
    pub event_type: Option<String>,
    /// The payload as compact JSON text (one line, no raw newlines).
    pub data: String,
}

impl Event {
    /// Approximate size in bytes of the event's payload fields, for metrics and limits.
    pub fn approx_size(&self) -> usize {
        8 + self.key.as_ref().map_or(0, String::len)
            + self.id.as_ref().map_or(0, String::len)
            + self.event_type.as_ref().map_or(0, String::len)
            + self.data.len()
    }
}

/// An event at its place in the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Partition of the stream.
    pub partition: u32,
    /// Offset within the partition.
    pub offset: u64,
    /// The event.
    pub event: Event,
}

impl Record {
    /// Appends this record as one NDJSON line (with the trailing newline) to `out`:
    /// `{"partition","offset","time","key","id","type","data"}`, `data` verbatim as stored JSON.
    pub fn write_ndjson(&self, out: &mut Vec<u8>) {
        write_ndjson_fields(
            out,
            self.partition,
            self.offset,
            self.event.time_ms,
            self.event.key.as_deref(),
            self.event.id.as_deref(),
            self.event.event_type.as_deref(),
            &self.event.data,
        );
    }
}

/// Writes one replay NDJSON line from the parts of a record; `data` must be JSON text (it was
/// validated when the event was appended) and is copied verbatim.
#[allow(clippy::too_many_arguments)]
pub fn write_ndjson_fields(
    out: &mut Vec<u8>,
    partition: u32,
    offset: u64,
    time_ms: i64,
    key: Option<&str>,
    id: Option<&str>,
    event_type: Option<&str>,
    data: &str,
) {
    use std::io::Write;
    let _ = write!(
        out,
        "{{\"partition\":{partition},\"offset\":{offset},\"time\":\"{}\"",
        format_time_ms(time_ms)
    );
    for (name, value) in [("key", key), ("id", id), ("type", event_type)] {
        out.extend_from_slice(b",\"");
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b"\":");
        match value {
            // Writing a &str into a Vec cannot fail.
            Some(v) => {
                let _ = serde_json::to_writer(&mut *out, v);
            }
            None => out.extend_from_slice(b"null"),
        }
    }
    out.extend_from_slice(b",\"data\":");
    out.extend_from_slice(if data.is_empty() {
        b"null"
    } else {
        data.as_bytes()
    });
    out.extend_from_slice(b"}\n");
}

/// Formats epoch milliseconds as RFC 3339 UTC with millisecond precision (`2024-05-01T12:00:00.000Z`).
pub fn format_time_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| ms.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ndjson_line_has_every_field() {
        let r = Record {
            partition: 2,
            offset: 7,
            event: Event {
                time_ms: 1_714_564_800_000,
                key: Some("k".into()),
                id: None,
                event_type: Some("order".into()),
                data: r#"{"a":1}"#.into(),
            },
        };
        let mut out = Vec::new();
        r.write_ndjson(&mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"partition\":2,\"offset\":7,\"time\":\"2024-05-01T12:00:00.000Z\",\"key\":\"k\",\"id\":null,\"type\":\"order\",\"data\":{\"a\":1}}\n"
        );
    }
}
