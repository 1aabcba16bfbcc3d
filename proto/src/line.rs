//! Replay's NDJSON lines, written without allocating: replay writes millions a second.

/// The longest head of a replay line: `{"partition":` (13 bytes), a `u32` (10), `,"offset":`
/// (10), a `u64` (20), `,"time":"` (9), the time (24) and its closing quote.
const HEAD_MAX: usize = 13 + 10 + 10 + 20 + 9 + 24 + 1;

/// The parts of one replay NDJSON line:
/// `{"partition","offset","time","key","id","type","version","data"}`.
#[derive(Clone, Copy, Debug)]
pub struct Line<'a> {
    /// Partition of the stream.
    pub partition: u32,
    /// Offset within the partition.
    pub offset: u64,
    /// Event time, milliseconds since the Unix epoch, written as RFC 3339 UTC.
    pub time_ms: i64,
    /// Partitioning key.
    pub key: Option<&'a str>,
    /// Producer-chosen id.
    pub id: Option<&'a str>,
    /// Event type.
    pub event_type: Option<&'a str>,
    /// The event's place among its key's events, written when known.
    pub version: Option<u64>,
    /// The payload: JSON text (validated when the event was appended), copied verbatim; empty
    /// is written as `null`.
    pub data: &'a str,
}

impl Line<'_> {
    /// Appends the line, with its trailing newline, to `out`. `plain_texts` says that the key,
    /// id and type are known to need no JSON escaping (a writer that checked the whole column
    /// at once with [`needs_escape`]); otherwise each is checked.
    ///
    /// Replay writes one line per event (millions a second), so the line's head — partition,
    /// offset and time — is written in place into a window of the buffer, digits and all,
    /// rather than piece by piece: each piece of variable length would be a call to `memcpy`.
    pub fn write(&self, out: &mut Vec<u8>, plain_texts: bool) {
        // Two copies of the writer: the one for checked columns has no per-value check at all.
        if plain_texts {
            self.write_as::<true>(out);
        } else {
            self.write_as::<false>(out);
        }
    }

    fn write_as<const PLAIN_TEXTS: bool>(&self, out: &mut Vec<u8>) {
        let Line {
            partition,
            offset,
            time_ms,
            key,
            id,
            event_type,
            version,
            data,
        } = *self;
        let texts = [key, id, event_type]
            .iter()
            .map(|v| v.map_or(4, str::len))
            .sum::<usize>();
        out.reserve(HEAD_MAX + texts + data.len() + 64);
        let start = out.len();
        out.resize(start + HEAD_MAX, 0);
        let head = &mut out[start..];
        let mut n = put(head, 0, b"{\"partition\":");
        n = put_u64(head, n, u64::from(partition));
        n = put(head, n, b",\"offset\":");
        n = put_u64(head, n, offset);
        n = put(head, n, b",\"time\":\"");
        match put_time(head, n, time_ms) {
            Some(end) => {
                head[end] = b'"';
                out.truncate(start + end + 1);
            }
            None => {
                out.truncate(start + n);
                write_time_ms(time_ms, out);
                out.push(b'"');
            }
        }
        for (name, value) in [
            (&b",\"key\":"[..], key),
            (b",\"id\":", id),
            (b",\"type\":", event_type),
        ] {
            out.extend_from_slice(name);
            match value {
                // Most keys, ids and types need no escaping: copied as they are.
                Some(v) if PLAIN_TEXTS || !needs_escape(v.as_bytes()) => {
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
            let at = out.len();
            out.resize(at + 20, 0);
            let end = put_u64(&mut out[at..], 0, v);
            out.truncate(at + end);
        }
        out.extend_from_slice(b",\"data\":");
        out.extend_from_slice(if data.is_empty() {
            b"null"
        } else {
            data.as_bytes()
        });
        out.extend_from_slice(b"}\n");
    }
}

/// Whether `text` holds a byte JSON must escape in a string (a control character, `"` or `\`),
/// looked for eight bytes at a time.
pub fn needs_escape(text: &[u8]) -> bool {
    const ONES: u64 = u64::from_ne_bytes([1; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    /// Whether a byte of `word` is below `n` (at most 0x80): the classic "has less" test, exact
    /// as a yes or no.
    fn has_below(word: u64, n: u8) -> bool {
        word.wrapping_sub(ONES * u64::from(n)) & !word & HIGHS != 0
    }
    fn has_byte(word: u64, b: u8) -> bool {
        has_below(word ^ (ONES * u64::from(b)), 1)
    }
    let mut words = text.chunks_exact(8);
    for chunk in &mut words {
        let Ok(bytes) = <[u8; 8]>::try_from(chunk) else {
            return true;
        };
        let word = u64::from_ne_bytes(bytes);
        if has_below(word, 0x20) | has_byte(word, b'"') | has_byte(word, b'\\') {
            return true;
        }
    }
    words
        .remainder()
        .iter()
        .any(|&b| b < 0x20 || b == b'"' || b == b'\\')
}

/// Copies `text` into `buf` at `at`; returns where it ends.
#[inline(always)]
fn put(buf: &mut [u8], at: usize, text: &[u8]) -> usize {
    buf[at..at + text.len()].copy_from_slice(text);
    at + text.len()
}

/// The two-digit decimal strings of 0..100, one after the other.
const PAIRS: [u8; 200] = {
    let mut pairs = [0u8; 200];
    let mut i = 0;
    while i < 100 {
        pairs[2 * i] = b'0' + (i / 10) as u8;
        pairs[2 * i + 1] = b'0' + (i % 10) as u8;
        i += 1;
    }
    pairs
};

/// Writes `pair` (below 100) as two digits into `buf` at `at`.
#[inline(always)]
fn put_pair(buf: &mut [u8], at: usize, pair: u32) {
    let i = pair as usize * 2;
    buf[at..at + 2].copy_from_slice(&PAIRS[i..i + 2]);
}

/// Writes `v` in decimal into `buf` at `at` (which has room for 20 digits); returns where it
/// ends.
fn put_u64(buf: &mut [u8], at: usize, mut v: u64) -> usize {
    let len = v.checked_ilog10().map_or(1, |l| l as usize + 1);
    let end = at + len;
    let mut i = end;
    while v >= 100 {
        i -= 2;
        put_pair(buf, i, (v % 100) as u32);
        v /= 100;
    }
    if v >= 10 {
        put_pair(buf, at, v as u32);
    } else {
        buf[at] = b'0' + v as u8;
    }
    end
}

/// Formats epoch milliseconds as RFC 3339 UTC with millisecond precision (`2024-05-01T12:00:00.000Z`).
pub fn format_time_ms(ms: i64) -> String {
    let mut out = Vec::with_capacity(24);
    write_time_ms(ms, &mut out);
    String::from_utf8(out).unwrap_or_default()
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

/// The civil date (`YYYY-MM-DD`) of `days` since 1970-01-01 (a year in 0000–9999), remembering
/// the last one per thread (replay writes runs of events from the same day).
fn date_text(days: i64) -> [u8; 10] {
    thread_local! {
        static LAST: std::cell::Cell<(i64, [u8; 10])> = const { std::cell::Cell::new((i64::MIN, [0; 10])) };
    }
    let (cached_days, text) = LAST.get();
    if cached_days == days {
        return text;
    }
    let (year, month, day) = civil_from_days(days);
    let mut text = [b'-'; 10];
    put_digits(&mut text[0..4], year);
    put_digits(&mut text[5..7], month);
    put_digits(&mut text[8..10], day);
    LAST.set((days, text));
    text
}

/// Writes epoch milliseconds as RFC 3339 UTC with millisecond precision into `buf` at `at`
/// (24 bytes); returns where it ends, or `None` for a year outside 0000–9999.
fn put_time(buf: &mut [u8], at: usize, ms: i64) -> Option<usize> {
    const MIN: i64 = -62_167_219_200_000; // 0000-01-01T00:00:00Z
    const MAX: i64 = 253_402_300_799_999; // 9999-12-31T23:59:59.999Z
    if !(MIN..=MAX).contains(&ms) {
        return None;
    }
    let in_day = ms.rem_euclid(86_400_000) as u32;
    let time = &mut buf[at..at + 24];
    time[..10].copy_from_slice(&date_text(ms.div_euclid(86_400_000)));
    time[10] = b'T';
    put_pair(time, 11, in_day / 3_600_000);
    time[13] = b':';
    put_pair(time, 14, in_day / 60_000 % 60);
    time[16] = b':';
    put_pair(time, 17, in_day / 1000 % 60);
    time[19] = b'.';
    time[20] = b'0' + (in_day % 1000 / 100) as u8;
    put_pair(time, 21, in_day % 100);
    time[23] = b'Z';
    Some(at + 24)
}

/// Appends epoch milliseconds as RFC 3339 UTC with millisecond precision, without allocating
/// (replay writes one per event). Years outside 0000–9999 fall back to chrono's format.
pub fn write_time_ms(ms: i64, out: &mut Vec<u8>) {
    let mut text = [0u8; 24];
    if put_time(&mut text, 0, ms).is_some() {
        out.extend_from_slice(&text);
        return;
    }
    let text = chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| ms.to_string());
    out.extend_from_slice(text.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Event, Record};
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
            time_ms in prop_oneof![any::<i64>(), -70_000_000_000_000i64..260_000_000_000_000i64],
            version in proptest::option::of(any::<u64>()),
        ) {
            let mut out = b"before".to_vec();
            let line = Line { partition, offset, time_ms, key: key.as_deref(), id: id.as_deref(), event_type: event_type.as_deref(), version, data: "{}" };
            line.write(&mut out, false);
            let out = out.strip_prefix(b"before").unwrap();
            // A writer that checked its columns at once writes the same line.
            let plain = [key.as_deref(), id.as_deref(), event_type.as_deref()]
                .iter()
                .all(|t| !needs_escape(t.unwrap_or_default().as_bytes()));
            if plain {
                let mut checked = b"before".to_vec();
                line.write(&mut checked, true);
                prop_assert_eq!(&checked[6..], out);
            }
            prop_assert_eq!(out.last(), Some(&b'\n'));
            let v: serde_json::Value = serde_json::from_slice(out).unwrap();
            prop_assert_eq!(v["partition"].as_u64(), Some(u64::from(partition)));
            prop_assert_eq!(v["offset"].as_u64(), Some(offset));
            prop_assert_eq!(v["key"].as_str(), key.as_deref());
            prop_assert_eq!(v["id"].as_str(), id.as_deref());
            prop_assert_eq!(v["type"].as_str(), event_type.as_deref());
            let time = format_time_ms(time_ms);
            prop_assert_eq!(v["time"].as_str(), Some(time.as_str()));
            prop_assert_eq!(v["version"].as_u64(), version);
            prop_assert_eq!(v["data"].as_object().map(|o| o.len()), Some(0));
        }

        #[test]
        fn escape_check_agrees_with_a_byte_by_byte_one(text in proptest::collection::vec(any::<u8>(), 0..40)) {
            let naive = text.iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\');
            prop_assert_eq!(needs_escape(&text), naive);
        }

        #[test]
        fn numbers_are_written_as_display_writes_them(v in prop_oneof![any::<u64>(), 0u64..1000]) {
            let mut buf = [b'x'; 24];
            let end = put_u64(&mut buf, 2, v);
            let text = v.to_string();
            prop_assert_eq!(&buf[2..end], text.as_bytes());
            prop_assert_eq!(buf[end], b'x');
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
