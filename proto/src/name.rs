//! Validated stream names.

use crate::{Error, Result};
use serde::{Deserialize, Deserializer, Serialize};
use std::fmt;

/// A stream name: `[a-z][a-z0-9_]{0,62}`, so that it is also a plain SQL identifier, a file name and
/// (with a prefix) a Kafka topic name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct StreamName(String);

impl StreamName {
    /// The longest name accepted.
    pub const MAX_LEN: usize = 63;

    /// Validates `name`.
    pub fn new(name: &str) -> Result<Self> {
        let invalid = |reason| Error::InvalidName {
            name: name.chars().take(80).collect(),
            reason,
        };
        let mut chars = name.chars();
        match chars.next() {
            None => return Err(invalid("it is empty")),
            Some(c) if !c.is_ascii_lowercase() => {
                return Err(invalid("it must start with a lowercase letter a-z"));
            }
            Some(_) => {}
        }
        if name.len() > Self::MAX_LEN {
            return Err(invalid("it is longer than 63 characters"));
        }
        if !chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_') {
            return Err(invalid(
                "only lowercase letters a-z, digits 0-9 and '_' are allowed",
            ));
        }
        Ok(Self(name.to_owned()))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for StreamName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for StreamName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for StreamName {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::new(s)
    }
}

impl<'de> Deserialize<'de> for StreamName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::new(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_identifiers() {
        for ok in ["a", "orders", "orders_2024", "a_b_c", &"x".repeat(63)] {
            assert_eq!(StreamName::new(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn refuses_everything_else() {
        for bad in [
            "",
            "Orders",
            "1abc",
            "_a",
            "a-b",
            "a.b",
            "a b",
            "ä",
            &"x".repeat(64),
            "a/b",
        ] {
            assert!(StreamName::new(bad).is_err(), "{bad:?} was accepted");
        }
    }

    proptest! {
        #[test]
        fn matches_the_regex(s in "\\PC{0,70}") {
            let model = {
                let b = s.as_bytes();
                !b.is_empty() && b.len() <= 63 && b[0].is_ascii_lowercase()
                    && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_')
            };
            prop_assert_eq!(StreamName::new(&s).is_ok(), model);
        }
    }
}
