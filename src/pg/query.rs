//! The simple and extended query protocols: every statement goes through the [`QueryService`]
//! with the PostgreSQL flavour of the engine; session statements are answered from the session.

use super::Front;
use super::encode;
use super::error::{self, failed_statement};
use super::session::Session;
use crate::service::{Error, QueryRequest, QueryService};
use arrow::datatypes::DataType;
use async_trait::async_trait;
use datafusion::common::ParamValues;
use futures::{Sink, SinkExt};
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{FieldInfo, QueryResponse, Response, Tag};
use pgwire::api::stmt::{QueryParser, StoredStatement};
use pgwire::api::store::PortalStore;
use pgwire::api::{ClientInfo, ClientPortalStore, DEFAULT_NAME, Type};
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::messages::PgWireBackendMessage;
use pgwire::messages::extendedquery::{
    Close, CloseComplete, Parse, ParseComplete, TARGET_TYPE_BYTE_PORTAL, TARGET_TYPE_BYTE_STATEMENT,
};
use pgwire::messages::startup::ParameterStatus;
use pgwire::types::format::FormatOptions;
use std::fmt::Debug;
use std::sync::Arc;
use strata_views::{Described, Flavor, PgStatement};
use tokio::sync::Semaphore;

/// Settings whose change a client is told of (`ParameterStatus`), as PostgreSQL does.
const REPORTED: &[(&str, &str)] = &[
    ("application_name", "application_name"),
    ("timezone", "TimeZone"),
    ("datestyle", "DateStyle"),
    ("intervalstyle", "IntervalStyle"),
    ("client_encoding", "client_encoding"),
    ("standard_conforming_strings", "standard_conforming_strings"),
];

/// Answers queries of both protocols.
pub(super) struct Handler {
    query: QueryService,
    in_flight: Arc<Semaphore>,
    parser: Arc<Parser>,
}

impl Handler {
    pub fn new(front: &Front) -> Self {
        Self {
            query: front.services.query.clone(),
            in_flight: front.in_flight.clone(),
            parser: Arc::new(Parser {
                query: front.services.query.clone(),
            }),
        }
    }

    /// Runs one statement of `session`.
    async fn run<C>(
        &self,
        client: &mut C,
        session: &Session,
        statement: PgStatement,
        params: Option<ParamValues>,
        format: &Format,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let service = |e: Error| error::wire(&e);
        Ok(match statement {
            PgStatement::Sql(sql) => {
                let options = Arc::new(FormatOptions::from_client_metadata(client.metadata()));
                Response::Query(
                    self.query(session, sql, params, format, Some(options))
                        .await?,
                )
            }
            PgStatement::CopyOut { sql, format: copy } => {
                let options = Arc::new(FormatOptions::from_client_metadata(client.metadata()));
                let rows = self
                    .query(session, sql, params, &Format::UnifiedText, Some(options))
                    .await?;
                Response::CopyOut(super::copy::response(rows, copy))
            }
            PgStatement::ViewDdl { sql, tag } => {
                let response = self.query(session, sql, None, format, None).await?;
                drain(response).await?;
                Response::Execution(Tag::new(tag))
            }
            PgStatement::Set { name, value } => {
                session.set(&name, value).map_err(service)?;
                if let Some((_, reported)) = REPORTED.iter().find(|(n, _)| *n == name) {
                    let value = session.get(&name).unwrap_or_default();
                    client
                        .feed(PgWireBackendMessage::ParameterStatus(ParameterStatus::new(
                            (*reported).to_owned(),
                            value,
                        )))
                        .await?;
                }
                Response::Execution(Tag::new("SET"))
            }
            PgStatement::Show(name) if name == "all" => {
                let rows = session.all().into_iter().map(|(n, v)| vec![n, v]).collect();
                Response::Query(encode::text_rows(&["name", "setting"], rows, format)?)
            }
            PgStatement::Show(name) => {
                let value = session.get(&name).ok_or_else(|| {
                    service(Error::NotFound(format!(
                        "unrecognized configuration parameter \"{name}\""
                    )))
                })?;
                Response::Query(encode::text_rows(&[&name], vec![vec![value]], format)?)
            }
            PgStatement::Reset(name) => {
                session.reset(&name);
                Response::Execution(Tag::new("RESET"))
            }
            PgStatement::Discard => {
                session.reset("all");
                for name in session.deallocate(None) {
                    client.portal_store().rm_statement(&name);
                }
                Response::Execution(Tag::new("DISCARD ALL"))
            }
            PgStatement::Deallocate(name) => {
                let names = session.deallocate(name.as_deref());
                if names.is_empty()
                    && let Some(name) = &name
                {
                    return Err(error::other(
                        "26000",
                        format!("prepared statement \"{name}\" does not exist"),
                    ));
                }
                for name in names {
                    client.portal_store().rm_statement(&name);
                }
                Response::Execution(Tag::new(if name.is_some() {
                    "DEALLOCATE"
                } else {
                    "DEALLOCATE ALL"
                }))
            }
            PgStatement::Transaction("BEGIN") => Response::TransactionStart(Tag::new("BEGIN")),
            PgStatement::Transaction(tag @ ("COMMIT" | "ROLLBACK")) => {
                Response::TransactionEnd(Tag::new(tag))
            }
            PgStatement::Transaction(tag) => Response::Execution(Tag::new(tag)),
        })
    }

    /// Starts `sql` for `session`, cancellable, under the shared limit of queries at once.
    async fn query(
        &self,
        session: &Session,
        sql: String,
        params: Option<ParamValues>,
        format: &Format,
        options: Option<Arc<FormatOptions>>,
    ) -> PgWireResult<QueryResponse> {
        let Ok(permit) = self.in_flight.clone().try_acquire_owned() else {
            metrics::counter!("strata_requests_refused_total", "reason" => "busy").increment(1);
            return Err(error::wire(&Error::Busy(
                "the server is running its limit of queries at once (limits.max_concurrent_requests); retry shortly".into(),
            )));
        };
        let cancel = session.start_query();
        let request = QueryRequest {
            sql,
            after: session.after(),
            params,
            flavor: Flavor::Postgres,
            time_limit_ms: session.statement_timeout_ms(),
            ..QueryRequest::default()
        };
        let result = tokio::select! {
            biased;
            () = cancel.cancelled() => return Err(error::canceled()),
            result = self.query.query(&session.principal, request) => {
                result.map_err(|e| error::wire(&e))?
            }
        };
        let fields = Arc::new(encode::fields(&result.schema, format, options)?);
        Ok(encode::response(result, fields, cancel, permit))
    }
}

/// Reads a response to its end (view DDL answers with a tag, not rows).
async fn drain(mut response: QueryResponse) -> PgWireResult<()> {
    use futures::StreamExt;
    while let Some(row) = response.data_rows().next().await {
        row?;
    }
    Ok(())
}

/// The session of a connection that finished its startup.
fn session_of<C: ClientInfo>(client: &C) -> PgWireResult<Arc<Session>> {
    client
        .session_extensions()
        .get::<Session>()
        .ok_or_else(|| error::other("08P01", "the connection has no session yet".into()))
}

#[async_trait]
impl SimpleQueryHandler for Handler {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let session = session_of(client)?;
        let statements =
            strata_views::parse_postgres(query).map_err(|e| error::wire(&Error::Sql(e)))?;
        let mut responses = Vec::with_capacity(statements.len());
        for statement in statements {
            match self
                .run(client, &session, statement, None, &Format::UnifiedText)
                .await
            {
                Ok(response) => responses.push(response),
                // PostgreSQL stops at the first failing statement of a query string.
                Err(e) => {
                    responses.push(failed_statement(e)?);
                    break;
                }
            }
        }
        if responses.is_empty() {
            responses.push(Response::EmptyQuery);
        }
        Ok(responses)
    }
}

/// A statement prepared by the extended protocol: what it is and, for SQL, its columns and
/// parameter types (checked as a run would check them).
#[derive(Clone, Debug)]
pub(super) struct Prepared {
    statement: PgStatement,
    described: Option<Described>,
}

/// Parses and describes statements of the extended protocol.
pub(super) struct Parser {
    query: QueryService,
}

#[async_trait]
impl QueryParser for Parser {
    type Statement = Prepared;

    async fn parse_sql<C>(
        &self,
        client: &C,
        sql: &str,
        _types: &[Option<Type>],
    ) -> PgWireResult<Option<Prepared>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let session = session_of(client)?;
        let mut statements =
            strata_views::parse_postgres(sql).map_err(|e| error::wire(&Error::Sql(e)))?;
        if statements.len() > 1 {
            return Err(error::other(
                "42601",
                "cannot insert multiple commands into a prepared statement".into(),
            ));
        }
        let Some(statement) = statements.pop() else {
            return Ok(None);
        };
        let described = match &statement {
            PgStatement::Sql(sql) => Some(
                self.query
                    .describe(&session.principal, sql, Flavor::Postgres)
                    .await
                    .map_err(|e| error::wire(&e))?,
            ),
            _ => None,
        };
        Ok(Some(Prepared {
            statement,
            described,
        }))
    }

    fn get_parameter_types(&self, stmt: &Prepared) -> PgWireResult<Vec<Type>> {
        Ok(stmt
            .described
            .iter()
            .flat_map(|d| d.params.iter())
            .map(|t| {
                t.as_ref()
                    .and_then(|t| arrow_pg::datatypes::into_pg_type(t).ok())
                    .unwrap_or(Type::UNKNOWN)
            })
            .collect())
    }

    fn get_result_schema(
        &self,
        stmt: &Prepared,
        format: Option<&Format>,
    ) -> PgWireResult<Vec<FieldInfo>> {
        let format = format.unwrap_or(&Format::UnifiedText);
        match (&stmt.statement, &stmt.described) {
            (PgStatement::Sql(_), Some(described)) => {
                encode::fields(&described.schema, format, None)
            }
            (PgStatement::Show(name), _) if name == "all" => {
                Ok(encode::text_fields(&["name", "setting"], format))
            }
            (PgStatement::Show(name), _) => Ok(encode::text_fields(&[name], format)),
            _ => Ok(Vec::new()),
        }
    }
}

#[async_trait]
impl ExtendedQueryHandler for Handler {
    type Statement = Prepared;
    type QueryParser = Parser;

    fn query_parser(&self) -> Arc<Parser> {
        self.parser.clone()
    }

    /// pgwire's, noting the statement's name in the session (for `DEALLOCATE ALL`).
    async fn on_parse<C>(&self, client: &mut C, message: Parse) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Prepared>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let name = message.name.as_deref().unwrap_or(DEFAULT_NAME).to_owned();
        match StoredStatement::parse(client, &message, self.query_parser()).await? {
            Some(statement) => client.portal_store().put_statement(Arc::new(statement)),
            None => client.portal_store().put_empty_statement(&name),
        }
        session_of(client)?.prepared(&name);
        client
            .send(PgWireBackendMessage::ParseComplete(ParseComplete::new()))
            .await?;
        Ok(())
    }

    /// pgwire's, forgetting a closed statement's name in the session too.
    async fn on_close<C>(&self, client: &mut C, message: Close) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Prepared>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let name = message.name.as_deref().unwrap_or(DEFAULT_NAME);
        match message.target_type {
            TARGET_TYPE_BYTE_STATEMENT => {
                client.portal_store().rm_statement(name);
                session_of(client)?.deallocate(Some(name));
            }
            TARGET_TYPE_BYTE_PORTAL => client.portal_store().rm_portal(name),
            _ => {}
        }
        client
            .send(PgWireBackendMessage::CloseComplete(CloseComplete::new()))
            .await?;
        Ok(())
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<Prepared>,
        _max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Prepared>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let session = session_of(client)?;
        let prepared = &portal.statement.statement;
        let params = match &prepared.described {
            Some(described) if portal.parameter_len() > 0 => {
                let types: Vec<Option<&DataType>> =
                    described.params.iter().map(Option::as_ref).collect();
                Some(super::params::values(portal, &types)?)
            }
            _ => None,
        };
        self.run(
            client,
            &session,
            prepared.statement.clone(),
            params,
            &portal.result_column_format,
        )
        .await
    }
}
