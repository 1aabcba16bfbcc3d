//! Startup and authentication: the password is a token, checked as over HTTP (constant time,
//! against the configured digests). It is asked for in cleartext, so only over TLS or from this
//! machine (loopback); without tokens configured, any user is let in.

use super::session::{FROM_STARTUP, Session};
use super::{Cancels, Front};
use crate::auth::{Auth, Principal};
use async_trait::async_trait;
use futures::{Sink, SinkExt};
use pgwire::api::auth::{
    LoginInfo, ServerParameterProvider, StartupHandler, finish_authentication,
    protocol_negotiation, save_startup_parameters_to_metadata,
};
use pgwire::api::{ClientInfo, PgWireConnectionState, PidSecretKeyGenerator};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::startup::Authentication;
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::Arc;

/// Checks the password and opens the session.
pub(super) struct Startup {
    auth: Arc<Auth>,
    cancels: Arc<Cancels>,
    pids: Arc<pgwire::api::RandomPidSecretKeyGenerator>,
}

impl Startup {
    pub fn new(front: &Front) -> Self {
        Self {
            auth: front.auth.clone(),
            cancels: front.cancels.clone(),
            pids: front.pids.clone(),
        }
    }

    /// Opens the session of `principal` and tells the client it is in.
    async fn admit<C>(&self, client: &mut C, principal: Principal) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let (pid, secret) = self.pids.generate(client);
        client.set_pid_and_secret_key(pid, secret.clone());
        let session = Session::new(principal, self.cancels.clone(), (pid, secret.to_bytes()));
        for name in FROM_STARTUP {
            if let Some(value) = client.metadata().get(*name).cloned() {
                // What a client asks for at startup that strata cannot honour is left at its
                // default rather than refused: `SHOW` tells the truth.
                let _ = session.set(&name.to_ascii_lowercase(), Some(value));
            }
        }
        client.session_extensions().insert(session);
        finish_authentication(client, &Parameters).await
    }
}

fn fatal(code: &str, message: String) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "FATAL".into(),
        code.into(),
        message,
    )))
}

#[async_trait]
impl StartupHandler for Startup {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        match message {
            PgWireFrontendMessage::Startup(ref startup) => {
                protocol_negotiation(client, startup).await?;
                save_startup_parameters_to_metadata(client, startup);
                if !self.auth.enabled() {
                    return self.admit(client, Principal::anyone()).await;
                }
                if !client.is_secure() && !client.socket_addr().ip().is_loopback() {
                    return Err(fatal(
                        "28000",
                        "this server takes the token as the password only over TLS: connect with sslmode=require".into(),
                    ));
                }
                client.set_state(PgWireConnectionState::AuthenticationInProgress);
                client
                    .send(PgWireBackendMessage::Authentication(
                        Authentication::CleartextPassword,
                    ))
                    .await?;
                Ok(())
            }
            PgWireFrontendMessage::PasswordMessageFamily(password) => {
                let password = password.into_password()?;
                let user = LoginInfo::from_client_info(client)
                    .user()
                    .unwrap_or_default()
                    .to_owned();
                match self.auth.authenticate(Some(password.password.as_str())) {
                    Ok(principal) => self.admit(client, principal).await,
                    Err(e) => {
                        metrics::counter!("strata_requests_refused_total", "reason" => "pg_auth")
                            .increment(1);
                        Err(fatal(
                            "28P01",
                            format!(
                                "password authentication failed for user \"{user}\": {e} (the password is a strata token)"
                            ),
                        ))
                    }
                }
            }
            _ => Ok(()),
        }
    }
}

/// The parameters a client is told at startup.
struct Parameters;

impl ServerParameterProvider for Parameters {
    fn server_parameters<C>(&self, client: &C) -> Option<HashMap<String, String>>
    where
        C: ClientInfo,
    {
        let session = client.session_extensions().get::<Session>();
        let get = |name: &str, default: &str| {
            session
                .as_ref()
                .and_then(|s| s.get(name))
                .unwrap_or_else(|| default.to_owned())
        };
        let user = client
            .metadata()
            .get(pgwire::api::METADATA_USER)
            .cloned()
            .unwrap_or_default();
        Some(HashMap::from([
            ("server_version".into(), strata_views::SERVER_VERSION.into()),
            ("server_encoding".into(), "UTF8".into()),
            ("client_encoding".into(), "UTF8".into()),
            ("DateStyle".into(), "ISO, MDY".into()),
            ("IntervalStyle".into(), "postgres".into()),
            ("TimeZone".into(), get("timezone", "UTC")),
            ("integer_datetimes".into(), "on".into()),
            ("standard_conforming_strings".into(), "on".into()),
            ("is_superuser".into(), "off".into()),
            ("in_hot_standby".into(), "off".into()),
            ("default_transaction_read_only".into(), "on".into()),
            ("application_name".into(), get("application_name", "")),
            ("session_authorization".into(), user),
        ]))
    }
}
