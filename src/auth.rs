//! Authentication and authorization, the same for every front end: bearer tokens from the
//! configuration, each with scopes (`read`, `write`, `admin`) and optionally limited to named
//! streams. A front end authenticates ([`Auth::authenticate`]) and hands the [`Principal`] to the
//! services, which check each [`Operation`] they carry out ([`Principal::authorize`]).
//!
//! With no token configured everything is allowed (a single-user node on localhost). With tokens,
//! a caller without a valid token is refused as unauthenticated, one whose token lacks the scope of
//! the operation (or a grant on its stream) as forbidden.
//!
//! Tokens are kept as SHA-256 digests (`sha256 = "hex"` in the configuration; `strata hash-token`
//! prints one); a plain `token = "…"` is accepted too, for tests and quick set-ups.

use crate::service::{Error, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use strata_views::Access;
use subtle::ConstantTimeEq;

/// What a token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// SQL queries, replay, listings.
    Read,
    /// Appends.
    Write,
    /// Creating streams, declaring fields, materialized view DDL and rebuilds.
    Admin,
}

impl Scope {
    fn name(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
            Scope::Admin => "admin",
        }
    }
}

/// What a caller asks to do; each needs a scope and, where it names a stream, a grant on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation<'a> {
    /// Reading a stream: its description, replay (needs `read`).
    Read(&'a str),
    /// Appending to a stream (needs `write`).
    Write(&'a str),
    /// Creating a stream or declaring its fields, rebuilding one of its views (needs `admin`).
    Admin(&'a str),
    /// Listings and SQL, whose rows are then limited to the granted streams (needs `read`).
    Browse,
}

impl Operation<'_> {
    /// The scope the operation needs.
    pub fn scope(self) -> Scope {
        match self {
            Operation::Read(_) | Operation::Browse => Scope::Read,
            Operation::Write(_) => Scope::Write,
            Operation::Admin(_) => Scope::Admin,
        }
    }
}

/// One configured token.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TokenConfig {
    /// A name for logs and messages (never the secret).
    pub name: String,
    /// The SHA-256 of the token, in hex (what `strata hash-token` prints).
    pub sha256: Option<String>,
    /// The token in plain text (prefer `sha256`).
    pub token: Option<String>,
    /// Its scopes.
    pub scopes: Vec<Scope>,
    /// The streams it may use; absent means every stream. A view belongs to its source stream.
    pub streams: Option<Vec<String>>,
}

/// The `[auth]` section.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// The tokens; none turns authentication off.
    pub tokens: Vec<TokenConfig>,
    /// Whether `/metrics` answers without a token.
    pub public_metrics: bool,
}

/// The SHA-256 of `token` in lowercase hex.
pub fn hash_token(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn parse_hex(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim();
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// A configured token: the digest it is known by, and who it makes the caller.
struct Known {
    digest: [u8; 32],
    principal: Principal,
}

/// Who sent a request, and what it may do.
#[derive(Clone, Debug)]
pub struct Principal {
    /// The token's name (`anonymous` with authentication off).
    pub name: String,
    scopes: BTreeSet<Scope>,
    /// Its streams (and whether it is `admin`), as the SQL engine checks them.
    access: Access,
}

impl Principal {
    fn new(name: String, scopes: BTreeSet<Scope>, streams: Option<BTreeSet<String>>) -> Self {
        let access = Access {
            admin: scopes.contains(&Scope::Admin),
            streams,
        };
        Self {
            name,
            scopes,
            access,
        }
    }

    /// Everything allowed (authentication off).
    pub fn anyone() -> Self {
        Self::new(
            "anonymous".into(),
            [Scope::Read, Scope::Write, Scope::Admin].into(),
            None,
        )
    }

    /// Refuses ([`Error::Forbidden`]) unless the principal may carry out `op`: it has the scope
    /// and, where `op` names a stream, a grant on that stream.
    ///
    /// # Errors
    /// [`Error::Forbidden`] naming the missing scope or stream.
    pub fn authorize(&self, op: Operation<'_>) -> Result<()> {
        self.require(op.scope())?;
        match op {
            Operation::Read(s) | Operation::Write(s) | Operation::Admin(s) => {
                self.require_stream(s)
            }
            Operation::Browse => Ok(()),
        }
    }

    /// Refuses with [`Error::Forbidden`] unless the principal has `scope`.
    pub fn require(&self, scope: Scope) -> Result<()> {
        if self.scopes.contains(&scope) {
            Ok(())
        } else {
            Err(Error::Forbidden(format!(
                "token {:?} lacks the `{}` scope",
                self.name,
                scope.name()
            )))
        }
    }

    /// Whether the principal may use `stream`.
    pub fn may_use(&self, stream: &str) -> bool {
        self.access.may_read(stream)
    }

    /// Refuses with [`Error::Forbidden`] unless the principal may use `stream`.
    pub fn require_stream(&self, stream: &str) -> Result<()> {
        if self.may_use(stream) {
            Ok(())
        } else {
            Err(Error::Forbidden(format!(
                "token {:?} may not use stream {stream:?}",
                self.name
            )))
        }
    }

    /// What the SQL engine lets this principal do.
    pub fn access(&self) -> Access {
        self.access.clone()
    }
}

/// The configured tokens, checked against requests.
pub struct Auth {
    known: Vec<Known>,
    public_metrics: bool,
}

impl Auth {
    /// Checks and loads `config`.
    ///
    /// # Errors
    /// [`crate::Error::Config`] for a token without scopes or without exactly one secret.
    pub fn new(config: &AuthConfig) -> crate::Result<Self> {
        let mut known = Vec::new();
        for (i, t) in config.tokens.iter().enumerate() {
            let name = if t.name.is_empty() {
                format!("#{}", i + 1)
            } else {
                t.name.clone()
            };
            let digest = match (&t.sha256, &t.token) {
                (Some(hex), None) => parse_hex(hex).ok_or_else(|| {
                    crate::Error::Config(format!(
                        "auth token {name}: sha256 must be 64 hex digits (see `strata hash-token`)"
                    ))
                })?,
                (None, Some(plain)) if !plain.is_empty() => {
                    let mut d = [0u8; 32];
                    d.copy_from_slice(&Sha256::digest(plain.as_bytes()));
                    d
                }
                _ => {
                    return Err(crate::Error::Config(format!(
                        "auth token {name}: give exactly one of `sha256` or `token`"
                    )));
                }
            };
            if t.scopes.is_empty() {
                return Err(crate::Error::Config(format!(
                    "auth token {name}: no scopes"
                )));
            }
            known.push(Known {
                digest,
                principal: Principal::new(
                    name,
                    t.scopes.iter().copied().collect(),
                    t.streams.as_ref().map(|s| s.iter().cloned().collect()),
                ),
            });
        }
        Ok(Self {
            known,
            public_metrics: config.public_metrics,
        })
    }

    /// Whether `/metrics` answers without a token.
    pub fn public_metrics(&self) -> bool {
        self.public_metrics
    }

    /// Whether any token is configured.
    pub fn enabled(&self) -> bool {
        !self.known.is_empty()
    }

    /// The principal a bearer token names.
    ///
    /// # Errors
    /// [`Error::Unauthorized`] without a token, or for one that is not configured.
    pub fn authenticate(&self, bearer: Option<&str>) -> Result<Principal> {
        if !self.enabled() {
            return Ok(Principal::anyone());
        }
        let Some(token) = bearer else {
            return Err(Error::Unauthorized(
                "this server needs a token: send `Authorization: Bearer TOKEN` (the CLI takes --token or STRATA_TOKEN)".into(),
            ));
        };
        let digest = Sha256::digest(token.as_bytes());
        // Every known digest is compared, in constant time, so timing says nothing of which.
        let mut found = None;
        for k in &self.known {
            if bool::from(k.digest.ct_eq(digest.as_slice())) {
                found = Some(k);
            }
        }
        found
            .map(|k| k.principal.clone())
            .ok_or_else(|| Error::Unauthorized("the token is not valid".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> Auth {
        Auth::new(&AuthConfig {
            tokens: vec![
                TokenConfig {
                    name: "reader".into(),
                    sha256: Some(hash_token("r-secret")),
                    scopes: vec![Scope::Read],
                    streams: Some(vec!["orders".into()]),
                    ..TokenConfig::default()
                },
                TokenConfig {
                    name: "ops".into(),
                    token: Some("o-secret".into()),
                    scopes: vec![Scope::Read, Scope::Write, Scope::Admin],
                    ..TokenConfig::default()
                },
            ],
            public_metrics: false,
        })
        .unwrap()
    }

    #[test]
    fn tokens_scopes_and_streams() {
        let auth = auth();
        assert!(matches!(
            auth.authenticate(None),
            Err(Error::Unauthorized(_))
        ));
        assert!(matches!(
            auth.authenticate(Some("nope")),
            Err(Error::Unauthorized(_))
        ));
        let reader = auth.authenticate(Some("r-secret")).unwrap();
        assert_eq!(reader.name, "reader");
        assert!(reader.require(Scope::Read).is_ok());
        assert!(matches!(
            reader.require(Scope::Write),
            Err(Error::Forbidden(_))
        ));
        assert!(reader.may_use("orders") && !reader.may_use("payments"));
        let ops = auth.authenticate(Some("o-secret")).unwrap();
        assert!(ops.require(Scope::Admin).is_ok() && ops.may_use("payments"));
        assert!(reader.authorize(Operation::Read("orders")).is_ok());
        assert!(reader.authorize(Operation::Browse).is_ok());
        for refused in [
            Operation::Read("payments"),
            Operation::Write("orders"),
            Operation::Admin("orders"),
        ] {
            assert!(
                matches!(reader.authorize(refused), Err(Error::Forbidden(_))),
                "{refused:?}"
            );
        }
        assert!(ops.authorize(Operation::Admin("payments")).is_ok());
        assert_eq!(Operation::Write("a").scope(), Scope::Write);
        assert_eq!(Operation::Admin("a").scope(), Scope::Admin);
    }

    #[test]
    fn bad_configurations_are_refused() {
        let bad = |t: TokenConfig| {
            Auth::new(&AuthConfig {
                tokens: vec![t],
                public_metrics: false,
            })
            .is_err()
        };
        assert!(bad(TokenConfig {
            sha256: Some("abc".into()),
            scopes: vec![Scope::Read],
            ..TokenConfig::default()
        }));
        assert!(bad(TokenConfig {
            token: Some("x".into()),
            ..TokenConfig::default()
        }));
        assert!(bad(TokenConfig {
            scopes: vec![Scope::Read],
            ..TokenConfig::default()
        }));
        assert_eq!(
            hash_token("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
