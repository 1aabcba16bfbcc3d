//! Fuzz targets, driven by proptest: the NDJSON/JSON event decoder, and the embedded log's frame
//! scan and crash recovery. Each runs `PROPTEST_CASES` cases (proptest's default, 256, in the
//! test command); `scripts/fuzz.sh` runs them longer. No input may panic or hang, and whatever is
//! accepted is checked against a simple model.

use crate::decode::{DecodeLimits, decode_batch};
use crate::embedded::frame::encode_frame;
use crate::embedded::segment::{scan_segment, segment_path};
use crate::embedded::{EmbeddedLog, EmbeddedLogConfig};
use proptest::prelude::*;
use serde_json::{Value, json};
use std::time::Duration;
use strata_proto::{Error, Event, Log, StreamName};

/// A JSON value, nested a little.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        // Binary fractions: exact in text both ways.
        (-1_000_000i64..1_000_000).prop_map(|n| json!(n as f64 / 8.0)),
        "\\PC{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z]{1,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// One line of an append body: a valid event (`Ok(data)`), or something that is not one.
fn line() -> impl Strategy<Value = (String, Option<Value>)> {
    let valid = (
        json_value(),
        proptest::option::of("[a-z0-9-]{1,8}"),
        proptest::option::of("[a-z0-9]{1,8}"),
        proptest::option::of(0i64..4_000_000_000_000),
    )
        .prop_map(|(data, key, id, time)| {
            let mut event = json!({ "data": data });
            if let Some(k) = key {
                event["key"] = json!(k);
            }
            if let Some(i) = id {
                event["id"] = json!(i);
            }
            if let Some(t) = time {
                event["time"] = json!(t);
            }
            (event.to_string(), Some(data))
        });
    let invalid = prop_oneof![
        "\\PC{1,40}".prop_filter("not blank", |s| !s.trim().is_empty()),
        // (Arrays are left out: a body starting with `[` is a JSON array, tested below.)
        json_value()
            .prop_filter("not an object", |v| !v.is_object() && !v.is_array())
            .prop_map(|v| v.to_string()),
        json_value().prop_map(|v| json!({ "data": v, "extra": 1 }).to_string()),
        json_value().prop_map(|v| json!({ "data": v, "key": 5 }).to_string()),
        json_value().prop_map(|v| json!({ "data": v, "time": "yesterday" }).to_string()),
        Just("{\"key\": \"no data\"}".to_owned()),
        "[{}\\[\\]\":,a-z0-9 ]{1,30}".prop_filter("not blank", |s| !s.trim().is_empty()),
    ]
    .prop_filter("not an array", |s| !s.trim_start().starts_with('['))
    .prop_map(|s| (s, None));
    prop_oneof![4 => valid, 1 => invalid]
}

fn limits() -> DecodeLimits {
    DecodeLimits {
        max_event_bytes: 4096,
        max_events: 50,
    }
}

proptest! {
    /// Arbitrary bytes: an error or events, never a panic, never more than the limits allow.
    #[test]
    fn fuzz_decoder_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        match decode_batch(&bytes, 0, &limits(), &[]) {
            Ok(events) => prop_assert!(!events.is_empty() && events.len() <= 50),
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }

    /// NDJSON of valid and invalid lines: accepted exactly when every line is valid, keeping each
    /// event's `data`; otherwise refused naming the first bad line. Same as a JSON array.
    #[test]
    fn fuzz_decoder_matches_the_model(lines in prop::collection::vec(line(), 1..12), crlf in any::<bool>()) {
        let body = lines.iter().map(|(l, _)| l.as_str()).collect::<Vec<_>>().join(if crlf { "\r\n" } else { "\n" });
        let first_bad = lines.iter().position(|(_, data)| data.is_none());
        match (decode_batch(body.as_bytes(), 7, &limits(), &[]), first_bad) {
            (Ok(events), None) => {
                prop_assert_eq!(events.len(), lines.len());
                for (event, (_, data)) in events.iter().zip(&lines) {
                    let stored: Value = serde_json::from_str(&event.data).unwrap();
                    prop_assert_eq!(Some(&stored), data.as_ref());
                    prop_assert!(!event.data.contains('\n'));
                }
            }
            (Err(e), Some(bad)) => {
                // A bad line may also be read as part of the next one's failure; it is never later.
                let message = e.to_string();
                prop_assert!(message.starts_with("line "), "{}", message);
                let n: usize = message["line ".len()..].split(':').next().unwrap().parse().unwrap();
                prop_assert!(n <= bad + 1, "{} (first bad line {})", message, bad + 1);
            }
            (outcome, bad) => prop_assert!(false, "{:?} with first bad line {:?}: {}", outcome.map(|e| e.len()), bad, body),
        }
        if first_bad.is_none() {
            let array = format!("[{}]", lines.iter().map(|(l, _)| l.as_str()).collect::<Vec<_>>().join(","));
            prop_assert_eq!(decode_batch(array.as_bytes(), 7, &limits(), &[]).unwrap().len(), lines.len());
        }
    }

    /// A segment with a damaged tail or body: the scan keeps exactly the frames before the first
    /// damaged byte, and says where it stopped.
    #[test]
    fn fuzz_frame_scan_keeps_the_intact_prefix(
        frames in prop::collection::vec(prop::collection::vec("\\PC{0,30}", 1..5), 1..8),
        damage in 0usize..3,
        at in any::<prop::sample::Index>(),
        garbage in prop::collection::vec(any::<u8>(), 1..64),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = segment_path(dir.path(), 0);
        let mut buf = Vec::new();
        let mut ends = Vec::new(); // (byte end, offset end) of each frame
        let mut offset = 0u64;
        for texts in &frames {
            let events: Vec<Event> = texts.iter().map(|t| Event {
                time_ms: 1,
                key: Some(t.clone()),
                id: None,
                event_type: None,
                data: json!(t).to_string(),
                condition: None,
            }).collect();
            encode_frame(offset, &events, &mut buf);
            offset += events.len() as u64;
            ends.push((buf.len(), offset));
        }
        let (file, first_damaged_byte) = match damage {
            0 => { let cut = at.index(buf.len()); (buf[..cut].to_vec(), cut) }
            1 => { let i = at.index(buf.len()); let mut b = buf.clone(); b[i] ^= 0x5a; (b, i) }
            _ => { let mut b = buf.clone(); b.extend_from_slice(&garbage); (b, buf.len()) }
        };
        std::fs::write(&path, &file).unwrap();
        let (meta, stop) = scan_segment(&path, 0).unwrap();
        let (len, end) = ends.iter().copied().take_while(|(e, _)| *e <= first_damaged_byte).last().unwrap_or((0, 0));
        prop_assert_eq!((meta.len, meta.end), (len as u64, end));
        prop_assert_eq!(stop.is_none(), len == file.len());
        if let Some(stop) = stop {
            prop_assert_eq!(stop.pos, len as u64);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: (ProptestConfig::default().cases / 8).max(1), ..ProptestConfig::default() })]

    /// Crash recovery of the embedded log: a file cut anywhere reopens at the last whole append,
    /// serves exactly the events before it, and appends on from there; damage in an append that
    /// intact appends follow is refused with the file and byte, never served or dropped.
    #[test]
    fn fuzz_log_recovery(appends in prop::collection::vec(1usize..6, 1..8), at in any::<prop::sample::Index>(), flip in any::<bool>()) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let s = StreamName::new("f").unwrap();
            let mut ends = Vec::new();
            let path = dir.path().join("f/0/00000000000000000000.log");
            {
                let log = EmbeddedLog::open(dir.path(), EmbeddedLogConfig::default()).unwrap();
                log.create_stream(&s, 1, &[]).await.unwrap();
                let mut next = 0u64;
                for n in &appends {
                    let events = (next..next + *n as u64).map(|i| Event { time_ms: i as i64, key: None, id: None, event_type: None, data: i.to_string(), condition: None }).collect();
                    log.append(&s, 0, events).await.unwrap();
                    next += *n as u64;
                    ends.push((std::fs::metadata(&path).unwrap().len(), next));
                }
            }
            let file = std::fs::read(&path).unwrap();
            let i = at.index(file.len());
            let damaged_frame = ends.iter().position(|(e, _)| (*e as usize) > i).unwrap();
            if flip {
                let mut bad = file.clone();
                bad[i] ^= 0x01;
                std::fs::write(&path, &bad).unwrap();
            } else {
                std::fs::write(&path, &file[..i]).unwrap();
            }
            let intact_after = flip && damaged_frame + 1 < ends.len();
            let reopened = EmbeddedLog::open(dir.path(), EmbeddedLogConfig::default());
            let kept = if damaged_frame == 0 { 0 } else { ends[damaged_frame - 1].1 };
            if intact_after {
                let message = match reopened { Err(Error::Corrupt(m)) => m, Err(e) => e.to_string(), Ok(_) => String::from("opened") };
                let pos = if damaged_frame == 0 { 0 } else { ends[damaged_frame - 1].0 };
                assert!(message.contains("00000000000000000000.log") && message.contains(&format!("at byte {pos}:")), "{message}");
                return;
            }
            let log = reopened.unwrap();
            assert_eq!(log.end_offset(&s, 0).await.unwrap(), kept);
            let mut reader = log.open_reader(&s, 0, 0).await.unwrap();
            let mut read = Vec::new();
            for _ in 0..100 {
                let batch = reader.next_batch(1000, Duration::from_millis(5)).await.unwrap();
                if batch.is_empty() { break; }
                read.extend(batch);
            }
            assert_eq!(read.len() as u64, kept);
            assert!(read.iter().enumerate().all(|(i, r)| r.offset == i as u64 && r.event.data == i.to_string()));
            let range = log.append(&s, 0, vec![Event { time_ms: 0, key: None, id: None, event_type: None, data: "1".into(), condition: None }]).await.unwrap();
            assert_eq!(range.first, kept);
        });
    }
}
