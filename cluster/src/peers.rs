//! Connections to peers: one cached channel per node (TLS when the node has a certificate), and
//! the Arrow Flight calls strata makes on them itself (replays, view reads, view progress), each
//! carrying the cluster secret.

use crate::worker::SECRET_HEADER;
use arrow::array::RecordBatch;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::{Action, Ticket};
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::time::Duration;
use strata_views::Error;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use url::Url;

/// The TLS of node-to-node calls: the node's certificate chain and key (PEM). Peers are trusted
/// when their certificate chains to that certificate — the nodes of a cluster share one, or one
/// CA — and names the host they are reached at.
#[derive(Clone, Debug)]
pub struct PeerTls {
    /// The certificate chain (PEM).
    pub cert: Vec<u8>,
    /// The private key (PEM).
    pub key: Vec<u8>,
}

/// Channels to peers, by URL.
pub(crate) struct Peers {
    secret: MetadataValue<Ascii>,
    tls: Option<PeerTls>,
    channels: Mutex<HashMap<Url, Channel>>,
}

/// How long a peer may take to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A peer that cannot be reached or answers with a broken connection: retryable.
pub(crate) fn unreachable(url: &Url, e: &dyn std::fmt::Display) -> Error {
    Error::Unavailable(format!(
        "cannot reach the node at {url} ({e}); retry shortly"
    ))
}

/// The error a peer's Flight status stands for.
fn from_status(url: &Url, s: &tonic::Status) -> Error {
    match s.code() {
        tonic::Code::Unavailable => Error::Unavailable(s.message().to_owned()),
        tonic::Code::InvalidArgument => Error::Invalid(s.message().to_owned()),
        tonic::Code::DeadlineExceeded => Error::Timeout(s.message().to_owned()),
        tonic::Code::Unknown | tonic::Code::Cancelled | tonic::Code::Internal
            if s.message().contains("transport") || s.message().contains("connection") =>
        {
            unreachable(url, s)
        }
        _ => Error::Execution(format!("the node at {url} failed: {}", s.message())),
    }
}

impl Peers {
    /// Channels carrying `secret`, over TLS when `tls` is set.
    ///
    /// # Errors
    /// A secret that cannot travel in a header.
    pub(crate) fn new(secret: &str, tls: Option<PeerTls>) -> crate::Result<Self> {
        let secret = secret
            .parse()
            .map_err(|_| crate::Error::Config("cluster.secret must be printable ASCII".into()))?;
        Ok(Self {
            secret,
            tls,
            channels: Mutex::new(HashMap::new()),
        })
    }

    /// The TLS of node-to-node calls, if they use it.
    pub(crate) fn tls(&self) -> Option<&PeerTls> {
        self.tls.as_ref()
    }

    /// The secret, as a header value.
    pub(crate) fn secret(&self) -> &MetadataValue<Ascii> {
        &self.secret
    }

    /// The URL a peer is dialled at: `https` when node-to-node calls use TLS.
    fn dial_url(&self, url: &Url) -> Url {
        let mut url = url.clone();
        if self.tls.is_some() && url.scheme() == "http" {
            // Both are special schemes, so the swap cannot fail.
            let _ = url.set_scheme("https");
        }
        url
    }

    /// A connected channel to the node at `url` (cached; a failed one is dropped from the cache
    /// by [`Peers::forget`]).
    ///
    /// # Errors
    /// [`Error::Unavailable`] when the node cannot be reached.
    pub(crate) async fn channel(&self, url: &Url) -> Result<Channel, Error> {
        if let Some(c) = self.channels.lock().get(url) {
            return Ok(c.clone());
        }
        let dial = self.dial_url(url);
        let mut endpoint = Endpoint::from_shared(dial.to_string())
            .map_err(|e| unreachable(url, &e))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true);
        if let Some(tls) = &self.tls {
            let mut config =
                ClientTlsConfig::new().ca_certificate(Certificate::from_pem(tls.cert.clone()));
            if let Some(host) = dial.host_str() {
                config = config.domain_name(host.trim_matches(['[', ']']));
            }
            endpoint = endpoint
                .tls_config(config)
                .map_err(|e| unreachable(url, &e))?;
        }
        let channel = endpoint.connect().await.map_err(|e| {
            let root = std::error::Error::source(&e).map_or(e.to_string(), |s| s.to_string());
            unreachable(url, &root)
        })?;
        self.channels.lock().insert(url.clone(), channel.clone());
        Ok(channel)
    }

    /// Drops the cached channel to `url` (after it failed), so the next call reconnects.
    pub(crate) fn forget(&self, url: &Url) {
        self.channels.lock().remove(url);
    }

    async fn client(
        &self,
        url: &Url,
    ) -> Result<
        FlightServiceClient<
            tonic::service::interceptor::InterceptedService<
                Channel,
                impl tonic::service::Interceptor + use<>,
            >,
        >,
        Error,
    > {
        let channel = self.channel(url).await?;
        let secret = self.secret.clone();
        Ok(FlightServiceClient::with_interceptor(
            channel,
            move |mut r: tonic::Request<()>| {
                r.metadata_mut().insert(SECRET_HEADER, secret.clone());
                Ok(r)
            },
        ))
    }

    /// `DoGet` of `ticket` (JSON) on the node at `url`: the record batches it streams.
    ///
    /// # Errors
    /// The node unreachable, or its refusal.
    pub(crate) async fn get(
        &self,
        url: &Url,
        ticket: &impl serde::Serialize,
    ) -> Result<BoxStream<'static, Result<RecordBatch, Error>>, Error> {
        let body = serde_json::to_vec(ticket).map_err(|e| Error::Execution(e.to_string()))?;
        let mut client = self.client(url).await?;
        let response = client
            .do_get(Ticket {
                ticket: body.into(),
            })
            .await
            .map_err(|s| {
                self.forget_if_broken(url, &s);
                from_status(url, &s)
            })?;
        let decoded = arrow_flight::decode::FlightRecordBatchStream::new_from_flight_data(
            response
                .into_inner()
                .map_err(|s| FlightError::Tonic(Box::new(s))),
        );
        let url = url.clone();
        Ok(decoded
            .map_err(move |e| match e {
                FlightError::Tonic(s) => from_status(&url, &s),
                e => Error::Execution(format!("a read from the node at {url} failed: {e}")),
            })
            .boxed())
    }

    /// `DoAction` `kind` with `body` (JSON) on the node at `url`: the body of its one result.
    ///
    /// # Errors
    /// The node unreachable, or its refusal.
    pub(crate) async fn action(
        &self,
        url: &Url,
        kind: &str,
        body: &impl serde::Serialize,
    ) -> Result<Vec<u8>, Error> {
        let mut results = self.action_stream(url, kind, body).await?;
        results.next().await.unwrap_or_else(|| {
            Err(Error::Execution(format!(
                "the node at {url} gave no answer to {kind}"
            )))
        })
    }

    /// `DoAction` `kind` with `body` (JSON) on the node at `url`: the bodies of its results, as
    /// they come.
    ///
    /// # Errors
    /// The node unreachable, or its refusal (also as an item of the stream once started).
    pub(crate) async fn action_stream(
        &self,
        url: &Url,
        kind: &str,
        body: &impl serde::Serialize,
    ) -> Result<BoxStream<'static, Result<Vec<u8>, Error>>, Error> {
        let body = serde_json::to_vec(body).map_err(|e| Error::Execution(e.to_string()))?;
        let mut client = self.client(url).await?;
        let results = client
            .do_action(Action {
                r#type: kind.to_owned(),
                body: body.into(),
            })
            .await
            .map_err(|s| {
                self.forget_if_broken(url, &s);
                from_status(url, &s)
            })?
            .into_inner();
        let url = url.clone();
        Ok(results
            .map(move |r| {
                r.map(|r| r.body.to_vec())
                    .map_err(|s| from_status(&url, &s))
            })
            .boxed())
    }

    fn forget_if_broken(&self, url: &Url, s: &tonic::Status) {
        if matches!(s.code(), tonic::Code::Unavailable | tonic::Code::Unknown) {
            self.forget(url);
        }
    }
}
