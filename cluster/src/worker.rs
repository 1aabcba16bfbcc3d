//! The node-to-node service: datafusion-distributed's worker, taking plan fragments from peers
//! (never SQL text) and only with the cluster secret; and the connections this node opens to its
//! peers, which carry that secret.

use crate::codec::ScanCodec;
use crate::peers::Peers;
use async_trait::async_trait;
use datafusion::error::DataFusionError;
use datafusion::execution::SessionState;
use datafusion_distributed::grpc::{BoxCloneSyncChannel, create_worker_client};
use datafusion_distributed::{
    ChannelResolver, DistributedExt, WorkerChannel, WorkerQueryContext, WorkerSessionBuilder,
};
use http::HeaderValue;
use std::sync::Arc;
use subtle::ConstantTimeEq;
use tonic::service::Interceptor;
use tonic::{Request, Status};
use url::Url;

/// The header carrying the cluster secret on node-to-node calls.
pub const SECRET_HEADER: &str = "x-strata-cluster-secret";

/// Refuses a node-to-node call without the cluster secret.
#[derive(Clone)]
pub(crate) struct SecretCheck {
    pub(crate) secret: Arc<str>,
}

impl Interceptor for SecretCheck {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let given = request
            .metadata()
            .get(SECRET_HEADER)
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        if bool::from(given.ct_eq(self.secret.as_bytes())) {
            Ok(request)
        } else {
            metrics::counter!("strata_cluster_calls_refused_total").increment(1);
            Err(Status::unauthenticated(
                "node-to-node calls need the cluster secret (cluster.secret / STRATA_CLUSTER_SECRET)",
            ))
        }
    }
}

/// The planner's connections to peers: [`Peers`]' channels (cached per URL, TLS when set), each
/// request carrying the cluster secret. A peer that cannot be reached is reported as retryable.
#[derive(Clone)]
pub(crate) struct Channels {
    peers: Arc<Peers>,
    secret: HeaderValue,
}

impl Channels {
    pub(crate) fn new(peers: Arc<Peers>) -> Result<Self, crate::Error> {
        let secret = HeaderValue::from_bytes(peers.secret().as_bytes())
            .map_err(|_| crate::Error::Config("cluster.secret must be printable ASCII".into()))?;
        Ok(Self { peers, secret })
    }
}

#[async_trait]
impl ChannelResolver for Channels {
    async fn get_worker_client_for_url(
        &self,
        url: &Url,
    ) -> Result<Box<dyn WorkerChannel>, DataFusionError> {
        let channel = self
            .peers
            .channel(url)
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        let secret = self.secret.clone();
        let with_secret = tower::ServiceBuilder::new()
            .map_request(move |mut request: http::Request<tonic::body::Body>| {
                request.headers_mut().insert(SECRET_HEADER, secret.clone());
                request
            })
            .service(channel);
        Ok(create_worker_client(BoxCloneSyncChannel::new(with_secret)))
    }
}

/// The session a plan fragment from a peer runs in: strata's scans and JSON functions, and the
/// same secret-carrying connections for fragments that read from other nodes.
#[derive(Clone)]
pub(crate) struct Sessions {
    pub(crate) codec: Arc<ScanCodec>,
    pub(crate) channels: Channels,
}

#[async_trait]
impl WorkerSessionBuilder for Sessions {
    async fn build_session_state(
        &self,
        ctx: WorkerQueryContext,
    ) -> Result<SessionState, DataFusionError> {
        let mut state = ctx
            .builder
            .with_distributed_user_codec_arc(self.codec.clone())
            .with_distributed_channel_resolver(self.channels.clone())
            .build();
        datafusion_functions_json::register_all(&mut state)?;
        Ok(state)
    }
}
