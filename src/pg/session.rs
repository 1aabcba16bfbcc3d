//! One connection's session: who it is, its settings (the whitelist `SET` may change), and the
//! cancel slot of its running query.

use super::Cancels;
use crate::auth::Principal;
use crate::service::{Error, Result};
use bytes::Bytes;
use parking_lot::Mutex;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// The settings a session may change, with what a value must be. Anything else is refused, so
/// `SET` never reaches the engine's configuration or the server's files.
const SETTABLE: &[&str] = &[
    "application_name",
    "client_encoding",
    "datestyle",
    "extra_float_digits",
    "intervalstyle",
    "search_path",
    "statement_timeout",
    "timezone",
    "bytea_output",
    "standard_conforming_strings",
    "lock_timeout",
    "idle_in_transaction_session_timeout",
    "idle_session_timeout",
    "default_transaction_isolation",
    "transaction_isolation",
    "default_transaction_read_only",
    "transaction_read_only",
    "jit",
    "strata.after",
];

/// Settings a client sends in its startup message that strata keeps.
pub(super) const FROM_STARTUP: &[&str] = &[
    "application_name",
    "client_encoding",
    "DateStyle",
    "extra_float_digits",
    "TimeZone",
    "search_path",
    "statement_timeout",
];

/// A connection's session.
pub(super) struct Session {
    /// Who authenticated.
    pub principal: Principal,
    settings: Mutex<BTreeMap<String, String>>,
    /// The names of the statements the client prepared (extended protocol), for `DEALLOCATE ALL`.
    prepared: Mutex<BTreeSet<String>>,
    slot: Arc<Mutex<CancellationToken>>,
    cancels: Arc<Cancels>,
    key: (i32, Bytes),
}

impl Session {
    /// A session for `principal`, cancellable through `cancels` by `key`.
    pub fn new(principal: Principal, cancels: Arc<Cancels>, key: (i32, Bytes)) -> Self {
        let slot = Arc::new(Mutex::new(CancellationToken::new()));
        cancels.slots.lock().insert(key.clone(), slot.clone());
        Self {
            principal,
            settings: Mutex::new(BTreeMap::new()),
            prepared: Mutex::new(BTreeSet::new()),
            slot,
            cancels,
            key,
        }
    }

    /// Notes that the client prepared a statement called `name`.
    pub fn prepared(&self, name: &str) {
        self.prepared.lock().insert(name.to_owned());
    }

    /// Forgets statement `name` (closed or deallocated); `None`: every one, whose names it
    /// returns.
    pub fn deallocate(&self, name: Option<&str>) -> Vec<String> {
        let mut prepared = self.prepared.lock();
        match name {
            Some(name) => prepared
                .remove(name)
                .then(|| name.to_owned())
                .into_iter()
                .collect(),
            None => std::mem::take(&mut *prepared).into_iter().collect(),
        }
    }

    /// A fresh token for the query about to run; a cancel request cancels it.
    pub fn start_query(&self) -> CancellationToken {
        let token = CancellationToken::new();
        *self.slot.lock() = token.clone();
        token
    }

    /// Sets `name` (lowercase) to `value`, or back to its default with `None`.
    ///
    /// # Errors
    /// [`Error::BadRequest`] for a setting strata does not take or a value it cannot honour.
    pub fn set(&self, name: &str, value: Option<String>) -> Result<()> {
        let Some(value) = value else {
            self.settings.lock().remove(name);
            return Ok(());
        };
        check(name, &value)?;
        self.settings.lock().insert(name.to_owned(), value);
        Ok(())
    }

    /// `RESET name`, `RESET ALL` and `DISCARD ALL`.
    pub fn reset(&self, name: &str) {
        if name == "all" {
            self.settings.lock().clear();
        } else {
            self.settings.lock().remove(name);
        }
    }

    /// The value of `name` in this session.
    pub fn get(&self, name: &str) -> Option<String> {
        let name = name.to_ascii_lowercase();
        if let Some(v) = self.settings.lock().get(&name) {
            return Some(v.clone());
        }
        match name.as_str() {
            "statement_timeout" | "lock_timeout" | "idle_in_transaction_session_timeout" => {
                Some("0".into())
            }
            "application_name" | "strata.after" => Some(String::new()),
            "extra_float_digits" => Some("1".into()),
            "transaction isolation level" => Some("read committed".into()),
            _ => strata_views::default_setting(&name).map(str::to_owned),
        }
    }

    /// Every setting with its value, for `SHOW ALL`.
    pub fn all(&self) -> Vec<(String, String)> {
        let mut names: Vec<&str> = SETTABLE.to_vec();
        names.extend(["server_version", "server_version_num", "server_encoding"]);
        names.sort_unstable();
        names.dedup();
        names
            .into_iter()
            .filter_map(|n| self.get(n).map(|v| (n.to_owned(), v)))
            .collect()
    }

    /// The session's `statement_timeout` in milliseconds (`None`: no limit of its own).
    pub fn statement_timeout_ms(&self) -> Option<u64> {
        self.settings
            .lock()
            .get("statement_timeout")
            .and_then(|v| duration_ms(v).ok())
            .filter(|ms| *ms > 0)
    }

    /// The consistency tokens of `SET strata.after`.
    pub fn after(&self) -> Vec<String> {
        self.settings
            .lock()
            .get("strata.after")
            .map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.cancels.slots.lock().remove(&self.key);
    }
}

/// Refuses a setting strata does not take, or a value it would not honour.
fn check(name: &str, value: &str) -> Result<()> {
    let bad = |why: &str| Err(Error::BadRequest(format!("SET {name}: {why}")));
    if name.starts_with("datafusion.") {
        return Err(Error::Forbidden(format!(
            "SET {name} is not allowed: the engine's settings are the server's, not a session's"
        )));
    }
    if !SETTABLE.contains(&name) {
        return Err(Error::NotFound(format!(
            "unrecognized configuration parameter \"{name}\" (a session may set {})",
            SETTABLE.join(", ")
        )));
    }
    let lower = value.to_ascii_lowercase();
    match name {
        "client_encoding" if !matches!(lower.as_str(), "utf8" | "utf-8" | "unicode") => {
            bad("strata speaks UTF8 only")
        }
        "datestyle" if !lower.trim_start().starts_with("iso") => {
            bad("strata sends dates in the ISO style only")
        }
        "intervalstyle" if lower != "postgres" => bad("strata sends intervals as postgres"),
        "bytea_output" if lower != "hex" => bad("strata sends bytea as hex"),
        "standard_conforming_strings" if lower != "on" => bad("strata needs it on"),
        "extra_float_digits" if !lower.parse::<i32>().is_ok_and(|d| (-15..=3).contains(&d)) => {
            bad("expected an integer from -15 to 3")
        }
        "statement_timeout"
        | "lock_timeout"
        | "idle_in_transaction_session_timeout"
        | "idle_session_timeout" => duration_ms(value).map(drop),
        "strata.after" => {
            for token in value.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                token
                    .parse::<strata_proto::ConsistencyToken>()
                    .map_err(Error::from)?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// A PostgreSQL duration setting in milliseconds: `5000`, `'5s'`, `'500ms'`, `'2min'`.
fn duration_ms(value: &str) -> Result<u64> {
    let value = value.trim();
    let split = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    let (number, unit) = value.split_at(split);
    let number: u64 = number.parse().map_err(|_| {
        Error::BadRequest(format!(
            "invalid duration {value:?}: expected a number of milliseconds or one with a unit (ms, s, min, h)"
        ))
    })?;
    let factor = match unit.trim() {
        "" | "ms" => 1,
        "s" => 1_000,
        "min" => 60_000,
        "h" => 3_600_000,
        other => {
            return Err(Error::BadRequest(format!(
                "invalid duration unit {other:?} in {value:?}: use ms, s, min or h"
            )));
        }
    };
    Ok(number.saturating_mul(factor))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_checked_and_kept_per_session() {
        let cancels = Arc::new(Cancels::default());
        let s = Session::new(
            Principal::anyone(),
            cancels.clone(),
            (1, Bytes::from_static(b"k")),
        );
        s.set("statement_timeout", Some("2s".into())).unwrap();
        assert_eq!(s.statement_timeout_ms(), Some(2000));
        s.set("application_name", Some("psql".into())).unwrap();
        assert_eq!(s.get("application_name").as_deref(), Some("psql"));
        assert!(matches!(
            s.set("datafusion.execution.batch_size", Some("1".into())),
            Err(Error::Forbidden(_))
        ));
        assert!(matches!(
            s.set("work_mem", Some("1GB".into())),
            Err(Error::NotFound(_))
        ));
        assert!(s.set("client_encoding", Some("LATIN1".into())).is_err());
        assert!(s.set("strata.after", Some("nonsense".into())).is_err());
        s.set("strata.after", Some("v1.orders.0-3".into())).unwrap();
        assert_eq!(s.after(), vec!["v1.orders.0-3".to_owned()]);
        s.reset("all");
        assert_eq!(s.statement_timeout_ms(), None);
        assert_eq!(
            s.get("server_version").as_deref(),
            Some(strata_views::SERVER_VERSION)
        );
        // A cancel request reaches the running query's token; the session's end unregisters it.
        let token = s.start_query();
        cancels.cancel(1, &Bytes::from_static(b"k"));
        assert!(token.is_cancelled());
        drop(s);
        assert!(cancels.slots.lock().is_empty());
    }
}
