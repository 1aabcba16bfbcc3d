//! Cluster-wide SQL: a query sent to any node runs over every partition of the streams it reads.
//!
//! The node receiving a query plans it once with DataFusion; [datafusion-distributed] cuts the
//! plan into stages. Each stream scan becomes one task per node holding some of its partitions
//! ([`plan`]): that task — the scan with its filters and projection, and whatever DataFusion runs
//! above it before the next exchange (partial aggregates, partial sorts and limits) — runs on the
//! holder, which checks as it starts that it still holds those partitions. Results stream back
//! over Arrow Flight and are merged on the receiving node; tasks for this node run in process.
//!
//! Nodes find each other in the statuses they publish ([`ClusterMap`]). Node-to-node calls carry
//! the cluster secret and are refused without it; they carry plan fragments, never SQL text.
//!
//! datafusion-distributed's API moves fast: it is pinned exactly and used only in this crate.
//!
//! [datafusion-distributed]: https://github.com/datafusion-contrib/datafusion-distributed

mod codec;
mod decisions;
mod error;
mod flight;
mod map;
mod peers;
mod plan;
mod replay;
mod source;
mod stored;
mod views;
mod worker;

pub use codec::ScanCodec;
pub use decisions::DecisionRequest;
pub use error::{Error, Result};
pub use flight::{PeerTicket, Rebuilder};
pub use map::{ClusterMap, LocalNode, node_url};
pub use peers::PeerTls;
pub use replay::{ReplayBatches, ReplayTicket};
pub use source::ClusterSource;
pub use stored::StoredRequest;
pub use views::{ProgressRequest, ViewTicket};
pub use worker::SECRET_HEADER;

use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion_distributed::{
    DistributedExec, DistributedExt, SessionStateBuilderExt, Worker, display_plan_ascii,
};
use std::future::Future;
use std::sync::Arc;
use strata_views::{ExplainHook, StateHook};
use tokio::net::TcpListener;
use tonic::service::interceptor::InterceptedService;
use worker::{Channels, SecretCheck, Sessions};

/// This node's part in cluster queries: the planner's hooks and the node-to-node worker.
#[derive(Clone)]
pub struct Cluster {
    map: Arc<ClusterMap>,
    source: Arc<ClusterSource>,
    worker: Worker,
    codec: Arc<ScanCodec>,
    channels: Channels,
    secret: Arc<str>,
    rebuilder: Arc<std::sync::OnceLock<Rebuilder>>,
}

/// The certificate and key a TLS server is set up with.
fn server_tls(tls: &PeerTls) -> tonic::transport::ServerTlsConfig {
    tonic::transport::ServerTlsConfig::new().identity(tonic::transport::Identity::from_pem(
        tls.cert.clone(),
        tls.key.clone(),
    ))
}

impl Cluster {
    /// This node's part, reading its own shards through `source` (whose peers carry the cluster
    /// secret), running fragments in `runtime` (the same memory limit as local queries).
    ///
    /// # Errors
    /// A secret that cannot travel in a header.
    pub fn new(
        map: Arc<ClusterMap>,
        source: Arc<ClusterSource>,
        runtime: Arc<RuntimeEnv>,
    ) -> Result<Self> {
        let codec = Arc::new(ScanCodec::new(source.clone()));
        let channels = Channels::new(source.peers().clone())?;
        let secret: Arc<str> = source
            .peers()
            .secret()
            .to_str()
            .map_err(|_| Error::Config("cluster.secret must be printable ASCII".into()))?
            .into();
        let worker = Worker::from_session_builder(Sessions {
            codec: codec.clone(),
            channels: channels.clone(),
        })
        .with_runtime_env(runtime);
        Ok(Self {
            map,
            source,
            worker,
            codec,
            channels,
            secret,
            rebuilder: Arc::default(),
        })
    }

    /// The map of the cluster.
    pub fn map(&self) -> &Arc<ClusterMap> {
        &self.map
    }

    /// What turns a session into one whose queries span the cluster.
    pub fn hook(&self) -> StateHook {
        let this = self.clone();
        Arc::new(move |builder| {
            builder
                .with_distributed_worker_resolver(map::Resolver(this.map.clone()))
                .with_distributed_planner()
                .with_distributed_user_codec_arc(this.codec.clone())
                .with_distributed_channel_resolver(this.channels.clone())
                .with_distributed_local_worker_context(
                    this.worker
                        .to_local_worker_context(this.map.local().url.clone()),
                )
                .with_distributed_desired_task_count_handler(plan::TaskCount(this.map.clone()))
                .with_distributed_scale_up_leaf_node_handler(plan::Shares(this.map.clone()))
                .with_distributed_route_tasks_handler(plan::Route(this.map.clone()))
        })
    }

    /// Replays one partition from the node serving it (this one, or a peer over the node-to-node
    /// port).
    ///
    /// # Errors
    /// [`strata_views::Error::Unavailable`] when no live node serves the partition or its holder
    /// cannot be reached; the holder's refusal.
    pub async fn replay(&self, ticket: ReplayTicket) -> strata_views::Result<ReplayBatches> {
        let holders = self.map.holders(&ticket.stream, &[ticket.partition])?;
        match self.source.located(holders)?.into_iter().next() {
            Some((Some(url), _)) => {
                self.source
                    .peers()
                    .get(&url, &PeerTicket::Replay(ticket))
                    .await
            }
            _ => replay::local(self.source.clone(), ticket).await,
        }
    }

    /// Sets how this node rebuilds a view in its own store when a peer asks (once; later calls
    /// change nothing).
    pub fn set_rebuilder(&self, rebuilder: Rebuilder) {
        let _ = self.rebuilder.set(rebuilder);
    }

    /// The live peers keeping shards, by id, with their node-to-node URL.
    pub fn store_peers(&self) -> std::collections::BTreeMap<String, url::Url> {
        self.map.store_peers()
    }

    /// Asks the node at `url` to rebuild view `name` in its store; its progress and outcome as
    /// they come. A node that cannot be reached or refuses ends the stream with a failure.
    pub async fn rebuild_on(
        &self,
        url: &url::Url,
        name: &str,
    ) -> futures::stream::BoxStream<'static, strata_views::RebuildEvent> {
        use futures::StreamExt;
        use strata_views::RebuildEvent;
        let failed = |e: &dyn std::fmt::Display| RebuildEvent::Failed {
            error: e.to_string(),
        };
        match self
            .source
            .peers()
            .action_stream(url, flight::REBUILD_ACTION, &name)
            .await
        {
            Ok(results) => results
                .map(move |r| match r {
                    Ok(body) => serde_json::from_slice::<RebuildEvent>(&body)
                        .unwrap_or_else(|e| failed(&format!("a peer's rebuild progress: {e}"))),
                    Err(e) => failed(&e),
                })
                .boxed(),
            Err(e) => futures::stream::iter([failed(&e)]).boxed(),
        }
    }

    /// Renders a plan spanning nodes as its stages, with the node of each task.
    pub fn explain(&self) -> ExplainHook {
        Arc::new(|plan| {
            plan.downcast_ref::<DistributedExec>()
                .map(|_| display_plan_ascii(plan.as_ref(), false))
        })
    }

    /// Serves node-to-node calls on `listener` until `shutdown` completes.
    ///
    /// # Errors
    /// The server failing.
    pub async fn serve(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<()> {
        let service = InterceptedService::new(
            self.worker.clone().into_worker_server(),
            SecretCheck {
                secret: self.secret.clone(),
            },
        );
        let (stop, stopping) = tokio::sync::watch::channel(false);
        let shutdown = async move {
            shutdown.await;
            stop.send_replace(true);
        };
        let replays = InterceptedService::new(
            arrow_flight::flight_service_server::FlightServiceServer::new(flight::PeerServer {
                source: self.source.clone(),
                rebuilder: self.rebuilder.clone(),
                stopping,
            }),
            SecretCheck {
                secret: self.secret.clone(),
            },
        );
        let mut server = tonic::transport::Server::builder();
        if let Some(tls) = self.source.peers().tls() {
            server = server.tls_config(server_tls(tls))?;
        }
        server
            .add_service(service)
            .add_service(replays)
            .serve_with_incoming_shutdown(
                // Small answers (a lookup's few states) must not wait for delayed ACKs.
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                shutdown,
            )
            .await?;
        Ok(())
    }
}

/// A failure to reach another node during a cluster query (it died, or its connection broke) is
/// as retryable as a partition that moved. datafusion-distributed's worker protocol keeps only
/// the text of such failures, so the text is what is recognised.
pub fn unreachable_peer(e: strata_views::Error) -> strata_views::Error {
    match e {
        strata_views::Error::Execution(text)
            if [
                "transport error",
                "tcp connect",
                "connection",
                "broken pipe",
                "h2 protocol",
            ]
            .iter()
            .any(|m| text.to_ascii_lowercase().contains(m)) =>
        {
            strata_views::Error::Unavailable(format!(
                "a node this query reads from failed while it ran ({text}); retry shortly"
            ))
        }
        e => e,
    }
}

#[cfg(test)]
mod tests;
