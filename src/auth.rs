//! Authentication and authorization of HTTP requests: bearer tokens from the configuration, each
//! with scopes (`read`, `write`, `admin`) and optionally limited to named streams.
//!
//! With no token configured every request is let through (a single-user node on localhost). With
//! tokens, a request without a valid `Authorization: Bearer …` header gets 401, one whose token
//! lacks the scope of the endpoint (or the stream) gets 403. `/healthz` is always open; `/metrics`
//! is open when `auth.public_metrics` says so and needs `read` otherwise.
//!
//! Tokens are kept as SHA-256 digests (`sha256 = "hex"` in the configuration; `strata hash-token`
//! prints one); a plain `token = "…"` is accepted too, for tests and quick set-ups.

use crate::{Error, Result};
use axum::extract::{Request, State};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::sync::Arc;
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

    /// Refuses with 403 unless the principal has `scope`.
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

    /// Refuses with 403 unless the principal may use `stream`.
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
    pub fn new(config: &AuthConfig) -> Result<Self> {
        let mut known = Vec::new();
        for (i, t) in config.tokens.iter().enumerate() {
            let name = if t.name.is_empty() {
                format!("#{}", i + 1)
            } else {
                t.name.clone()
            };
            let digest = match (&t.sha256, &t.token) {
                (Some(hex), None) => parse_hex(hex).ok_or_else(|| {
                    Error::Config(format!(
                        "auth token {name}: sha256 must be 64 hex digits (see `strata hash-token`)"
                    ))
                })?,
                (None, Some(plain)) if !plain.is_empty() => {
                    let mut d = [0u8; 32];
                    d.copy_from_slice(&Sha256::digest(plain.as_bytes()));
                    d
                }
                _ => {
                    return Err(Error::Config(format!(
                        "auth token {name}: give exactly one of `sha256` or `token`"
                    )));
                }
            };
            if t.scopes.is_empty() {
                return Err(Error::Config(format!("auth token {name}: no scopes")));
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

    /// Whether any token is configured.
    pub fn enabled(&self) -> bool {
        !self.known.is_empty()
    }

    /// The principal a bearer token names, or 401.
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

/// The scope an endpoint needs (`None`: open to all).
fn scope_of(auth: &Auth, method: &Method, path: &str) -> Option<Scope> {
    match path {
        "/healthz" => None,
        "/metrics" if auth.public_metrics => None,
        _ if path.starts_with("/v1/streams/") && path.ends_with("/events") => {
            Some(if method == Method::POST {
                Scope::Write
            } else {
                Scope::Read
            })
        }
        _ if path.starts_with("/v1/streams/") && method == Method::PUT => Some(Scope::Admin),
        _ if path.starts_with("/v1/views/") && method == Method::POST => Some(Scope::Admin),
        _ => Some(Scope::Read),
    }
}

fn bearer(request: &Request) -> Option<&str> {
    let value = request
        .headers()
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (kind, token) = value.trim().split_once(' ')?;
    kind.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Middleware: authenticates the request, checks the endpoint's scope, and hands the
/// [`Principal`] to the handler as an extension.
pub async fn layer(State(auth): State<Arc<Auth>>, mut request: Request, next: Next) -> Response {
    let principal = match scope_of(&auth, request.method(), request.uri().path()) {
        None => Principal::anyone(),
        Some(scope) => match auth
            .authenticate(bearer(&request))
            .and_then(|p| p.require(scope).map(|()| p))
        {
            Ok(p) => p,
            Err(e) => return e.into_response(),
        },
    };
    request.extensions_mut().insert(principal);
    next.run(request).await
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
        assert_eq!(
            scope_of(&auth, &Method::POST, "/v1/streams/a/events"),
            Some(Scope::Write)
        );
        assert_eq!(
            scope_of(&auth, &Method::GET, "/v1/streams/a/events"),
            Some(Scope::Read)
        );
        assert_eq!(
            scope_of(&auth, &Method::PUT, "/v1/streams/a"),
            Some(Scope::Admin)
        );
        assert_eq!(scope_of(&auth, &Method::GET, "/healthz"), None);
        assert_eq!(scope_of(&auth, &Method::GET, "/metrics"), Some(Scope::Read));
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
