//! Expected-version appends: the condition an event travels with, and the one deterministic rule
//! every store node applies to decide it.
//!
//! A key is an entity's stream; its *version* is the number of events stored under it. A
//! conditional request becomes a *batch* of consecutive records of one partition: each record
//! knows its place (`index` of `count`), and the first record of each conditioned key carries what
//! the key's version must be before the batch. A store decides the batch when it applies its
//! first record, in the partition's log order: it is accepted whole when its records are the
//! `count` consecutive records starting there and every condition holds, else rejected whole
//! (and kept out of the shard). The rule looks at nothing but the log, so every replica and every
//! rebuild decides the same.

use crate::{Error, Result};
use serde::{Deserialize, Serialize};

/// The most records one conditional batch may have.
pub const MAX_BATCH: u32 = 10_000;

/// What a key's version must be before a batch. In JSON: the version as a number, or `"none"` /
/// `"exists"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// Exactly this many events stored under the key.
    Version(u64),
    /// No event stored under the key (version 0).
    None,
    /// At least one event stored under the key.
    Exists,
}

impl Expect {
    /// Whether a key at `version` meets the expectation.
    pub fn holds(self, version: u64) -> bool {
        match self {
            Self::Version(v) => version == v,
            Self::None => version == 0,
            Self::Exists => version > 0,
        }
    }

    /// The expectation as the `strata-expect` header writes it: `N`, `none` or `exists`.
    pub fn to_text(self) -> String {
        match self {
            Self::Version(v) => v.to_string(),
            Self::None => "none".into(),
            Self::Exists => "exists".into(),
        }
    }

    /// Parses the header's text form.
    ///
    /// # Errors
    /// [`Error::InvalidCondition`] for anything else.
    pub fn parse(text: &str) -> Result<Self> {
        match text.trim() {
            "none" => Ok(Self::None),
            "exists" => Ok(Self::Exists),
            t => t.parse().map(Self::Version).map_err(|_| {
                Error::InvalidCondition(format!(
                    "expected a version (a number), `none` or `exists`, got {t:?}"
                ))
            }),
        }
    }
}

impl Serialize for Expect {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            Self::Version(v) => s.serialize_u64(*v),
            Self::None => s.serialize_str("none"),
            Self::Exists => s.serialize_str("exists"),
        }
    }
}

impl<'de> Deserialize<'de> for Expect {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::Number(n) => n
                .as_u64()
                .map(Self::Version)
                .ok_or_else(|| serde::de::Error::custom("a version is a whole number")),
            serde_json::Value::String(s) => Self::parse(&s).map_err(serde::de::Error::custom),
            other => Err(serde::de::Error::custom(format!(
                "expected a version, \"none\" or \"exists\", got {other}"
            ))),
        }
    }
}

impl std::fmt::Display for Expect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_text())
    }
}

/// A record's part in a conditional batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Condition {
    /// What the record's key's version must be before the batch (first record of the key only).
    pub expect: Option<Expect>,
    /// The record's place in its batch, from 0.
    pub index: u32,
    /// Records in the batch.
    pub count: u32,
    /// The batch's tag, the same on each of its records and drawn at random per request by the
    /// node that wrote it (0: none, as from a plain producer or a log of before): the store
    /// gathers a batch's records only from records with its tag, so that two writers' batches of
    /// the same size interleaved in a partition are never taken for one.
    pub batch_id: u64,
}

impl Condition {
    /// The batch header's text: `index/count`.
    pub fn batch_text(&self) -> String {
        format!("{}/{}", self.index, self.count)
    }

    /// The condition of a record carrying the `strata-expect` header `expect`, the
    /// `strata-batch` header `batch` (`None`: a batch of one) and the `strata-batch-id` header
    /// `batch_id` (decimal; `None`: untagged).
    ///
    /// # Errors
    /// [`Error::InvalidCondition`] for a header that does not parse or a place outside its batch.
    pub fn from_headers(
        expect: Option<&str>,
        batch: Option<&str>,
        batch_id: Option<&str>,
    ) -> Result<Self> {
        let expect = expect.map(Expect::parse).transpose()?;
        let (index, count) = match batch {
            None => (0, 1),
            Some(text) => {
                let bad = || {
                    Error::InvalidCondition(format!(
                        "the batch header must be `index/count`, got {text:?}"
                    ))
                };
                let (i, n) = text.trim().split_once('/').ok_or_else(bad)?;
                (
                    i.parse::<u32>().map_err(|_| bad())?,
                    n.parse::<u32>().map_err(|_| bad())?,
                )
            }
        };
        if count == 0 || index >= count || count > MAX_BATCH {
            return Err(Error::InvalidCondition(format!(
                "record {index} of a batch of {count} (a batch has 1 to {MAX_BATCH} records)"
            )));
        }
        let batch_id = match batch_id {
            None => 0,
            Some(text) => text.trim().parse::<u64>().map_err(|_| {
                Error::InvalidCondition(format!(
                    "the batch id header must be a decimal number, got {text:?}"
                ))
            })?,
        };
        Ok(Self {
            expect,
            index,
            count,
            batch_id,
        })
    }
}

/// How one key fared in a batch's decision.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyDecision {
    /// The key.
    pub key: String,
    /// What the batch expected of it (`None`: no condition, its events only counted on).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub expected: Option<Expect>,
    /// Its version before the batch.
    pub actual: u64,
    /// Its version after the batch (the same as `actual` when the batch was rejected).
    pub version: u64,
}

/// A store's decision on one conditional batch, kept under the batch's first offset.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchDecision {
    /// Whether the batch was stored.
    pub accepted: bool,
    /// Why it was not, in words.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub reason: Option<String>,
    /// Every key of the batch.
    pub keys: Vec<KeyDecision>,
}

/// Decides a batch: `events` are the keys and conditions of its records (all `count` of them, in
/// order), `version` gives a key's version before the batch. Every event with a key counts one
/// version up; a key's condition is checked at its first event.
///
/// # Errors
/// Whatever `version` fails with.
pub fn decide<'a, E>(
    events: impl IntoIterator<Item = (Option<&'a str>, Option<Expect>)>,
    mut version: impl FnMut(&str) -> std::result::Result<u64, E>,
) -> std::result::Result<BatchDecision, E> {
    let mut keys: Vec<KeyDecision> = Vec::new();
    let mut failed = Vec::new();
    for (key, expect) in events {
        let Some(key) = key else { continue };
        let at = match keys.iter().position(|k| k.key == key) {
            Some(at) => at,
            None => {
                let actual = version(key)?;
                keys.push(KeyDecision {
                    key: key.to_owned(),
                    expected: None,
                    actual,
                    version: actual,
                });
                keys.len() - 1
            }
        };
        let k = &mut keys[at];
        if let Some(expect) = expect {
            k.expected.get_or_insert(expect);
            // Checked against the version before this event (later events of a key count on).
            if !expect.holds(k.version) {
                failed.push(format!(
                    "key {:?} expected version {expect}, is at {}",
                    k.key, k.version
                ));
            }
        }
        k.version += 1;
    }
    if failed.is_empty() {
        return Ok(BatchDecision {
            accepted: true,
            reason: None,
            keys,
        });
    }
    Ok(rejected(keys, failed.join("; ")))
}

/// A rejection of a batch whose keys were at the `actual` versions of `keys`.
pub fn rejected(mut keys: Vec<KeyDecision>, reason: String) -> BatchDecision {
    for k in &mut keys {
        k.version = k.actual;
    }
    BatchDecision {
        accepted: false,
        reason: Some(reason),
        keys,
    }
}

/// The conditions a request's events go to the log with: `expects` holds each event's key and
/// what the client asked of it, in request order. For each key, the first event that states an
/// expectation fixes the key's version before the request (counting back over the key's earlier
/// events in the request); later statements must agree with counting on. Returns, per event, the
/// expectation its record carries (only a key's first event carries one).
///
/// # Errors
/// [`Error::InvalidCondition`] naming the event (from 1) whose expectation contradicts the key's
/// earlier events in the request, or that states one without a key.
pub fn request_conditions(
    expects: &[(Option<&str>, Option<Expect>)],
) -> Result<Vec<Option<Expect>>> {
    use std::collections::HashMap;
    // Per key: events seen so far, and the expectation at the key's first event.
    let mut seen: HashMap<&str, (u64, Option<Expect>, usize)> = HashMap::new();
    for (i, (key, expect)) in expects.iter().enumerate() {
        let Some(key) = key else {
            if expect.is_some() {
                return Err(Error::InvalidCondition(format!(
                    "event {} states an expected version but has no key (a version is a key's)",
                    i + 1
                )));
            }
            continue;
        };
        let entry = seen.entry(key).or_insert((0, None, i));
        let before = entry.0;
        if let Some(expect) = expect {
            let at_first = match (*expect, entry.1) {
                (e, None) if before == 0 => Some(e),
                (Expect::Version(v), None) if v >= before => Some(Expect::Version(v - before)),
                (Expect::Exists, None) => None,
                (Expect::Exists, Some(_)) => entry.1,
                (Expect::Version(v), Some(Expect::Version(first))) if v == first + before => {
                    entry.1
                }
                (Expect::Version(v), Some(Expect::None)) if v == before => entry.1,
                // Counting on from "exists" gives no exact version: the stated one pins it.
                (Expect::Version(v), Some(Expect::Exists)) if v > before => {
                    Some(Expect::Version(v - before))
                }
                _ => {
                    return Err(Error::InvalidCondition(format!(
                        "event {} expects key {key:?} at {expect}, which contradicts the {before} \
                         event(s) of that key before it in the request",
                        i + 1
                    )));
                }
            };
            entry.1 = at_first;
        }
        entry.0 += 1;
    }
    let mut out = vec![None; expects.len()];
    for (_, expect, first) in seen.into_values() {
        out[first] = expect;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expectations_read_as_json_as_they_are_written() {
        for e in [Expect::Version(7), Expect::None, Expect::Exists] {
            let text = serde_json::to_string(&e).unwrap();
            assert_eq!(serde_json::from_str::<Expect>(&text).unwrap(), e);
        }
        assert_eq!(serde_json::to_string(&Expect::Version(7)).unwrap(), "7");
    }

    #[test]
    fn expectations_parse_and_hold() {
        assert_eq!(Expect::parse("3").unwrap(), Expect::Version(3));
        assert_eq!(Expect::parse("none").unwrap(), Expect::None);
        assert!(Expect::parse("-1").is_err());
        assert!(Expect::Exists.holds(2) && !Expect::Exists.holds(0));
        let c = Condition::from_headers(Some("exists"), Some("2/5"), Some("77")).unwrap();
        assert_eq!((c.index, c.count, c.batch_id), (2, 5, 77));
        let untagged = Condition::from_headers(Some("exists"), Some("2/5"), None).unwrap();
        assert_eq!(untagged.batch_id, 0);
        assert!(Condition::from_headers(None, Some("5/5"), None).is_err());
        assert!(Condition::from_headers(None, Some("0/0"), None).is_err());
        assert!(Condition::from_headers(None, Some("x"), None).is_err());
        assert!(Condition::from_headers(None, Some("0/2"), Some("-1")).is_err());
    }

    #[test]
    fn a_batch_counts_on_from_each_keys_first_event() {
        let versions = |k: &str| Ok::<_, ()>(if k == "a" { 2 } else { 0 });
        let ok = decide(
            [
                (Some("a"), Some(Expect::Version(2))),
                (Some("b"), Some(Expect::None)),
                (Some("a"), None),
                (None, None),
            ],
            versions,
        )
        .unwrap();
        assert!(ok.accepted);
        assert_eq!(ok.keys[0].version, 4);
        assert_eq!(ok.keys[1].version, 1);
        let no = decide(
            [
                (Some("a"), Some(Expect::Version(1))),
                (Some("b"), Some(Expect::None)),
            ],
            versions,
        )
        .unwrap();
        assert!(!no.accepted);
        assert_eq!(no.keys[0].actual, 2);
        assert_eq!(no.keys[0].version, 2);
        assert!(
            no.reason
                .unwrap()
                .contains("\"a\" expected version 1, is at 2")
        );
    }

    #[test]
    fn request_conditions_move_to_each_keys_first_event() {
        let c = request_conditions(&[
            (Some("a"), None),
            (Some("a"), Some(Expect::Version(5))),
            (Some("b"), Some(Expect::None)),
            (Some("b"), Some(Expect::Version(1))),
            (Some("a"), Some(Expect::Exists)),
        ])
        .unwrap();
        assert_eq!(
            c,
            vec![
                Some(Expect::Version(4)),
                None,
                Some(Expect::None),
                None,
                None
            ]
        );
        assert!(request_conditions(&[(Some("a"), None), (Some("a"), Some(Expect::None))]).is_err());
        assert!(
            request_conditions(&[
                (Some("a"), Some(Expect::Version(1))),
                (Some("a"), Some(Expect::Version(1)))
            ])
            .is_err()
        );
        assert!(request_conditions(&[(None, Some(Expect::None))]).is_err());
    }
}
