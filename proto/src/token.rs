//! Consistency tokens: what an append hands back so that a later read can wait for it.
//!
//! A token names a stream and, per partition, the offset a reader must have applied (one past the
//! last appended event): `v1.<stream>.<partition>-<next offset>[.<partition>-<next offset>…]`, e.g.
//! `v1.orders.0-18.3-6`. It is plain text so it fits a header, a URL or a JSON string.

use crate::{Error, Result, StreamName};
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// Per-partition offsets of one stream that a read waits for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsistencyToken {
    /// The stream.
    pub stream: StreamName,
    /// Partition → the offset that must have been applied (exclusive end).
    pub offsets: BTreeMap<u32, u64>,
}

impl ConsistencyToken {
    /// The largest number of partitions a token may name.
    pub const MAX_PARTITIONS: usize = crate::StreamInfo::MAX_PARTITIONS as usize;

    /// Merges `other` (of the same stream) into this token, keeping the larger offset.
    pub fn merge(&mut self, other: &ConsistencyToken) {
        for (p, o) in &other.offsets {
            let e = self.offsets.entry(*p).or_insert(0);
            *e = (*e).max(*o);
        }
    }
}

impl fmt::Display for ConsistencyToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v1.{}", self.stream)?;
        for (p, o) in &self.offsets {
            write!(f, ".{p}-{o}")?;
        }
        Ok(())
    }
}

fn bad(token: &str, reason: &str) -> Error {
    let shown: String = token.chars().take(80).collect();
    Error::InvalidToken(format!("{shown:?}: {reason}"))
}

impl FromStr for ConsistencyToken {
    type Err = Error;

    fn from_str(token: &str) -> Result<Self> {
        if token.len() > 16 * 1024 {
            return Err(bad(token, "too long"));
        }
        let mut parts = token.split('.');
        if parts.next() != Some("v1") {
            return Err(bad(
                token,
                "expected a token from an append (`v1.<stream>.<partition>-<offset>…`)",
            ));
        }
        let stream = parts
            .next()
            .ok_or_else(|| bad(token, "no stream"))
            .and_then(|s| StreamName::new(s).map_err(|_| bad(token, "not a stream name")))?;
        let mut offsets = BTreeMap::new();
        for part in parts {
            let (p, o) = part
                .split_once('-')
                .ok_or_else(|| bad(token, "expected <partition>-<offset>"))?;
            let p: u32 = p
                .parse()
                .map_err(|_| bad(token, "a partition is not a number"))?;
            let o: u64 = o
                .parse()
                .map_err(|_| bad(token, "an offset is not a number"))?;
            if offsets.insert(p, o).is_some() {
                return Err(bad(token, "a partition appears twice"));
            }
            if offsets.len() > Self::MAX_PARTITIONS {
                return Err(bad(token, "too many partitions"));
            }
        }
        Ok(Self { stream, offsets })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn formats_and_parses() {
        let t: ConsistencyToken = "v1.orders.0-18.3-6".parse().unwrap();
        assert_eq!(t.stream.as_str(), "orders");
        assert_eq!(t.offsets, BTreeMap::from([(0, 18), (3, 6)]));
        assert_eq!(t.to_string(), "v1.orders.0-18.3-6");
        for bad in [
            "",
            "v2.orders.0-1",
            "v1",
            "v1.Orders.0-1",
            "v1.orders.0",
            "v1.orders.x-1",
            "v1.orders.0-y",
            "v1.orders.0-1.0-2",
            "v1.orders.0--1",
        ] {
            let err = bad.parse::<ConsistencyToken>().unwrap_err().to_string();
            assert!(err.contains("consistency token"), "{bad}: {err}");
        }
    }

    proptest! {
        #[test]
        fn round_trips(offsets in proptest::collection::btree_map(0u32..256, any::<u64>(), 0..20)) {
            let t = ConsistencyToken { stream: StreamName::new("s_1").unwrap(), offsets };
            prop_assert_eq!(t.to_string().parse::<ConsistencyToken>().unwrap(), t);
        }

        #[test]
        fn any_text_is_refused_or_parsed_without_panic(text in "\\PC{0,64}") {
            let _ = text.parse::<ConsistencyToken>();
        }
    }
}
