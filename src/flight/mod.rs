//! The Arrow Flight SQL front end: ADBC, pyarrow, DuckDB and Polars query strata and get Arrow
//! record batches as the engine computes them.
//!
//! A thin adapter over the [`QueryService`](crate::service::QueryService), on arrow-flight's
//! `FlightSqlService`: every call authenticates its bearer token (the basic-auth handshake hands
//! the token back as one); statements and prepared statements travel in [`handle::Handle`]s that
//! carry their SQL and bound parameters, and are authorised again on each `DoGet`. Errors become
//! gRPC statuses in [`status`], one place.

mod ahead;
mod handle;

use crate::auth::{Auth, Principal};
use crate::service::{Error, Kind, QueryRequest, Services};
use arrow::datatypes::{Field, Schema};
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::{FlightService, FlightServiceServer};
use arrow_flight::sql::metadata::{SqlInfoData, SqlInfoDataBuilder};
use arrow_flight::sql::server::{FlightSqlService, PeekableFlightDataStream};
use arrow_flight::sql::{
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest,
    ActionCreatePreparedStatementResult, Any, CommandGetCatalogs, CommandGetDbSchemas,
    CommandGetSqlInfo, CommandGetTableTypes, CommandGetTables, CommandPreparedStatementQuery,
    CommandStatementQuery, DoPutPreparedStatementResult, ProstMessageExt, SqlInfo,
    TicketStatementQuery,
};
use arrow_flight::{
    Action, FlightDescriptor, FlightEndpoint, FlightInfo, HandshakeRequest, HandshakeResponse,
    IpcMessage, SchemaAsIpc, Ticket,
};
use base64::Engine;
use futures::{Stream, StreamExt, TryStreamExt};
use handle::Handle;
use prost::Message;
use std::pin::Pin;
use std::sync::Arc;
use strata_views::Flavor;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

/// The catalog and schema strata's tables are in.
const CATALOG: &str = "strata";
const SCHEMA: &str = "public";

/// The gRPC status of a service error.
pub fn status(e: &Error) -> Status {
    let message = e.to_string();
    match e.kind() {
        Kind::Invalid
        | Kind::Syntax
        | Kind::UnknownTable
        | Kind::UnknownColumn
        | Kind::ReadOnly => Status::invalid_argument(message),
        Kind::NotFound => Status::not_found(message),
        Kind::Conflict => Status::already_exists(message),
        Kind::Timeout | Kind::TimeLimit => Status::deadline_exceeded(message),
        Kind::WrongRole => Status::failed_precondition(message),
        Kind::Unauthenticated => Status::unauthenticated(message),
        Kind::Forbidden => Status::permission_denied(message),
        Kind::Busy | Kind::Unavailable => Status::unavailable(message),
        Kind::Gone => Status::out_of_range(message),
        Kind::TooLarge | Kind::StorageFull | Kind::ResourcesExhausted => {
            Status::resource_exhausted(message)
        }
        Kind::Internal => {
            tracing::error!(error = %message, "Flight SQL request failed");
            Status::internal(message)
        }
    }
}

fn fail(e: Error) -> Status {
    status(&e)
}

/// The Flight SQL service of a node.
pub struct FlightSql {
    services: Services,
    auth: Arc<Auth>,
    in_flight: Arc<Semaphore>,
    info: SqlInfoData,
}

impl FlightSql {
    /// The service over `services`, authenticating with `auth`, running at most as many queries
    /// at once as `in_flight` has permits.
    ///
    /// # Errors
    /// The server's `GetSqlInfo` answer failing to build.
    pub fn new(
        services: Services,
        auth: Arc<Auth>,
        in_flight: Arc<Semaphore>,
    ) -> crate::Result<Self> {
        let mut info = SqlInfoDataBuilder::new();
        info.append(SqlInfo::FlightSqlServerName, "strata");
        info.append(SqlInfo::FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
        info.append(SqlInfo::FlightSqlServerArrowVersion, "1.3");
        info.append(SqlInfo::FlightSqlServerReadOnly, true);
        info.append(SqlInfo::FlightSqlServerSql, true);
        info.append(SqlInfo::FlightSqlServerSubstrait, false);
        info.append(SqlInfo::FlightSqlServerTransaction, 0_i32);
        info.append(SqlInfo::FlightSqlServerCancel, false);
        info.append(SqlInfo::SqlIdentifierQuoteChar, "\"");
        info.append(SqlInfo::SqlDdlCatalog, false);
        info.append(SqlInfo::SqlDdlSchema, false);
        info.append(SqlInfo::SqlDdlTable, false);
        let info = info
            .build()
            .map_err(|e| crate::Error::Config(format!("Flight SQL server information: {e}")))?;
        Ok(Self {
            services,
            auth,
            in_flight,
            info,
        })
    }

    /// Who sent `request`, from its `authorization: Bearer TOKEN` header.
    fn principal<T>(&self, request: &Request<T>) -> Result<Principal, Status> {
        let bearer = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().split_once(' '))
            .filter(|(kind, _)| kind.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim());
        self.auth.authenticate(bearer).map_err(fail)
    }

    /// The columns and placeholder types of `sql` for `who`.
    async fn describe(
        &self,
        who: &Principal,
        sql: &str,
    ) -> Result<strata_views::Described, Status> {
        self.services
            .query
            .describe(who, sql, Flavor::Plain)
            .await
            .map_err(fail)
    }

    /// A flight of one endpoint whose ticket is `ticket`, with `schema`.
    fn flight(
        schema: &Schema,
        ticket: Vec<u8>,
        descriptor: FlightDescriptor,
    ) -> Result<FlightInfo, Status> {
        Ok(FlightInfo::new()
            .try_with_schema(schema)
            .map_err(|e| Status::internal(format!("cannot encode the schema: {e}")))?
            .with_endpoint(FlightEndpoint::new().with_ticket(Ticket::new(ticket)))
            .with_descriptor(descriptor))
    }

    /// Runs `handle` for `who` and streams its batches.
    async fn run(
        &self,
        who: &Principal,
        handle: Handle,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let params = handle.params().map_err(fail)?;
        let Ok(permit) = self.in_flight.clone().try_acquire_owned() else {
            metrics::counter!("strata_requests_refused_total", "reason" => "busy").increment(1);
            return Err(fail(Error::Busy(
                "the server is running its limit of queries at once (limits.max_concurrent_requests); retry shortly".into(),
            )));
        };
        let result = self
            .services
            .query
            .query(
                who,
                QueryRequest {
                    sql: handle.sql,
                    params,
                    ..QueryRequest::default()
                },
            )
            .await
            .map_err(fail)?;
        let batches = result.batches.map(move |b| {
            let _held = &permit;
            b.map_err(|e| FlightError::Tonic(Box::new(status(&e))))
        });
        let stream = FlightDataEncoderBuilder::new()
            .with_schema(result.schema)
            .build(batches)
            .map_err(Status::from);
        Ok(Response::new(Box::pin(ahead::read_ahead(stream))))
    }

    /// The flight of a metadata command (catalogs, schemas, tables, …): its answer's `schema`,
    /// and the command itself as the ticket.
    fn metadata_flight(
        &self,
        schema: &Schema,
        command: &impl ProstMessageExt,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.principal(&request)?;
        let info = Self::flight(
            schema,
            command.as_any().encode_to_vec(),
            request.into_inner(),
        )?;
        Ok(Response::new(info))
    }

    /// A metadata answer (catalogs, schemas, tables, …) as a flight stream.
    fn batch_stream(
        batch: Result<arrow::array::RecordBatch, FlightError>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let batch = batch.map_err(|e| Status::internal(format!("cannot build the answer: {e}")))?;
        let stream = FlightDataEncoderBuilder::new()
            .with_schema(batch.schema())
            .build(futures::stream::once(async move { Ok(batch) }))
            .map_err(Status::from);
        Ok(Response::new(Box::pin(stream)))
    }
}

fn schema_bytes(schema: &Schema) -> Result<bytes::Bytes, Status> {
    let IpcMessage(bytes) = SchemaAsIpc::new(schema, &Default::default())
        .try_into()
        .map_err(|e: arrow::error::ArrowError| Status::internal(format!("schema: {e}")))?;
    Ok(bytes)
}

#[tonic::async_trait]
impl FlightSqlService for FlightSql {
    type FlightService = FlightSql;

    async fn do_handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<
        Response<Pin<Box<dyn Stream<Item = Result<HandshakeResponse, Status>> + Send>>>,
        Status,
    > {
        let header = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .trim()
            .to_owned();
        let token = match header.split_once(' ') {
            Some((kind, value)) if kind.eq_ignore_ascii_case("basic") => {
                // With or without padding: Go's Flight SQL client (ADBC) sends it without.
                let decoded = base64::engine::general_purpose::STANDARD_NO_PAD
                    .decode(value.trim().trim_end_matches('='))
                    .map_err(|_| Status::invalid_argument("Basic credentials are not base64"))?;
                let text = String::from_utf8(decoded)
                    .map_err(|_| Status::invalid_argument("Basic credentials are not UTF-8"))?;
                // The user name is free; the password is the token.
                text.split_once(':')
                    .map(|(_, password)| password.to_owned())
                    .unwrap_or_default()
            }
            Some((kind, value)) if kind.eq_ignore_ascii_case("bearer") => value.trim().to_owned(),
            _ => String::new(),
        };
        let token = (!token.is_empty()).then_some(token);
        self.auth.authenticate(token.as_deref()).map_err(fail)?;
        let token = token.unwrap_or_else(|| "anonymous".to_owned());
        let response = HandshakeResponse {
            protocol_version: 0,
            payload: token.clone().into_bytes().into(),
        };
        let mut answer: Response<
            Pin<Box<dyn Stream<Item = Result<HandshakeResponse, Status>> + Send>>,
        > = Response::new(Box::pin(futures::stream::once(async { Ok(response) })));
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| Status::invalid_argument("the token cannot be sent back as a header"))?;
        answer.metadata_mut().insert("authorization", value);
        Ok(answer)
    }

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let who = self.principal(&request)?;
        let sql =
            strata_views::number_placeholders(&query.query).map_err(|e| fail(Error::Sql(e)))?;
        let described = self.describe(&who, &sql).await?;
        let ticket = TicketStatementQuery {
            statement_handle: Handle::new(sql).encode().into(),
        };
        let info = Self::flight(
            &described.schema,
            ticket.as_any().encode_to_vec(),
            request.into_inner(),
        )?;
        Ok(Response::new(info))
    }

    async fn get_flight_info_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let who = self.principal(&request)?;
        let handle = Handle::decode(&query.prepared_statement_handle).map_err(fail)?;
        let described = self.describe(&who, &handle.sql).await?;
        let info = Self::flight(
            &described.schema,
            query.as_any().encode_to_vec(),
            request.into_inner(),
        )?;
        Ok(Response::new(info))
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let who = self.principal(&request)?;
        let handle = Handle::decode(&ticket.statement_handle).map_err(fail)?;
        self.run(&who, handle).await
    }

    async fn do_get_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let who = self.principal(&request)?;
        let handle = Handle::decode(&query.prepared_statement_handle).map_err(fail)?;
        self.run(&who, handle).await
    }

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        request: Request<Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        let who = self.principal(&request)?;
        let sql =
            strata_views::number_placeholders(&query.query).map_err(|e| fail(Error::Sql(e)))?;
        let described = self.describe(&who, &sql).await?;
        let params = Schema::new(
            described
                .params
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    Field::new(
                        format!("${}", i + 1),
                        t.clone().unwrap_or(arrow::datatypes::DataType::Null),
                        true,
                    )
                })
                .collect::<Vec<_>>(),
        );
        Ok(ActionCreatePreparedStatementResult {
            prepared_statement_handle: Handle::new(sql).encode().into(),
            dataset_schema: schema_bytes(&described.schema)?,
            parameter_schema: schema_bytes(&params)?,
        })
    }

    async fn do_action_close_prepared_statement(
        &self,
        _query: ActionClosePreparedStatementRequest,
        request: Request<Action>,
    ) -> Result<(), Status> {
        // Handles hold no server state: nothing to free.
        self.principal(&request)?;
        Ok(())
    }

    async fn do_put_prepared_statement_query(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<DoPutPreparedStatementResult, Status> {
        self.principal(&request)?;
        let handle = Handle::decode(&query.prepared_statement_handle).map_err(fail)?;
        let limit = self.services.query.max_body_bytes();
        let stream = request
            .into_inner()
            .map(|d| d.map_err(|e| FlightError::Tonic(Box::new(e))));
        let mut batches =
            arrow_flight::decode::FlightRecordBatchStream::new_from_flight_data(stream);
        let mut bound = None;
        let mut size = 0;
        while let Some(batch) = batches.next().await {
            let batch = batch.map_err(|e| Status::invalid_argument(format!("parameters: {e}")))?;
            size += batch.get_array_memory_size();
            if size > limit {
                return Err(fail(Error::PayloadTooLarge(format!(
                    "parameters over {limit} bytes (limits.max_body_bytes)"
                ))));
            }
            if batch.num_rows() > 0 && bound.is_none() {
                bound = Some(handle.clone().bind(&batch.slice(0, 1)).map_err(fail)?);
            }
        }
        Ok(DoPutPreparedStatementResult {
            prepared_statement_handle: Some(bound.unwrap_or(handle).encode().into()),
        })
    }

    async fn get_flight_info_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder().schema();
        self.metadata_flight(&schema, &query, request)
    }

    async fn do_get_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.principal(&request)?;
        let mut builder = query.into_builder();
        builder.append(CATALOG);
        Self::batch_stream(builder.build())
    }

    async fn get_flight_info_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        self.metadata_flight(&schema, &query, request)
    }

    async fn do_get_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.principal(&request)?;
        let mut builder = query.into_builder();
        builder.append(CATALOG, SCHEMA);
        Self::batch_stream(builder.build())
    }

    async fn get_flight_info_tables(
        &self,
        query: CommandGetTables,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        self.metadata_flight(&schema, &query, request)
    }

    async fn do_get_tables(
        &self,
        query: CommandGetTables,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let who = self.principal(&request)?;
        let tables = self.services.query.tables(&who).await.map_err(fail)?;
        let mut builder = query.into_builder();
        for table in tables {
            let kind = if table.view { "VIEW" } else { "TABLE" };
            builder
                .append(CATALOG, SCHEMA, &table.name, kind, &table.schema)
                .map_err(|e| Status::internal(format!("table {}: {e}", table.name)))?;
        }
        Self::batch_stream(builder.build())
    }

    async fn get_flight_info_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder().schema();
        self.metadata_flight(&schema, &query, request)
    }

    async fn do_get_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.principal(&request)?;
        let mut builder = query.into_builder();
        builder.append("TABLE");
        builder.append("VIEW");
        Self::batch_stream(builder.build())
    }

    async fn get_flight_info_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder(&self.info).schema();
        self.metadata_flight(&schema, &query, request)
    }

    async fn do_get_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.principal(&request)?;
        Self::batch_stream(query.into_builder(&self.info).build())
    }

    async fn do_get_fallback(
        &self,
        request: Request<Ticket>,
        message: Any,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.principal(&request)?;
        Err(Status::unimplemented(format!(
            "strata does not answer {} tickets",
            message.type_url
        )))
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}

/// Serves Flight SQL on `listener` (over TLS with `tls`' certificate and key) until `shutdown`.
///
/// # Errors
/// TLS files that cannot be read or used.
pub fn spawn(
    listener: tokio::net::TcpListener,
    service: FlightSql,
    tls: Option<(&std::path::Path, &std::path::Path)>,
    shutdown: CancellationToken,
) -> crate::Result<JoinHandle<()>> {
    // HTTP/2's default 64 KiB windows hold a large result to a trickle on a fast link.
    let mut server = tonic::transport::Server::builder()
        .initial_stream_window_size(Some(8 << 20))
        .initial_connection_window_size(Some(16 << 20));
    if let Some((cert, key)) = tls {
        let read = |path: &std::path::Path| {
            std::fs::read(path)
                .map_err(|e| crate::Error::io(format!("TLS: cannot read {}", path.display()), e))
        };
        let identity = tonic::transport::Identity::from_pem(read(cert)?, read(key)?);
        server = server
            .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
            .map_err(|e| crate::Error::Config(format!("TLS for Flight SQL: {e}")))?;
    }
    let router = server.add_service(FlightServiceServer::new(service));
    Ok(tokio::spawn(async move {
        let incoming =
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        let stopped = async move { shutdown.cancelled().await };
        if let Err(e) = router.serve_with_incoming_shutdown(incoming, stopped).await {
            tracing::error!(error = %e, "the Flight SQL server failed");
        }
    }))
}
