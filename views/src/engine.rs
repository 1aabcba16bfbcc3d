//! The read-only SQL engine.

use crate::materialized::{ViewStatement, view_statement};
use crate::plan_cache::PlanCache;
use crate::sandbox::{check_read_only, verify_read_only};
use crate::source::ShardSource;
use crate::table::{ReadAfter, StreamTable};
use crate::view_table::ViewTable;
use crate::{Error, Result, ViewPlan};
use arrow::array::{RecordBatch, StringArray};
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::{SchemaProvider, TableProvider};
use datafusion::common::ParamValues;
use datafusion::dataframe::DataFrame;
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::TaskContext;
use datafusion::execution::context::SessionContext;
use datafusion::execution::context::SessionState;
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::prelude::SessionConfig;
use datafusion::sql::parser::Statement as DfStatement;
use parking_lot::{Mutex, RwLock};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;
use strata_proto::Log;
use strata_proto::StreamName;
use strata_store::Store;
use tokio::sync::Notify;

/// The compiled plans of the views this node maintains, by name.
#[derive(Default)]
pub(crate) struct ViewRegistry {
    pub(crate) plans: RwLock<HashMap<String, Arc<ViewPlan>>>,
}

impl ViewRegistry {
    pub(crate) fn get(&self, name: &str) -> Option<Arc<ViewPlan>> {
        self.plans.read().get(name).cloned()
    }

    pub(crate) fn contains(&self, name: &str) -> bool {
        self.plans.read().contains_key(name)
    }
}

/// Every stream of the shards and every materialized view, as tables.
pub(crate) struct StreamSchema {
    pub(crate) source: Arc<dyn ShardSource>,
    pub(crate) views: Arc<ViewRegistry>,
}

impl std::fmt::Debug for StreamSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamSchema").finish_non_exhaustive()
    }
}

#[async_trait]
impl SchemaProvider for StreamSchema {
    fn table_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .source
            .catalog()
            .keys()
            .map(|n| n.to_string())
            .collect();
        names.extend(self.views.plans.read().keys().cloned());
        names
    }

    async fn table(&self, name: &str) -> datafusion::error::Result<Option<Arc<dyn TableProvider>>> {
        if let Some(plan) = self.views.get(name) {
            return Ok(Some(Arc::new(ViewTable::new(
                self.source.clone(),
                name.to_owned(),
                plan,
            ))));
        }
        let Ok(stream) = StreamName::new(name) else {
            return Ok(None);
        };
        Ok(self.source.catalog().get(&stream).map(|info| {
            Arc::new(StreamTable::new(self.source.clone(), info)) as Arc<dyn TableProvider>
        }))
    }

    fn table_exist(&self, name: &str) -> bool {
        self.views.get(name).is_some()
            || StreamName::new(name).is_ok_and(|s| self.source.catalog().contains_key(&s))
    }
}

/// What a caller may do through SQL: view DDL needs `admin`; tables are readable when their
/// stream (a view's source stream, for a view) is in `streams`, or always when that is `None`.
#[derive(Clone, Debug)]
pub struct Access {
    /// Whether the caller may create, drop and rebuild materialized views.
    pub admin: bool,
    /// The streams the caller may read; `None` means all.
    pub streams: Option<BTreeSet<String>>,
}

impl Access {
    /// Everything allowed.
    pub fn all() -> Self {
        Self {
            admin: true,
            streams: None,
        }
    }

    /// Whether the caller may read `stream`.
    pub fn may_read(&self, stream: &str) -> bool {
        self.streams.as_ref().is_none_or(|s| s.contains(stream))
    }

    pub(crate) fn require_stream(&self, stream: &str, what: &str) -> Result<()> {
        if self.may_read(stream) {
            Ok(())
        } else {
            Err(Error::Forbidden(format!(
                "{what} reads stream {stream:?}, which this token may not read"
            )))
        }
    }

    pub(crate) fn require_admin(&self, what: &str) -> Result<()> {
        if self.admin {
            Ok(())
        } else {
            Err(Error::Forbidden(format!(
                "{what} needs a token with the `admin` scope"
            )))
        }
    }
}

/// A query's result: its schema and a stream of record batches.
pub struct QueryOutput {
    /// Columns of the result.
    pub schema: SchemaRef,
    /// The rows, as they are computed.
    pub batches: SendableRecordBatchStream,
}

/// Changes a session (state) builder: how a cluster makes queries span nodes.
pub type StateHook = Arc<dyn Fn(SessionStateBuilder) -> SessionStateBuilder + Send + Sync>;

/// Renders a physical plan that spans nodes (its stages and which node runs each task), or
/// `None` for a plan that runs on one node.
pub type ExplainHook =
    Arc<dyn Fn(&Arc<dyn datafusion::physical_plan::ExecutionPlan>) -> Option<String> + Send + Sync>;

/// The parts of a [`SqlEngine`].
pub struct EngineParts {
    /// The local store, which keeps the materialized views (`None`: a node without shards, which
    /// answers queries over streams only).
    pub store: Option<Arc<Store>>,
    /// Where stream tables read (the store itself, or a source spanning the cluster).
    pub tables: Arc<dyn ShardSource>,
    /// The log, to measure how far views lag behind it.
    pub log: Option<Arc<dyn Log>>,
    /// Memory and disk of queries, from [`runtime_env`].
    pub runtime: Arc<RuntimeEnv>,
    /// Applied to the session that plans queries (not the one compiling views).
    pub distribute: Option<StateHook>,
    /// Adds a `distributed_plan` row to `EXPLAIN` of a query that spans nodes.
    pub explain: Option<ExplainHook>,
}

/// The runtime of queries: together they may hold at most `memory_bytes` (sorts, joins,
/// aggregations; `None`: no limit), and nothing spills to disk (queries never create files).
///
/// # Errors
/// DataFusion refusing the configuration.
pub fn runtime_env(memory_bytes: Option<usize>) -> Result<Arc<RuntimeEnv>> {
    let mut runtime = RuntimeEnvBuilder::new().with_disk_manager_builder(
        DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled),
    );
    if let Some(bytes) = memory_bytes {
        runtime = runtime.with_memory_limit(bytes, 1.0);
    }
    Ok(runtime.build_arc()?)
}

/// Which session plans a query: the plain one (HTTP, Flight SQL), or the PostgreSQL one, with
/// `pg_catalog`, PostgreSQL's dialect and the functions its clients call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Flavor {
    /// DataFusion's SQL over the streams and views.
    #[default]
    Plain,
    /// As a PostgreSQL server: `pg_catalog`, `version()`, `current_setting()`.
    Postgres,
}

/// A query as [`SqlEngine::run`] takes it.
pub struct Query<'a> {
    /// The SQL text: one statement.
    pub sql: &'a str,
    /// What the caller may read and do.
    pub access: &'a Access,
    /// Offsets the stream scans wait for first.
    pub after: Option<ReadAfter>,
    /// Values of the placeholders (`$1`, …), if the statement has any.
    pub params: Option<ParamValues>,
    /// Which session plans it.
    pub flavor: Flavor,
}

/// What a statement returns and takes, known without running it.
#[derive(Clone, Debug)]
pub struct Described {
    /// Its columns (none for a statement that returns no rows).
    pub schema: SchemaRef,
    /// The types of its placeholders `$1`, `$2`, … in order (`None`: not inferred).
    pub params: Vec<Option<arrow::datatypes::DataType>>,
}

/// A statement planned and checked, not yet run.
enum Planned {
    View(ViewStatement),
    Plan(Box<SessionState>, LogicalPlan),
}

/// Answers read-only SQL over the store's streams, and keeps its materialized views.
pub struct SqlEngine {
    pub(crate) ctx: SessionContext,
    /// The session queries are planned in (`ctx`'s, with the cluster's planner when distributed).
    query_state: SessionState,
    /// The session PostgreSQL clients' queries are planned in.
    pg_state: SessionState,
    explain: Option<ExplainHook>,
    store: Option<Arc<Store>>,
    /// Where tables and views are read (the store, or the cluster's source).
    pub(crate) tables: Arc<dyn ShardSource>,
    pub(crate) log: Option<Arc<dyn Log>>,
    pub(crate) views: Arc<ViewRegistry>,
    /// The shared views compiled here, with the query they were compiled from.
    pub(crate) compiled: Mutex<HashMap<String, String>>,
    /// Views whose definition did not compile, with why (reported once, shown in listings).
    pub(crate) unloaded: Mutex<HashMap<String, String>>,
    pub(crate) rebuilding: Mutex<HashSet<String>>,
    pub(crate) wake: Notify,
    /// Optimised plans of queries over views, by shape.
    pub(crate) plans: PlanCache,
    /// Whether the plan cache keeps physical plans too (not when queries span nodes, whose
    /// plans are made per query).
    pub(crate) physical_cache: bool,
    /// The task contexts of kept physical plans: plain, PostgreSQL.
    pub(crate) tasks: [Arc<TaskContext>; 2],
}

impl SqlEngine {
    /// An engine over `store`: every stream is a table of the same name in the default schema,
    /// and so is every materialized view. `log`, when given, measures how far views lag behind it.
    pub fn new(store: Arc<Store>, log: Option<Arc<dyn Log>>) -> Result<Self> {
        Self::with_memory_limit(store, log, None)
    }

    /// [`SqlEngine::new`] whose queries together may hold at most `memory_bytes` (sorts, joins,
    /// aggregations; `None`: no limit). A query that needs more fails with
    /// [`Error::ResourcesExhausted`]; nothing spills to disk (queries never create files).
    pub fn with_memory_limit(
        store: Arc<Store>,
        log: Option<Arc<dyn Log>>,
        memory_bytes: Option<usize>,
    ) -> Result<Self> {
        Self::open(EngineParts {
            tables: store.clone(),
            store: Some(store),
            log,
            runtime: runtime_env(memory_bytes)?,
            distribute: None,
            explain: None,
        })
    }

    /// An engine made of `parts`.
    ///
    /// # Errors
    /// DataFusion refusing the configuration.
    pub fn open(parts: EngineParts) -> Result<Self> {
        let config = SessionConfig::new()
            .with_information_schema(true)
            .with_default_catalog_and_schema("strata", "public");
        let mut ctx = SessionContext::new_with_config_rt(config, parts.runtime.clone());
        datafusion_functions_json::register_all(&mut ctx)?;
        crate::capped::register(&ctx);
        let catalog = Arc::new(datafusion::catalog::MemoryCatalogProvider::new());
        let views = Arc::new(ViewRegistry::default());
        datafusion::catalog::CatalogProvider::register_schema(
            catalog.as_ref(),
            "public",
            Arc::new(StreamSchema {
                source: parts.tables.clone(),
                views: views.clone(),
            }),
        )?;
        ctx.register_catalog("strata", catalog);
        let pg =
            crate::postgres::context(parts.runtime.clone(), parts.tables.clone(), views.clone())?;
        let session = |state: SessionState| {
            let builder = SessionStateBuilder::new_from_existing(state)
                .with_physical_optimizer_rule(Arc::new(crate::yielding::YieldAfterJoins));
            match &parts.distribute {
                Some(hook) => hook(builder).build(),
                None => builder
                    .with_physical_optimizer_rule(Arc::new(crate::grouped_scan::GroupByDictionary))
                    .build(),
            }
        };
        let (query_state, pg_state) = (session(ctx.state()), session(pg.state()));
        let physical_cache = parts.distribute.is_none();
        let tasks = [query_state.task_ctx(), pg_state.task_ctx()];
        Ok(Self {
            ctx,
            query_state,
            pg_state,
            explain: parts.explain,
            store: parts.store,
            tables: parts.tables,
            log: parts.log,
            views,
            compiled: Mutex::new(HashMap::new()),
            unloaded: Mutex::new(HashMap::new()),
            rebuilding: Mutex::new(HashSet::new()),
            wake: Notify::new(),
            plans: PlanCache::default(),
            physical_cache,
            tasks,
        })
    }

    /// The store keeping the views, or why there is none.
    pub(crate) fn store(&self) -> Result<&Arc<Store>> {
        self.store.as_ref().ok_or_else(|| {
            Error::WrongRole(
                "this node keeps no shards, so it keeps no materialized views; send view statements to a store node".into(),
            )
        })
    }

    /// The store keeping the views, if this node has one.
    pub(crate) fn local_store(&self) -> Option<&Arc<Store>> {
        self.store.as_ref()
    }

    /// Plans and starts `sql`. Queries (`SELECT`, `WITH`, `VALUES`), `EXPLAIN` of a query,
    /// `SHOW TABLES`/`SHOW COLUMNS`, and the materialized view statements (`CREATE MATERIALIZED
    /// VIEW`, `DROP MATERIALIZED VIEW`, `SHOW VIEWS`) are accepted; anything else that would change
    /// state or reach server files is refused with [`Error::ReadOnly`].
    pub async fn query(&self, sql: &str) -> Result<QueryOutput> {
        self.query_as(sql, &Access::all()).await
    }

    /// [`SqlEngine::query`] for a caller with `access`: every table the plan reads (subqueries
    /// included) must be one it may read, and view DDL needs `admin`; otherwise
    /// [`Error::Forbidden`].
    pub async fn query_as(&self, sql: &str, access: &Access) -> Result<QueryOutput> {
        self.query_after(sql, access, None).await
    }

    /// [`SqlEngine::query_as`] whose stream scans first wait for the offsets of `after`.
    pub async fn query_after(
        &self,
        sql: &str,
        access: &Access,
        after: Option<ReadAfter>,
    ) -> Result<QueryOutput> {
        self.run(Query {
            sql,
            access,
            after,
            params: None,
            flavor: Flavor::Plain,
        })
        .await
    }

    /// Plans, checks and starts `query` (see [`SqlEngine::query_as`] for what is accepted).
    ///
    /// # Errors
    /// SQL that does not parse or plan, a statement that is not read-only, a table `access`
    /// does not cover, placeholders without values, a failure starting the query.
    pub async fn run(&self, query: Query<'_>) -> Result<QueryOutput> {
        let started = Instant::now();
        let result = async {
            let (base, statement) = self.parse(query.sql, query.flavor)?;
            // A plan is kept by shape only for a query without offsets to wait for (those live
            // in the session the plan is made in).
            if query.after.is_none() {
                let kept = self.start_kept(base, &statement, &query).await?;
                if let Some(output) = kept {
                    return Ok(output);
                }
            }
            let planned = self
                .plan(base, query.sql, statement, query.access, query.after)
                .await?;
            self.start(planned, query.access, query.params).await
        }
        .await;
        metrics::counter!("strata_queries_total", "outcome" => if result.is_ok() { "ok" } else { "error" })
            .increment(1);
        metrics::histogram!("strata_query_planning_seconds")
            .record(started.elapsed().as_secs_f64());
        result
    }

    /// The columns `sql` returns and the types of its placeholders, checked as [`SqlEngine::run`]
    /// checks it, without running it.
    ///
    /// # Errors
    /// As [`SqlEngine::run`] before it starts the query.
    pub async fn describe(&self, sql: &str, access: &Access, flavor: Flavor) -> Result<Described> {
        let (base, statement) = self.parse(sql, flavor)?;
        match self.plan(base, sql, statement, access, None).await? {
            Planned::View(ViewStatement::Show) => Ok(Described {
                schema: crate::manage::show_views_schema(),
                params: Vec::new(),
            }),
            Planned::View(_) => Ok(Described {
                schema: crate::manage::message_schema(),
                params: Vec::new(),
            }),
            Planned::Plan(_, plan) => {
                let types = crate::placeholders::parameter_types(&plan)?;
                let mut numbered = Vec::with_capacity(types.len());
                for (name, ty) in types {
                    match name.strip_prefix('$').and_then(|n| n.parse::<usize>().ok()) {
                        Some(n) if (1..=65_535).contains(&n) => numbered.push((n, ty)),
                        _ => {
                            return Err(Error::Invalid(format!(
                                "placeholder {name}: use $1, $2, … (numbered from 1)"
                            )));
                        }
                    }
                }
                // A client may bind placeholders the statement no longer has (a catalog
                // rewrite dropped them): their types stay unknown.
                let mut params = vec![None; numbered.iter().map(|(n, _)| *n).max().unwrap_or(0)];
                for (n, ty) in numbered {
                    params[n - 1] = ty;
                }
                Ok(Described {
                    schema: Arc::new(plan.schema().as_arrow().clone()),
                    params,
                })
            }
        }
    }

    /// `sql` parsed in the session of `flavor`, and that session.
    fn parse(&self, sql: &str, flavor: Flavor) -> Result<(&SessionState, DfStatement)> {
        let base = match flavor {
            Flavor::Plain => &self.query_state,
            Flavor::Postgres => &self.pg_state,
        };
        let dialect = base.config().options().sql_parser.dialect;
        Ok((base, base.sql_to_statement(sql, &dialect)?))
    }

    /// `statement` (parsed from `sql`) planned in a session made from `base` (waiting for
    /// `after`) and checked.
    async fn plan(
        &self,
        base: &SessionState,
        sql: &str,
        statement: DfStatement,
        access: &Access,
        after: Option<ReadAfter>,
    ) -> Result<Planned> {
        if let Some(view) = view_statement(&statement)? {
            return Ok(Planned::View(view));
        }
        check_read_only(&statement)?;
        let mut state = base.clone();
        if std::ptr::eq(base, &self.pg_state) {
            // Catalog functions made for the query that calls them (what they answer depends on
            // the caller's grants or is read from the catalog).
            if crate::pg_viewdef::called(sql) {
                crate::pg_viewdef::register(&mut state, self.view_definitions(), access).await?;
            }
            if crate::pg_procs::called(sql) {
                crate::pg_procs::register(&mut state).await?;
            }
        }
        if let Some(after) = after {
            state.config_mut().set_extension(Arc::new(after));
        }
        let plan = state.statement_to_plan(statement).await?;
        verify_read_only(&plan)?;
        self.check_tables(&plan, access)?;
        Ok(Planned::Plan(Box::new(state), plan))
    }

    async fn start(
        &self,
        planned: Planned,
        access: &Access,
        params: Option<ParamValues>,
    ) -> Result<QueryOutput> {
        let (state, plan) = match planned {
            Planned::View(view) => return self.view_statement(view, access).await,
            Planned::Plan(state, plan) => (*state, plan),
        };
        let plan = match params {
            Some(values) => plan.with_param_values(values)?,
            None => plan,
        };
        let distributed = match (&plan, &self.explain) {
            (LogicalPlan::Explain(e), Some(render)) if !e.verbose => {
                let physical = state.create_physical_plan(&e.plan).await?;
                render(&physical)
            }
            _ => None,
        };
        let df = DataFrame::new(state, plan);
        let schema = Arc::new(df.schema().as_arrow().clone());
        let batches = df.execute_stream().await?;
        match distributed {
            None => Ok(QueryOutput { schema, batches }),
            Some(text) => explain_with(schema, batches, text).await,
        }
    }
}

impl Drop for SqlEngine {
    fn drop(&mut self) {
        // datafusion-pg-catalog's schema holds the catalog list it is registered in: without this
        // the PostgreSQL session (and the store its tables read) would never be freed.
        if let Some(catalog) = self.pg_state.catalog_list().catalog("strata")
            && let Err(e) = catalog.deregister_schema("pg_catalog", true)
        {
            tracing::warn!(error = %e, "cannot free the PostgreSQL catalog");
        }
    }
}

/// The rows of an `EXPLAIN`, and one more: the plan as it runs across nodes.
async fn explain_with(
    schema: SchemaRef,
    batches: SendableRecordBatchStream,
    distributed: String,
) -> Result<QueryOutput> {
    use futures::TryStreamExt;
    let mut all: Vec<RecordBatch> = batches.try_collect().await?;
    let row = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from(vec!["distributed_plan"])),
            Arc::new(StringArray::from(vec![distributed])),
        ],
    )?;
    all.push(row);
    let stream = futures::stream::iter(all.into_iter().map(Ok));
    Ok(QueryOutput {
        schema: schema.clone(),
        batches: Box::pin(RecordBatchStreamAdapter::new(schema, stream)),
    })
}
