//! Replay of a partition from the node holding it: an Arrow Flight `DoGet` on the node-to-node
//! port (behind the cluster secret), whose ticket says what to read. The holder reads its shard
//! exactly as a local replay does; the asking node writes the batches out as NDJSON.

use crate::source::ClusterSource;
use crate::worker::SECRET_HEADER;
use arrow::array::RecordBatch;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::flight_service_server::FlightService;
use arrow_flight::{
    Action, ActionType, Criteria, Empty, FlightData, FlightDescriptor, FlightInfo,
    HandshakeRequest, HandshakeResponse, PollInfo, PutResult, SchemaResult, Ticket,
};
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use strata_views::Error;
use tonic::{Request, Response, Status, Streaming};
use url::Url;

/// What a replay of one partition reads.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReplayTicket {
    /// The stream.
    pub stream: String,
    /// The partition.
    pub partition: u32,
    /// The first offset.
    pub from: u64,
    /// Start at the first event at or after this time (epoch ms) instead, if later.
    pub from_time: Option<i64>,
    /// Only events with this key.
    pub key: Option<String>,
    /// At most this many events.
    pub limit: usize,
}

/// Batches of a replay, as they arrive.
pub type ReplayBatches = BoxStream<'static, Result<RecordBatch, Error>>;

/// Serves replays of the partitions this node holds.
pub(crate) struct ReplayServer {
    pub(crate) source: Arc<ClusterSource>,
}

type Answer<T> = Result<Response<T>, Status>;
type Stream<T> = BoxStream<'static, Result<T, Status>>;

fn status(e: Error) -> Status {
    match e {
        Error::Unavailable(m) => Status::unavailable(m),
        Error::Invalid(m) => Status::invalid_argument(m),
        e => Status::internal(e.to_string()),
    }
}

#[tonic::async_trait]
impl FlightService for ReplayServer {
    type HandshakeStream = Stream<HandshakeResponse>;
    type ListFlightsStream = Stream<FlightInfo>;
    type DoGetStream = Stream<FlightData>;
    type DoPutStream = Stream<PutResult>;
    type DoExchangeStream = Stream<FlightData>;
    type DoActionStream = Stream<arrow_flight::Result>;
    type ListActionsStream = Stream<ActionType>;

    async fn do_get(&self, request: Request<Ticket>) -> Answer<Self::DoGetStream> {
        let ticket: ReplayTicket = serde_json::from_slice(&request.into_inner().ticket)
            .map_err(|e| Status::invalid_argument(format!("bad replay ticket: {e}")))?;
        let source = self.source.clone();
        let scan = tokio::task::spawn_blocking(move || source.replay(&ticket))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(status)?;
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<RecordBatch, FlightError>>(2);
        tokio::task::spawn_blocking(move || {
            for batch in scan {
                let batch = batch.map_err(|e| FlightError::ExternalError(Box::new(e)));
                let failed = batch.is_err();
                if tx.blocking_send(batch).is_err() || failed {
                    break;
                }
            }
        });
        let batches = tokio_stream::wrappers::ReceiverStream::new(rx);
        let data = FlightDataEncoderBuilder::new()
            .build(batches)
            .map_err(|e| Status::internal(e.to_string()));
        Ok(Response::new(data.boxed()))
    }

    async fn handshake(
        &self,
        _r: Request<Streaming<HandshakeRequest>>,
    ) -> Answer<Self::HandshakeStream> {
        Err(Status::unimplemented("only DoGet (replay) is served here"))
    }
    async fn list_flights(&self, _r: Request<Criteria>) -> Answer<Self::ListFlightsStream> {
        Err(Status::unimplemented("only DoGet (replay) is served here"))
    }
    async fn get_flight_info(&self, _r: Request<FlightDescriptor>) -> Answer<FlightInfo> {
        Err(Status::unimplemented("only DoGet (replay) is served here"))
    }
    async fn poll_flight_info(&self, _r: Request<FlightDescriptor>) -> Answer<PollInfo> {
        Err(Status::unimplemented("only DoGet (replay) is served here"))
    }
    async fn get_schema(&self, _r: Request<FlightDescriptor>) -> Answer<SchemaResult> {
        Err(Status::unimplemented("only DoGet (replay) is served here"))
    }
    async fn do_put(&self, _r: Request<Streaming<FlightData>>) -> Answer<Self::DoPutStream> {
        Err(Status::unimplemented("only DoGet (replay) is served here"))
    }
    async fn do_exchange(
        &self,
        _r: Request<Streaming<FlightData>>,
    ) -> Answer<Self::DoExchangeStream> {
        Err(Status::unimplemented("only DoGet (replay) is served here"))
    }
    async fn do_action(&self, _r: Request<Action>) -> Answer<Self::DoActionStream> {
        Err(Status::unimplemented("only DoGet (replay) is served here"))
    }
    async fn list_actions(&self, _r: Request<Empty>) -> Answer<Self::ListActionsStream> {
        Err(Status::unimplemented("only DoGet (replay) is served here"))
    }
}

/// The batches of a replay read here, as a stream.
pub(crate) async fn local(
    source: Arc<ClusterSource>,
    ticket: ReplayTicket,
) -> Result<ReplayBatches, Error> {
    let scan = tokio::task::spawn_blocking(move || source.replay(&ticket))
        .await
        .map_err(|e| Error::Execution(e.to_string()))??;
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    tokio::task::spawn_blocking(move || {
        for batch in scan {
            let failed = batch.is_err();
            if tx.blocking_send(batch).is_err() || failed {
                break;
            }
        }
    });
    Ok(tokio_stream::wrappers::ReceiverStream::new(rx).boxed())
}

/// Reads `ticket` from the node at `url`, carrying `secret`.
pub(crate) async fn fetch(
    url: &Url,
    secret: &str,
    ticket: &ReplayTicket,
) -> Result<ReplayBatches, Error> {
    let unreachable = |e: &dyn std::fmt::Display| {
        Error::Unavailable(format!(
            "cannot replay partition {} of {} from the node at {url} ({e}); retry shortly",
            ticket.partition, ticket.stream
        ))
    };
    let channel = tonic::transport::Endpoint::from_shared(url.to_string())
        .map_err(|e| unreachable(&e))?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| unreachable(&e))?;
    let secret: tonic::metadata::MetadataValue<_> = secret
        .parse()
        .map_err(|_| Error::Invalid("cluster.secret must be printable ASCII".into()))?;
    let mut client = FlightServiceClient::with_interceptor(channel, move |mut r: Request<()>| {
        r.metadata_mut().insert(SECRET_HEADER, secret.clone());
        Ok(r)
    });
    let body = serde_json::to_vec(ticket).map_err(|e| Error::Execution(e.to_string()))?;
    let response = client
        .do_get(Ticket {
            ticket: body.into(),
        })
        .await
        .map_err(|s| match s.code() {
            tonic::Code::Unavailable => Error::Unavailable(s.message().to_owned()),
            tonic::Code::InvalidArgument => Error::Invalid(s.message().to_owned()),
            _ => unreachable(&s),
        })?;
    let decoded = arrow_flight::decode::FlightRecordBatchStream::new_from_flight_data(
        response
            .into_inner()
            .map_err(|s| FlightError::Tonic(Box::new(s))),
    );
    Ok(decoded
        .map_err(|e| Error::Execution(format!("replay from another node failed: {e}")))
        .boxed())
}
