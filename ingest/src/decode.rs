//! Decoding of append bodies: NDJSON (one event per line) or a JSON array of events.

use crate::{Error, Result};
use serde::Deserialize;
use serde::de::{Deserializer, Error as _};
use serde_json::Value;
use serde_json::value::RawValue;
use strata_proto::fields::{json_kind, validate_fields};
use strata_proto::{Condition, Event, Expect, FieldDef};

/// Limits applied while decoding one append body.
#[derive(Clone, Copy, Debug)]
pub struct DecodeLimits {
    /// Largest encoded event, in bytes.
    pub max_event_bytes: usize,
    /// Most events in one body.
    pub max_events: usize,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self {
            max_event_bytes: 1 << 20,
            max_events: 100_000,
        }
    }
}

/// Longest accepted `key` or `id`, in bytes.
pub const MAX_KEY_BYTES: usize = 4096;
/// Longest accepted `type`, in bytes.
pub const MAX_TYPE_BYTES: usize = 256;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventInput<'a> {
    #[serde(borrow, default, deserialize_with = "present_raw")]
    data: Option<&'a RawValue>,
    #[serde(default, deserialize_with = "de_key")]
    key: Option<String>,
    #[serde(default, deserialize_with = "de_id")]
    id: Option<String>,
    #[serde(default, rename = "type", deserialize_with = "de_type")]
    event_type: Option<String>,
    #[serde(default)]
    time: Option<Value>,
    #[serde(default)]
    expected_version: Option<u64>,
    #[serde(default)]
    expect: Option<String>,
}

/// Keeps an explicit `null` as present (`data` may be any JSON value, `null` included).
fn present_raw<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

fn de_string<'de, D: Deserializer<'de>>(
    d: D,
    field: &str,
    max: usize,
) -> Result<Option<String>, D::Error> {
    match Option::<Value>::deserialize(d)? {
        None => Ok(None),
        Some(Value::String(s)) if s.len() > max => Err(D::Error::custom(format!(
            "`{field}` is {} bytes, over the limit of {max}",
            s.len()
        ))),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(D::Error::custom(format!(
            "`{field}` must be a string, got {}",
            json_kind(&other)
        ))),
    }
}

fn de_key<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    de_string(d, "key", MAX_KEY_BYTES)
}
fn de_id<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    de_string(d, "id", MAX_KEY_BYTES)
}
fn de_type<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    de_string(d, "type", MAX_TYPE_BYTES)
}

/// Parses an event time: RFC 3339 text or epoch milliseconds.
pub fn parse_time(v: &Value) -> std::result::Result<i64, String> {
    match v {
        Value::Number(n) => n.as_i64().ok_or_else(|| {
            format!("`time` {n} is not a whole number of milliseconds since the epoch")
        }),
        Value::String(s) => parse_rfc3339(s),
        other => Err(format!(
            "`time` must be RFC 3339 text or epoch milliseconds, got {}",
            json_kind(other)
        )),
    }
}

/// Parses RFC 3339 text (`2024-05-01T12:00:00Z`, with any offset) into epoch milliseconds.
pub fn parse_rfc3339(s: &str) -> std::result::Result<i64, String> {
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.timestamp_millis())
        .map_err(|e| format!("`time` {s:?} is not RFC 3339 ({e}); e.g. 2024-05-01T12:00:00Z"))
}

fn decode_one(
    text: &str,
    arrival_ms: i64,
    limits: &DecodeLimits,
    fields: &[FieldDef],
) -> std::result::Result<Event, String> {
    if text.len() > limits.max_event_bytes {
        return Err(format!(
            "event is {} bytes, over the limit of {}",
            text.len(),
            limits.max_event_bytes
        ));
    }
    if !text.trim_start().starts_with('{') {
        return Err("an event must be a JSON object with a `data` field".to_owned());
    }
    let input: EventInput = serde_json::from_str(text).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => e.to_string(),
        _ => format!("invalid JSON: {e}"),
    })?;
    let data = input
        .data
        .ok_or_else(|| "missing `data` (any JSON value, required)".to_owned())?;
    let raw = data.get();
    validate_fields(raw, fields)?;
    let data = one_line_json(raw)?;
    let time_ms = match input.time {
        None | Some(Value::Null) => arrival_ms,
        Some(v) => parse_time(&v)?,
    };
    let expect = match (input.expected_version, input.expect.as_deref()) {
        (None, None) => None,
        (Some(v), None) => Some(Expect::Version(v)),
        (None, Some("none")) => Some(Expect::None),
        (None, Some("exists")) => Some(Expect::Exists),
        (None, Some(other)) => {
            return Err(format!(
                "`expect` must be \"none\" or \"exists\" (or give `expected_version`), got {other:?}"
            ));
        }
        (Some(_), Some(_)) => {
            return Err("give `expected_version` or `expect`, not both".to_owned());
        }
    };
    if expect.is_some() && input.key.is_none() {
        return Err(
            "an expected version needs a `key`: a version is the count of a key's events"
                .to_owned(),
        );
    }
    // The client's statement; the write path turns it into the record's place in its batch.
    let condition = expect.map(|e| Condition {
        expect: Some(e),
        index: 0,
        count: 0,
        batch_id: 0,
    });
    Ok(Event {
        time_ms,
        key: input.key,
        id: input.id,
        event_type: input.event_type,
        data,
        condition,
    })
}

/// `data` as stored: JSON as given, or compacted when it spans lines (pretty-printed input), so
/// that replay stays one event per line.
pub(crate) fn one_line_json(raw: &str) -> std::result::Result<String, String> {
    // memchr: `str::contains` with a char set decodes every character (~5 % of decoding).
    if memchr::memchr2(b'\n', b'\r', raw.as_bytes()).is_some() {
        let v: Value = serde_json::from_str(raw).map_err(|e| format!("invalid `data`: {e}"))?;
        Ok(v.to_string())
    } else {
        Ok(raw.to_owned())
    }
}

/// Decodes a whole append body. A body whose first non-blank character is `[` is a JSON array of
/// events; anything else is NDJSON with one event per line (blank lines are skipped). Events
/// without a `time` get `arrival_ms`. Members of `data` named like a declared field must have its
/// type. The first bad event fails the whole batch, naming its line (or array element) and the
/// reason.
pub fn decode_batch(
    body: &[u8],
    arrival_ms: i64,
    limits: &DecodeLimits,
    fields: &[FieldDef],
) -> Result<Vec<Event>> {
    let text = std::str::from_utf8(body).map_err(|e| {
        let line = body[..e.valid_up_to()]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
            + 1;
        Error::BadEvent {
            location: format!("line {line}"),
            reason: "the body is not valid UTF-8".to_owned(),
        }
    })?;
    let events = if text.trim_start().starts_with('[') {
        let elements: Vec<&RawValue> = serde_json::from_str(text).map_err(|e| Error::BadEvent {
            location: format!("line {}", e.line()),
            reason: format!("the body starts with '[' but is not a JSON array: {e}"),
        })?;
        check_count(elements.len(), limits)?;
        elements
            .iter()
            .enumerate()
            .map(|(i, raw)| {
                decode_at(raw.get(), arrival_ms, limits, fields, || {
                    format!("element {}", i + 1)
                })
            })
            .collect::<Result<Vec<_>>>()?
    } else {
        let mut events = Vec::new();
        for (i, line) in text.split('\n').enumerate() {
            let line = line.strip_suffix('\r').unwrap_or(line);
            if line.trim().is_empty() {
                continue;
            }
            check_count(events.len() + 1, limits)?;
            events.push(decode_at(line, arrival_ms, limits, fields, || {
                format!("line {}", i + 1)
            })?);
        }
        events
    };
    if events.is_empty() {
        return Err(Error::EmptyBatch);
    }
    Ok(events)
}

/// Decodes one event, naming `location` in its error; an event over the size limit gets
/// [`Error::EventTooLarge`].
fn decode_at(
    text: &str,
    arrival_ms: i64,
    limits: &DecodeLimits,
    fields: &[FieldDef],
    location: impl Fn() -> String,
) -> Result<Event> {
    if text.len() > limits.max_event_bytes {
        return Err(Error::EventTooLarge {
            location: location(),
            size: text.len(),
            max: limits.max_event_bytes,
        });
    }
    decode_one(text, arrival_ms, limits, fields).map_err(|reason| Error::BadEvent {
        location: location(),
        reason,
    })
}

fn check_count(count: usize, limits: &DecodeLimits) -> Result<()> {
    if count > limits.max_events {
        Err(Error::TooManyEvents {
            count,
            max: limits.max_events,
        })
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(body: &str) -> Result<Vec<Event>> {
        decode_batch(body.as_bytes(), 42, &DecodeLimits::default(), &[])
    }

    fn reason(body: &str) -> String {
        decode(body).unwrap_err().to_string()
    }

    #[test]
    fn ndjson_and_arrays() {
        let nd = decode("{\"data\":{\"a\":1},\"key\":\"k\",\"id\":\"i\",\"type\":\"t\",\"time\":1000}\n\n{\"data\":2}\r\n").unwrap();
        assert_eq!(nd.len(), 2);
        assert_eq!(
            nd[0],
            Event {
                time_ms: 1000,
                key: Some("k".into()),
                id: Some("i".into()),
                event_type: Some("t".into()),
                data: "{\"a\":1}".into(),
                condition: None,
            }
        );
        assert_eq!(nd[1].time_ms, 42);
        assert_eq!(nd[1].data, "2");
        let arr = decode("[ {\"data\": {\n \"a\": [1,\n 2]}}, {\"data\": null, \"time\": \"2024-05-01T12:00:00+02:00\"} ]").unwrap();
        assert_eq!(arr[0].data, "{\"a\":[1,2]}");
        assert_eq!(arr[1].data, "null");
        assert_eq!(arr[1].time_ms, 1_714_557_600_000);
    }

    #[test]
    fn errors_name_the_line_and_reason() {
        assert_eq!(
            reason("{\"data\":1}\n{\"key\":\"k\"}"),
            "line 2: missing `data` (any JSON value, required)"
        );
        assert!(
            reason("{\"data\":1}\n\n{\"data\":1,\"key\":5}")
                .starts_with("line 3: `key` must be a string, got an integer")
        );
        for (value, kind) in [
            ("[\"k\"]", "an array"),
            ("{\"k\":1}", "an object"),
            ("true", "a boolean"),
            ("-1.5", "a number"),
        ] {
            for field in ["key", "id", "type"] {
                let body = format!("{{\"data\":1,\"{field}\":{value}}}");
                assert!(
                    reason(&body)
                        .starts_with(&format!("line 1: `{field}` must be a string, got {kind}")),
                    "{body}: {}",
                    reason(&body)
                );
            }
        }
        let events =
            decode("{\"data\":1,\"key\":null,\"id\":\"i\\u00e9\",\"type\":\"t\"}").unwrap();
        assert_eq!(
            (
                events[0].key.as_deref(),
                events[0].id.as_deref(),
                events[0].event_type.as_deref()
            ),
            (None, Some("ié"), Some("t"))
        );
        assert!(reason("{\"data\":1,\"dat\":2}").contains("unknown field `dat`"));
        assert!(reason("{\"data\":1,\"time\":\"yesterday\"}").contains("not RFC 3339"));
        assert!(reason("{\"data\":1,\"time\":1.5}").contains("not a whole number"));
        assert!(reason("{\"data\":1").starts_with("line 1: invalid JSON"));
        assert_eq!(
            reason("42"),
            "line 1: an event must be a JSON object with a `data` field"
        );
        assert!(reason("[{\"data\":1}, 3]").starts_with("element 2:"));
        assert!(reason("[{\"data\":1}").contains("not a JSON array"));
        assert_eq!(reason("\n \n"), Error::EmptyBatch.to_string());
        assert_eq!(reason("[]"), Error::EmptyBatch.to_string());
    }

    #[test]
    fn limits() {
        let limits = DecodeLimits {
            max_event_bytes: 20,
            max_events: 2,
        };
        let e = decode_batch(b"{\"data\":\"0123456789abcdef\"}", 0, &limits, &[]).unwrap_err();
        assert!(e.to_string().contains("over the limit of 20"), "{e}");
        let e =
            decode_batch(b"{\"data\":1}\n{\"data\":1}\n{\"data\":1}", 0, &limits, &[]).unwrap_err();
        assert!(matches!(e, Error::TooManyEvents { .. }), "{e}");
        let long_key = format!(
            "{{\"data\":1,\"key\":\"{}\"}}",
            "k".repeat(MAX_KEY_BYTES + 1)
        );
        assert!(reason(&long_key).contains("over the limit"));
    }

    #[test]
    fn invalid_utf8_is_refused() {
        let e = decode_batch(
            b"{\"data\":1}\n{\"data\":\"\xff\"}",
            0,
            &DecodeLimits::default(),
            &[],
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("line 2: the body is not valid UTF-8"),
            "{e}"
        );
    }
}
