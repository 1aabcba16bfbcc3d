//! How events map to Kafka records and back (documented in the README):
//!
//! | event | Kafka record |
//! |---|---|
//! | `key` | record key (UTF-8) |
//! | `data` | record value, the JSON text |
//! | `id`, `type` | headers `id` and `type` (UTF-8) |
//! | `time` | record timestamp (milliseconds) |
//!
//! A value written by another Kafka client that is not JSON is, by default (`non_json =
//! "dead_letter"`), copied to the dead-letter topic `<prefix>__dead_letters` with headers naming
//! its source topic, partition, offset and the reason, counted in
//! `strata_kafka_dead_letters_total{stream,reason}`, and not stored; so is a value over
//! `max_value_bytes`. With `non_json = "store"` it is stored instead: valid UTF-8 text becomes a
//! JSON string of that text, anything else a JSON string of its standard base64 encoding; both
//! are counted in `strata_kafka_non_json_values_total{kind="text|binary"}`. A record without a
//! value stores `null`; one without a timestamp gets the time it was read.
//!
//! Expected-version appends (see `strata_proto::condition`) travel as headers: `strata-expect`
//! (`N`, `none` or `exists`: the key's version before the batch) and, for a batch of more than
//! one record, `strata-batch` (`index/count`) and `strata-batch-id` (the batch's tag, decimal:
//! the store gathers a batch only from records with its tag) on each of its records. A plain
//! Kafka producer conditions a record by setting `strata-expect` (and a batch with all three,
//! tagged: untagged batches are told apart only by their records' places, so two of one size
//! interleaved could be taken for one); a record whose condition headers do not parse goes to
//! the dead-letter topic (reason `bad_condition`).
//!
//! A record with the header `strata-control` is not an event: strata writes one to each partition
//! when fields are declared on an existing stream, to mark from which offset the new fields apply
//! (Kafka's own end offsets are not relied on). Store nodes skip it; other consumers of the topic
//! should too.

use base64::Engine;
use rdkafka::Message;
use rdkafka::message::{Header, Headers, OwnedHeaders};
use strata_proto::{Condition, Event, Record};

/// Header carrying the event id.
pub const ID_HEADER: &str = "id";
/// Header carrying the event type.
pub const TYPE_HEADER: &str = "type";
/// Header carrying a record's expected version.
pub const EXPECT_HEADER: &str = "strata-expect";
/// Header carrying a record's place in a conditional batch.
pub const BATCH_HEADER: &str = "strata-batch";
/// Header carrying a conditional batch's tag (decimal, the same on each of its records).
pub const BATCH_ID_HEADER: &str = "strata-batch-id";
/// Header marking a control record (not an event).
pub const CONTROL_HEADER: &str = "strata-control";

/// Whether `message` is a strata control record rather than an event.
pub fn is_control<M: Message>(message: &M) -> bool {
    message
        .headers()
        .is_some_and(|h| h.iter().any(|header| header.key == CONTROL_HEADER))
}

/// The headers of a control record of `kind`.
pub fn control_headers(kind: &str) -> OwnedHeaders {
    OwnedHeaders::new_with_capacity(1).insert(Header {
        key: CONTROL_HEADER,
        value: Some(kind.as_bytes()),
    })
}

/// The headers of an event's record (`None` when it has neither id nor type).
pub fn headers_for(event: &Event) -> Option<OwnedHeaders> {
    if event.id.is_none() && event.event_type.is_none() && event.condition.is_none() {
        return None;
    }
    let expect = event
        .condition
        .and_then(|c| c.expect)
        .map(strata_proto::Expect::to_text);
    let batch = event
        .condition
        .filter(|c| c.count > 1)
        .map(|c| c.batch_text());
    let batch_id = event
        .condition
        .filter(|c| c.count > 1 && c.batch_id != 0)
        .map(|c| c.batch_id.to_string());
    let mut headers = OwnedHeaders::new_with_capacity(5);
    for (key, value) in [
        (ID_HEADER, event.id.as_deref()),
        (TYPE_HEADER, event.event_type.as_deref()),
        (EXPECT_HEADER, expect.as_deref()),
        (BATCH_HEADER, batch.as_deref()),
        (BATCH_ID_HEADER, batch_id.as_deref()),
    ] {
        if let Some(value) = value {
            headers = headers.insert(Header {
                key,
                value: Some(value.as_bytes()),
            });
        }
    }
    Some(headers)
}

/// What kind of value a record held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValueKind {
    /// JSON text, kept.
    Json,
    /// UTF-8 text that is not JSON, stored as a JSON string.
    Text,
    /// Bytes that are not UTF-8, stored as a JSON string of their base64.
    Binary,
}

/// The `data` JSON (compact, one line) for a record value, and what the value was.
pub fn data_from_value(value: Option<&[u8]>) -> (String, ValueKind) {
    let Some(bytes) = value else {
        return ("null".to_owned(), ValueKind::Json);
    };
    match std::str::from_utf8(bytes) {
        Ok(text) => match serde_json::from_str::<serde::de::IgnoredAny>(text) {
            Ok(_) if !text.contains(['\n', '\r']) => (text.trim().to_owned(), ValueKind::Json),
            Ok(_) => match serde_json::from_str::<serde_json::Value>(text) {
                // Pretty-printed JSON: stored compact, one line.
                Ok(v) => (v.to_string(), ValueKind::Json),
                Err(_) => (json_string(text), ValueKind::Text),
            },
            Err(_) => (json_string(text), ValueKind::Text),
        },
        Err(_) => (
            json_string(&base64::engine::general_purpose::STANDARD.encode(bytes)),
            ValueKind::Binary,
        ),
    }
}

fn json_string(text: &str) -> String {
    serde_json::Value::String(text.to_owned()).to_string()
}

/// Why a consumed record goes to the dead-letter topic instead of a shard, if it does.
pub fn dead_letter_reason<M: Message>(
    message: &M,
    consumed: &Consumed,
    config: &super::KafkaConfig,
) -> Option<&'static str> {
    let len = message.payload().map_or(0, <[u8]>::len);
    if len > config.max_value_bytes {
        return Some("too_large");
    }
    if consumed.bad_condition {
        return Some("bad_condition");
    }
    match (consumed.kind, config.non_json) {
        (ValueKind::Json, _) | (_, super::NonJson::Store) => None,
        (ValueKind::Text, super::NonJson::DeadLetter) => Some("not_json"),
        (ValueKind::Binary, super::NonJson::DeadLetter) => Some("not_utf8"),
    }
}

/// The headers of the dead-letter copy of `message`: its own, then where it came from and why.
pub fn dead_letter_headers<M: Message>(message: &M, reason: &str) -> OwnedHeaders {
    let mut headers = OwnedHeaders::new();
    if let Some(h) = message.headers() {
        for header in h.iter() {
            headers = headers.insert(header);
        }
    }
    let partition = message.partition().to_string();
    let offset = message.offset().to_string();
    for (key, value) in [
        ("strata-source-topic", message.topic()),
        ("strata-source-partition", partition.as_str()),
        ("strata-source-offset", offset.as_str()),
        ("strata-reason", reason),
    ] {
        headers = headers.insert(Header {
            key,
            value: Some(value.as_bytes()),
        });
    }
    headers
}

/// Counts a stored value that was not JSON (see the module documentation).
pub fn count_value(stream: &str, kind: ValueKind, n: u64) {
    let kind = match kind {
        ValueKind::Json => return,
        ValueKind::Text => "text",
        ValueKind::Binary => "binary",
    };
    if n > 0 {
        metrics::counter!("strata_kafka_non_json_values_total", "stream" => stream.to_owned(), "kind" => kind)
            .increment(n);
    }
}

/// What a consumed message becomes.
pub struct Consumed {
    /// The record (without a condition when its condition headers do not parse).
    pub record: Record,
    /// What its value was.
    pub kind: ValueKind,
    /// Whether its condition headers do not parse (see the module documentation).
    pub bad_condition: bool,
}

/// The record a consumed message becomes, what its value was, and whether its condition
/// headers parse; `now_ms` stands in for a missing timestamp.
pub fn record_from_message<M: Message>(message: &M, now_ms: i64) -> Consumed {
    let (data, kind) = data_from_value(message.payload());
    let [mut id, mut event_type, mut expect, mut batch, mut batch_id] =
        [None, None, None, None, None];
    if let Some(headers) = message.headers() {
        for header in headers.iter() {
            let slot = match header.key {
                ID_HEADER => &mut id,
                TYPE_HEADER => &mut event_type,
                EXPECT_HEADER => &mut expect,
                BATCH_HEADER => &mut batch,
                BATCH_ID_HEADER => &mut batch_id,
                _ => continue,
            };
            if let Some(value) = header.value {
                *slot = Some(String::from_utf8_lossy(value).into_owned());
            }
        }
    }
    let condition = match (&expect, &batch) {
        (None, None) => Ok(None),
        _ => Condition::from_headers(expect.as_deref(), batch.as_deref(), batch_id.as_deref())
            .map(Some),
    };
    let record = Record {
        partition: u32::try_from(message.partition()).unwrap_or(0),
        offset: u64::try_from(message.offset()).unwrap_or(0),
        event: Event {
            time_ms: message.timestamp().to_millis().unwrap_or(now_ms),
            key: message
                .key()
                .map(|k| String::from_utf8_lossy(k).into_owned()),
            id,
            event_type,
            data,
            condition: condition.as_ref().ok().copied().flatten(),
        },
    };
    Consumed {
        record,
        kind,
        bad_condition: condition.is_err(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::Timestamp;
    use rdkafka::message::OwnedMessage;

    #[test]
    fn values_become_json() {
        assert_eq!(
            data_from_value(Some(br#"{"a":1}"#)),
            (r#"{"a":1}"#.to_owned(), ValueKind::Json)
        );
        assert_eq!(
            data_from_value(Some(b"{\n  \"a\": [1, 2]\n}\n")),
            (r#"{"a":[1,2]}"#.to_owned(), ValueKind::Json)
        );
        assert_eq!(
            data_from_value(Some(b"hello \"world\"")),
            (r#""hello \"world\"""#.to_owned(), ValueKind::Text)
        );
        assert_eq!(
            data_from_value(Some(&[0xff, 0x00, 0x10])),
            (r#""/wAQ""#.to_owned(), ValueKind::Binary)
        );
        assert_eq!(data_from_value(None), ("null".to_owned(), ValueKind::Json));
        assert_eq!(
            data_from_value(Some(b"42")),
            ("42".to_owned(), ValueKind::Json)
        );
    }

    /// The record strata writes for `event` at `offset` of partition 2.
    fn message_of(event: &Event, offset: i64) -> OwnedMessage {
        OwnedMessage::new(
            Some(event.data.clone().into_bytes()),
            event.key.clone().map(String::into_bytes),
            "strata.orders".into(),
            Timestamp::CreateTime(event.time_ms),
            2,
            offset,
            headers_for(event),
        )
    }

    #[test]
    fn event_round_trips_through_a_message() {
        let event = Event {
            time_ms: 1_700_000_000_123,
            key: Some("c-1".into()),
            id: Some("o-1".into()),
            event_type: Some("order".into()),
            data: r#"{"amount":3.5}"#.into(),
            condition: None,
        };
        let Consumed { record, kind, .. } = record_from_message(&message_of(&event, 17), 0);
        assert_eq!(kind, ValueKind::Json);
        assert_eq!(record.partition, 2);
        assert_eq!(record.offset, 17);
        assert_eq!(record.event, event);

        // A record of a conditional batch keeps its place and its batch's tag.
        let conditional = Event {
            condition: Some(Condition {
                expect: Some(strata_proto::Expect::Version(4)),
                index: 1,
                count: 3,
                batch_id: 12_345_678_901,
            }),
            ..event
        };
        let consumed = record_from_message(&message_of(&conditional, 18), 0);
        assert!(!consumed.bad_condition);
        assert_eq!(consumed.record.event, conditional);

        let bare = OwnedMessage::new(
            Some(b"plain".to_vec()),
            None,
            "strata.orders".into(),
            Timestamp::NotAvailable,
            0,
            0,
            None,
        );
        assert!(!is_control(&bare));
        let control = OwnedMessage::new(
            None,
            None,
            "strata.orders".into(),
            Timestamp::NotAvailable,
            0,
            1,
            Some(control_headers("fields")),
        );
        assert!(is_control(&control));
        let Consumed { record, kind, .. } = record_from_message(&bare, 99);
        assert_eq!(kind, ValueKind::Text);
        assert_eq!(record.event.time_ms, 99);
        assert_eq!(record.event.data, r#""plain""#);
        assert_eq!(record.event.key, None);
    }
}
