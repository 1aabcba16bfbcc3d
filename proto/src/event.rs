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
    /// The expected-version condition it travels with to the log (see [`crate::condition`]);
    /// `None` for a plain append. Never stored in a shard.
    pub condition: Option<crate::Condition>,
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
            None,
            &self.event.data,
        );
    }
}

/// Writes one replay NDJSON line from the parts of a record; `data` must be JSON text (it was
/// validated when the event was appended) and is copied verbatim. `version` (the event's place
/// among its key's events) is written when known.
#[allow(clippy::too_many_arguments)]
pub fn write_ndjson_fields(
    out: &mut Vec<u8>,
    partition: u32,
    offset: u64,
    time_ms: i64,
    key: Option<&str>,
    id: Option<&str>,
    event_type: Option<&str>,
    version: Option<u64>,
    data: &str,
) {
    out.extend_from_slice(b"{\"partition\":");
    push_u64(out, u64::from(partition));
    out.extend_from_slice(b",\"offset\":");
    push_u64(out, offset);
    out.extend_from_slice(b",\"time\":\"");
    write_time_ms(time_ms, out);
    out.push(b'"');
    for (name, value) in [("key", key), ("id", id), ("type", event_type)] {
        out.extend_from_slice(b",\"");
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b"\":");
        match value {
            // Most keys, ids and types need no escaping: copied as they are.
            Some(v) if v.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') => {
                out.push(b'"');
                out.extend_from_slice(v.as_bytes());
                out.push(b'"');
            }
            // Writing a &str into a Vec cannot fail.
            Some(v) => {
                let _ = serde_json::to_writer(&mut *out, v);
            }
            None => out.extend_from_slice(b"null"),
        }
    }
    if let Some(v) = version {
        out.extend_from_slice(b",\"version\":");
        push_u64(out, v);
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
    let mut out = Vec::with_capacity(24);
    write_time_ms(ms, &mut out);
    String::from_utf8(out).unwrap_or_default()
}

fn push_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

fn push_digits(out: &mut Vec<u8>, v: u32, width: usize) {
    let mut digits = [b'0'; 10];
    put_digits(&mut digits[..width], i64::from(v));
    out.extend_from_slice(&digits[..width]);
}

/// Writes the last `out.len()` decimal digits of `value` (not negative) into `out`, zero-padded.
pub fn put_digits(out: &mut [u8], mut value: i64) {
    for digit in out.iter_mut().rev() {
        *digit = b'0' + u8::try_from(value % 10).unwrap_or(0);
        value /= 10;
    }
}

/// The proleptic Gregorian year, month and day of `days` since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`).
pub fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Appends the civil date (`YYYY-MM-DD`) of `days` since 1970-01-01, remembering the last one
/// per thread (replay writes runs of events from the same day).
fn push_date(out: &mut Vec<u8>, days: i64) {
    thread_local! {
        static LAST: std::cell::Cell<(i64, [u8; 10])> = const { std::cell::Cell::new((i64::MIN, [0; 10])) };
    }
    let (cached_days, text) = LAST.get();
    if cached_days == days {
        out.extend_from_slice(&text);
        return;
    }
    let (year, month, day) = civil_from_days(days);
    let (year, month, day) = (year as u32, month as u32, day as u32);
    let mut date = Vec::with_capacity(10);
    push_digits(&mut date, year, 4);
    date.push(b'-');
    push_digits(&mut date, month, 2);
    date.push(b'-');
    push_digits(&mut date, day, 2);
    let mut text = [0u8; 10];
    text.copy_from_slice(&date);
    LAST.set((days, text));
    out.extend_from_slice(&text);
}

/// Appends epoch milliseconds as RFC 3339 UTC with millisecond precision, without allocating
/// (replay writes one per event). Years outside 0000–9999 fall back to chrono's format.
pub fn write_time_ms(ms: i64, out: &mut Vec<u8>) {
    const MIN: i64 = -62_167_219_200_000; // 0000-01-01T00:00:00Z
    const MAX: i64 = 253_402_300_799_999; // 9999-12-31T23:59:59.999Z
    if !(MIN..=MAX).contains(&ms) {
        let text = chrono::DateTime::from_timestamp_millis(ms)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
            .unwrap_or_else(|| ms.to_string());
        out.extend_from_slice(text.as_bytes());
        return;
    }
    let days = ms.div_euclid(86_400_000);
    let in_day = ms.rem_euclid(86_400_000) as u32;
    push_date(out, days);
    out.push(b'T');
    push_digits(out, in_day / 3_600_000, 2);
    out.push(b':');
    push_digits(out, in_day / 60_000 % 60, 2);
    out.push(b':');
    push_digits(out, in_day / 1000 % 60, 2);
    out.push(b'.');
    push_digits(out, in_day % 1000, 3);
    out.push(b'Z');
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn time_format_matches_chrono(ms in -70_000_000_000_000i64..260_000_000_000_000i64) {
            let chrono = chrono::DateTime::from_timestamp_millis(ms).unwrap().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
            prop_assert_eq!(format_time_ms(ms), chrono);
        }

        #[test]
        fn ndjson_line_round_trips_any_text_and_numbers(
            partition in any::<u32>(),
            offset in any::<u64>(),
            key in proptest::option::of(any::<String>()),
            id in proptest::option::of("[ -~]{0,12}"),
            event_type in proptest::option::of("\\PC{0,8}"),
        ) {
            let mut out = Vec::new();
            write_ndjson_fields(&mut out, partition, offset, 0, key.as_deref(), id.as_deref(), event_type.as_deref(), None, "{}");
            prop_assert_eq!(out.last(), Some(&b'\n'));
            let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
            prop_assert_eq!(v["partition"].as_u64(), Some(u64::from(partition)));
            prop_assert_eq!(v["offset"].as_u64(), Some(offset));
            prop_assert_eq!(v["key"].as_str(), key.as_deref());
            prop_assert_eq!(v["id"].as_str(), id.as_deref());
            prop_assert_eq!(v["type"].as_str(), event_type.as_deref());
        }
    }

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
                condition: None,
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
