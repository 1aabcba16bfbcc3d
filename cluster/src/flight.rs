//! The Arrow Flight service strata's own node-to-node calls use, beside datafusion-distributed's
//! worker on the same port and behind the same cluster secret: `DoGet` of a [`PeerTicket`] (a
//! replay of a partition held here, or the view states of partitions held here) and `DoAction`
//! of a view's progress. Nothing here takes SQL text.

use crate::replay::{self, ReplayTicket};
use crate::source::ClusterSource;
use crate::views::{PROGRESS_ACTION, ProgressRequest, ViewTicket, states_batch};
use arrow::array::RecordBatch;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::FlightService;
use arrow_flight::{
    Action, ActionType, Criteria, Empty, FlightData, FlightDescriptor, FlightInfo,
    HandshakeRequest, HandshakeResponse, PollInfo, PutResult, SchemaResult, Ticket,
};
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, OnceLock};
use strata_views::{Error, RebuildEvent};
use tonic::{Request, Response, Status, Streaming};

/// What a node asks a peer to read.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PeerTicket {
    /// A replay of one partition.
    Replay(ReplayTicket),
    /// View states of some partitions.
    View(ViewTicket),
}

/// Serves replays, view reads and view progress of the partitions this node holds, and rebuilds
/// of views in this node's store.
pub(crate) struct PeerServer {
    pub(crate) source: Arc<ClusterSource>,
    pub(crate) rebuilder: Arc<OnceLock<Rebuilder>>,
    /// Turns true when the node stops serving: calls that wait (`stored_past`) answer then
    /// instead of holding the graceful shutdown for their whole wait.
    pub(crate) stopping: tokio::sync::watch::Receiver<bool>,
}

/// An action's one result: `value` as JSON.
fn one_result(value: &impl serde::Serialize) -> Answer<Stream<arrow_flight::Result>> {
    let body = serde_json::to_vec(value).map_err(|e| Status::internal(e.to_string()))?;
    let result = arrow_flight::Result { body: body.into() };
    Ok(Response::new(futures::stream::iter([Ok(result)]).boxed()))
}

/// The `DoAction` type asking a node to rebuild a view in its store (body: the view's name as a
/// JSON string); its results are the rebuild's progress, then its outcome (JSON `RebuildEvent`s).
pub(crate) const REBUILD_ACTION: &str = "view_rebuild";

/// Starts a rebuild of a view in this node's store and reports on it (the SQL engine's, set once
/// the engine exists).
pub type Rebuilder =
    Arc<dyn Fn(&str) -> strata_views::Result<BoxStream<'static, RebuildEvent>> + Send + Sync>;

type Answer<T> = Result<Response<T>, Status>;
type Stream<T> = BoxStream<'static, Result<T, Status>>;

/// The gRPC status of an error, kept recognisable on the other side.
fn status(e: Error) -> Status {
    match e {
        Error::Unavailable(m) => Status::unavailable(m),
        Error::Invalid(m) => Status::invalid_argument(m),
        Error::Timeout(m) => Status::deadline_exceeded(m),
        e => Status::internal(e.to_string()),
    }
}

fn blocking_failed(e: tokio::task::JoinError) -> Status {
    Status::internal(format!("a node-to-node read failed: {e}"))
}

impl PeerServer {
    async fn replay(&self, ticket: ReplayTicket) -> Answer<Stream<FlightData>> {
        let batches = replay::local(self.source.clone(), ticket)
            .await
            .map_err(status)?
            .map_err(|e| FlightError::ExternalError(Box::new(e)));
        Ok(Response::new(encode(batches)))
    }

    async fn view(&self, ticket: ViewTicket) -> Answer<Stream<FlightData>> {
        let source = self.source.clone();
        let states = tokio::task::spawn_blocking(move || source.local_view(&ticket))
            .await
            .map_err(blocking_failed)?
            .map_err(status)?;
        let batch = states_batch(states).map_err(status)?;
        Ok(Response::new(encode(futures::stream::iter([Ok(batch)]))))
    }
}

impl PeerServer {
    async fn decision(&self, body: &[u8]) -> Answer<Stream<arrow_flight::Result>> {
        let request: crate::DecisionRequest = serde_json::from_slice(body)
            .map_err(|e| Status::invalid_argument(format!("bad decision request: {e}")))?;
        let decision = self.source.local_decision(&request).await.map_err(status)?;
        one_result(&decision)
    }

    async fn stored_past(&self, body: &[u8]) -> Answer<Stream<arrow_flight::Result>> {
        let request: crate::StoredRequest = serde_json::from_slice(body)
            .map_err(|e| Status::invalid_argument(format!("bad stored-past request: {e}")))?;
        let mut stopping = self.stopping.clone();
        let stored = tokio::select! {
            stored = self.source.local_stored_past(&request) => stored.map_err(status)?,
            _ = stopping.wait_for(|stopping| *stopping) => {
                return Err(Status::unavailable("the node is stopping"));
            }
        };
        one_result(&stored)
    }

    fn rebuild(&self, body: &[u8]) -> Answer<Stream<arrow_flight::Result>> {
        let view: String = serde_json::from_slice(body)
            .map_err(|e| Status::invalid_argument(format!("bad rebuild request: {e}")))?;
        let rebuilder = self
            .rebuilder
            .get()
            .ok_or_else(|| Status::unavailable("this node cannot rebuild views yet"))?;
        let events = rebuilder(&view).map_err(|e| match e {
            Error::Store(strata_store::Error::UnknownView(v)) => {
                Status::not_found(format!("no materialized view named {v} on this node"))
            }
            e => Status::failed_precondition(e.to_string()),
        })?;
        Ok(Response::new(
            events
                .map(|event| {
                    serde_json::to_vec(&event)
                        .map(|body| arrow_flight::Result { body: body.into() })
                        .map_err(|e| Status::internal(e.to_string()))
                })
                .boxed(),
        ))
    }
}

fn encode(
    batches: impl futures::Stream<Item = Result<RecordBatch, FlightError>> + Send + 'static,
) -> Stream<FlightData> {
    FlightDataEncoderBuilder::new()
        .build(batches)
        .map_err(|e| match e {
            FlightError::ExternalError(inner) => match inner.downcast::<Error>() {
                Ok(e) => status(*e),
                Err(inner) => Status::internal(inner.to_string()),
            },
            e => Status::internal(e.to_string()),
        })
        .boxed()
}

const ONLY: &str = "only strata's node-to-node DoGet and DoAction are served here";

#[tonic::async_trait]
impl FlightService for PeerServer {
    type HandshakeStream = Stream<HandshakeResponse>;
    type ListFlightsStream = Stream<FlightInfo>;
    type DoGetStream = Stream<FlightData>;
    type DoPutStream = Stream<PutResult>;
    type DoExchangeStream = Stream<FlightData>;
    type DoActionStream = Stream<arrow_flight::Result>;
    type ListActionsStream = Stream<ActionType>;

    async fn do_get(&self, request: Request<Ticket>) -> Answer<Self::DoGetStream> {
        let ticket: PeerTicket = serde_json::from_slice(&request.into_inner().ticket)
            .map_err(|e| Status::invalid_argument(format!("bad node-to-node ticket: {e}")))?;
        match ticket {
            PeerTicket::Replay(t) => self.replay(t).await,
            PeerTicket::View(t) => self.view(t).await,
        }
    }

    async fn do_action(&self, request: Request<Action>) -> Answer<Self::DoActionStream> {
        let action = request.into_inner();
        if action.r#type == REBUILD_ACTION {
            return self.rebuild(&action.body);
        }
        if action.r#type == crate::decisions::DECISION_ACTION {
            return self.decision(&action.body).await;
        }
        if action.r#type == crate::stored::STORED_ACTION {
            return self.stored_past(&action.body).await;
        }
        if action.r#type != PROGRESS_ACTION {
            return Err(Status::invalid_argument(format!(
                "unknown node-to-node action {:?}",
                action.r#type
            )));
        }
        let question: ProgressRequest = serde_json::from_slice(&action.body)
            .map_err(|e| Status::invalid_argument(format!("bad view progress request: {e}")))?;
        let source = self.source.clone();
        let progress = tokio::task::spawn_blocking(move || source.local_progress(&question))
            .await
            .map_err(blocking_failed)?;
        one_result(&progress)
    }

    async fn handshake(
        &self,
        _r: Request<Streaming<HandshakeRequest>>,
    ) -> Answer<Self::HandshakeStream> {
        Err(Status::unimplemented(ONLY))
    }
    async fn list_flights(&self, _r: Request<Criteria>) -> Answer<Self::ListFlightsStream> {
        Err(Status::unimplemented(ONLY))
    }
    async fn get_flight_info(&self, _r: Request<FlightDescriptor>) -> Answer<FlightInfo> {
        Err(Status::unimplemented(ONLY))
    }
    async fn poll_flight_info(&self, _r: Request<FlightDescriptor>) -> Answer<PollInfo> {
        Err(Status::unimplemented(ONLY))
    }
    async fn get_schema(&self, _r: Request<FlightDescriptor>) -> Answer<SchemaResult> {
        Err(Status::unimplemented(ONLY))
    }
    async fn do_put(&self, _r: Request<Streaming<FlightData>>) -> Answer<Self::DoPutStream> {
        Err(Status::unimplemented(ONLY))
    }
    async fn do_exchange(
        &self,
        _r: Request<Streaming<FlightData>>,
    ) -> Answer<Self::DoExchangeStream> {
        Err(Status::unimplemented(ONLY))
    }
    async fn list_actions(&self, _r: Request<Empty>) -> Answer<Self::ListActionsStream> {
        Err(Status::unimplemented(ONLY))
    }
}
