//! Binary encoding of events, shared by the embedded log's frames and the store's tail rows.
//!
//! Layout of one event (all integers little-endian):
//! `time_ms: i64 | flags: u8 | [key_len: u32, key] | [id_len: u32, id] | [type_len: u32, type] | data_len: u32, data`
//! `[expect: u8, version: u64, index: u32, count: u32, [batch_id: u64]]`
//! where bits 0, 1 and 2 of `flags` say whether key, id and type are present, bit 3 whether a
//! condition follows the data (`expect`: 0 none stated, 1 a version, 2 `none`, 3 `exists`), and
//! bit 4 whether the condition ends with its batch's tag (absent: 0).

use crate::{Condition, Error, Event, Expect, Result};

const HAS_KEY: u8 = 1;
const HAS_ID: u8 = 2;
const HAS_TYPE: u8 = 4;
const HAS_CONDITION: u8 = 8;
const HAS_BATCH_ID: u8 = 16;

/// Appends the encoding of `event` to `out`.
pub fn encode_event(event: &Event, out: &mut Vec<u8>) {
    out.reserve(event.approx_size() + 21);
    out.extend_from_slice(&event.time_ms.to_le_bytes());
    let flags = (u8::from(event.key.is_some()) * HAS_KEY)
        | (u8::from(event.id.is_some()) * HAS_ID)
        | (u8::from(event.event_type.is_some()) * HAS_TYPE)
        | (u8::from(event.condition.is_some()) * HAS_CONDITION)
        | (u8::from(event.condition.is_some_and(|c| c.batch_id != 0)) * HAS_BATCH_ID);
    out.push(flags);
    for s in [&event.key, &event.id, &event.event_type]
        .into_iter()
        .flatten()
    {
        put_str(out, s);
    }
    put_str(out, &event.data);
    if let Some(c) = &event.condition {
        let (tag, version) = match c.expect {
            None => (0u8, 0),
            Some(Expect::Version(v)) => (1, v),
            Some(Expect::None) => (2, 0),
            Some(Expect::Exists) => (3, 0),
        };
        out.push(tag);
        out.extend_from_slice(&version.to_le_bytes());
        out.extend_from_slice(&c.index.to_le_bytes());
        out.extend_from_slice(&c.count.to_le_bytes());
        if c.batch_id != 0 {
            out.extend_from_slice(&c.batch_id.to_le_bytes());
        }
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Decodes one event from the front of `input` and advances it past the event.
pub fn decode_event(input: &mut &[u8]) -> Result<Event> {
    let time_ms = i64::from_le_bytes(take_array(input)?);
    let [flags] = take_array::<1>(input)?;
    if flags & !(HAS_KEY | HAS_ID | HAS_TYPE | HAS_CONDITION | HAS_BATCH_ID) != 0 {
        return Err(Error::Corrupt(format!("unknown event flags {flags:#x}")));
    }
    let mut opt = |bit: u8| -> Result<Option<String>> {
        if flags & bit != 0 {
            take_str(input).map(Some)
        } else {
            Ok(None)
        }
    };
    let key = opt(HAS_KEY)?;
    let id = opt(HAS_ID)?;
    let event_type = opt(HAS_TYPE)?;
    let data = take_str(input)?;
    let condition = if flags & HAS_CONDITION != 0 {
        let [tag] = take_array::<1>(input)?;
        let version = u64::from_le_bytes(take_array(input)?);
        let expect = match tag {
            0 => None,
            1 => Some(Expect::Version(version)),
            2 => Some(Expect::None),
            3 => Some(Expect::Exists),
            t => return Err(Error::Corrupt(format!("unknown condition tag {t}"))),
        };
        let index = u32::from_le_bytes(take_array(input)?);
        let count = u32::from_le_bytes(take_array(input)?);
        let batch_id = if flags & HAS_BATCH_ID != 0 {
            u64::from_le_bytes(take_array(input)?)
        } else {
            0
        };
        Some(Condition {
            expect,
            index,
            count,
            batch_id,
        })
    } else {
        None
    };
    Ok(Event {
        time_ms,
        key,
        id,
        event_type,
        data,
        condition,
    })
}

fn take_array<const N: usize>(input: &mut &[u8]) -> Result<[u8; N]> {
    let (head, rest) = input
        .split_first_chunk::<N>()
        .ok_or_else(|| Error::Corrupt(format!("truncated: needed {N} more bytes")))?;
    *input = rest;
    Ok(*head)
}

fn take_str(input: &mut &[u8]) -> Result<String> {
    let len = u32::from_le_bytes(take_array(input)?) as usize;
    if input.len() < len {
        return Err(Error::Corrupt(format!(
            "truncated: string of {len} bytes, {} left",
            input.len()
        )));
    }
    let (bytes, rest) = input.split_at(len);
    *input = rest;
    String::from_utf8(bytes.to_vec()).map_err(|_| Error::Corrupt("string is not UTF-8".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn event_strategy() -> impl Strategy<Value = Event> {
        (
            any::<i64>(),
            proptest::option::of(".{0,20}"),
            proptest::option::of(".{0,20}"),
            proptest::option::of("[a-z]{0,10}"),
            ".{0,100}",
            proptest::option::of((
                0u8..4,
                any::<u64>(),
                any::<u32>(),
                any::<u32>(),
                prop_oneof![Just(0u64), any::<u64>()],
            )),
        )
            .prop_map(|(time_ms, key, id, event_type, data, c)| Event {
                time_ms,
                key,
                id,
                event_type,
                data,
                condition: c.map(|(tag, v, index, count, batch_id)| Condition {
                    expect: match tag {
                        0 => None,
                        1 => Some(Expect::Version(v)),
                        2 => Some(Expect::None),
                        _ => Some(Expect::Exists),
                    },
                    index,
                    count,
                    batch_id,
                }),
            })
    }

    proptest! {
        #[test]
        fn roundtrip(events in proptest::collection::vec(event_strategy(), 0..20)) {
            let mut buf = Vec::new();
            for e in &events {
                encode_event(e, &mut buf);
            }
            let mut input = buf.as_slice();
            for e in &events {
                prop_assert_eq!(&decode_event(&mut input).unwrap(), e);
            }
            prop_assert!(input.is_empty());
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut input = bytes.as_slice();
            let _ = decode_event(&mut input);
        }

        #[test]
        fn truncation_is_an_error(e in event_strategy(), cut in 0usize..1000) {
            let mut buf = Vec::new();
            encode_event(&e, &mut buf);
            let cut = cut % buf.len();
            let mut input = &buf[..cut];
            prop_assert!(decode_event(&mut input).is_err());
        }
    }
}
