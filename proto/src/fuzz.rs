//! Fuzz targets, driven by proptest: the consistency token, stream names and the event codec on
//! arbitrary and mutated input. `PROPTEST_CASES` sets how many cases run (`scripts/fuzz.sh`).

use crate::codec::{decode_event, encode_event};
use crate::{ConsistencyToken, Event, StreamName};
use proptest::prelude::*;

/// Text near a valid token: a valid one with one character inserted, removed or replaced.
fn mutated_token() -> impl Strategy<Value = String> {
    (
        "[a-z][a-z0-9_]{0,8}",
        prop::collection::btree_map(0u32..300, any::<u64>(), 0..5),
        any::<prop::sample::Index>(),
        0u8..3,
        any::<char>(),
    )
        .prop_map(|(stream, offsets, at, how, c)| {
            let mut text = format!("v1.{stream}");
            for (p, o) in offsets {
                text.push_str(&format!(".{p}-{o}"));
            }
            let mut chars: Vec<char> = text.chars().collect();
            let i = at.index(chars.len());
            match how {
                0 => chars.insert(i, c),
                1 => {
                    chars.remove(i);
                }
                _ => chars[i] = c,
            }
            chars.into_iter().collect()
        })
}

proptest! {
    /// Any text: refused or parsed, never a panic; what parses prints back to itself.
    #[test]
    fn fuzz_token(text in prop_oneof![mutated_token(), "\\PC{0,80}", prop::collection::vec(any::<u8>(), 0..80).prop_map(|b| String::from_utf8_lossy(&b).into_owned())]) {
        if let Ok(token) = text.parse::<ConsistencyToken>() {
            prop_assert!(token.offsets.len() <= ConsistencyToken::MAX_PARTITIONS);
            let again: ConsistencyToken = token.to_string().parse().unwrap();
            prop_assert_eq!(again, token);
        }
    }

    /// Any text as a stream (or view) name: accepted exactly when it matches the documented
    /// pattern, and then kept as given.
    #[test]
    fn fuzz_names(text in prop_oneof!["\\PC{0,80}", "[a-zA-Z0-9_./ -]{0,70}", prop::collection::vec(any::<u8>(), 0..70).prop_map(|b| String::from_utf8_lossy(&b).into_owned())]) {
        let b = text.as_bytes();
        let model = !b.is_empty() && b.len() <= 63 && b[0].is_ascii_lowercase()
            && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_');
        match StreamName::new(&text) {
            Ok(name) => { prop_assert!(model); prop_assert_eq!(name.as_str(), text.as_str()); }
            Err(e) => { prop_assert!(!model); prop_assert!(!e.to_string().is_empty()); }
        }
    }

    /// Encoded events with bytes flipped or cut: decoding fails or gives an event, never panics,
    /// and never reads past its input.
    #[test]
    fn fuzz_codec_damage(key in proptest::option::of("\\PC{0,20}"), data in "\\PC{0,40}", flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4), cut in any::<prop::sample::Index>()) {
        let mut buf = Vec::new();
        encode_event(&Event { time_ms: 5, key, id: None, event_type: None, data, condition: None }, &mut buf);
        for (at, x) in flips {
            let i = at.index(buf.len());
            buf[i] ^= x;
        }
        let len = cut.index(buf.len() + 1);
        let mut input = &buf[..len];
        let before = input.len();
        if decode_event(&mut input).is_ok() {
            prop_assert!(input.len() <= before);
        }
    }
}
