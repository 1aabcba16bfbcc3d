//! Materialized view statements, background catch-up and rebuilds (listings: [`crate::listing`]).

use crate::engine::{Access, QueryOutput};
use crate::listing::ViewListing;
use crate::materialized::{Maintainer, ViewPlan, ViewStatement};
use crate::{Error, Result, SqlEngine};
use arrow::array::{ArrayRef, RecordBatch, StringArray, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use futures::StreamExt;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::{Duration, Instant};
use strata_proto::StreamName;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Progress of a rebuild.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RebuildProgress {
    /// Events folded so far.
    pub done: u64,
    /// Events to fold (stored when the rebuild started; more may arrive).
    pub total: u64,
    /// Milliseconds since the rebuild started.
    pub elapsed_ms: u64,
    /// Set once the rebuilt view has been swapped in.
    pub finished: bool,
    /// Rows of the rebuilt view, once finished.
    pub rows: Option<u64>,
}

/// What a rebuild reports: progress while it runs, then how it ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RebuildEvent {
    /// Progress so far; the last one has `finished: true` and the rebuilt view's rows.
    Progress(RebuildProgress),
    /// The rebuild failed; the view keeps its old state.
    Failed {
        /// Why.
        error: String,
    },
}

/// How often a rebuild reports its progress.
pub(crate) const PROGRESS_EVERY: Duration = Duration::from_millis(250);

/// The one column of the answer to view DDL.
pub(crate) fn message_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new(
        "result",
        DataType::Utf8,
        false,
    )]))
}

/// The columns of `SHOW VIEWS`.
pub(crate) fn show_views_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("name", DataType::Utf8, false),
        Field::new("stream", DataType::Utf8, false),
        Field::new("definition", DataType::Utf8, false),
        Field::new("rows", DataType::UInt64, false),
        Field::new("applied", DataType::Utf8, false),
        Field::new("lag", DataType::UInt64, false),
        Field::new("status", DataType::Utf8, false),
    ]))
}

fn message(text: String) -> Result<QueryOutput> {
    let schema = message_schema();
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![Arc::new(StringArray::from(vec![text])) as ArrayRef],
    )?;
    Ok(one_batch(batch))
}

fn one_batch(batch: RecordBatch) -> QueryOutput {
    let schema = batch.schema();
    let stream = futures::stream::iter(vec![Ok(batch)]);
    QueryOutput {
        schema: schema.clone(),
        batches: Box::pin(RecordBatchStreamAdapter::new(schema, stream)),
    }
}

pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> strata_store::Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Execution(format!("view task failed: {e}")))?
        .map_err(Error::from)
}

impl SqlEngine {
    pub(crate) async fn view_statement(
        &self,
        statement: ViewStatement,
        access: &Access,
    ) -> Result<QueryOutput> {
        match statement {
            ViewStatement::Create {
                name,
                query,
                if_not_exists,
            } => {
                access.require_admin("CREATE MATERIALIZED VIEW")?;
                if let Some(catalog) = self.shared_views() {
                    return if self
                        .create_shared(&catalog, &name, &query, if_not_exists, access)
                        .await?
                    {
                        message(format!(
                            "created materialized view {name} on every node; events stored before now are being folded in (see SHOW VIEWS)"
                        ))
                    } else {
                        message(format!("materialized view {name} exists already"))
                    };
                }
                if self.store()?.views().def(&name).is_some() {
                    if if_not_exists {
                        return message(format!("materialized view {name} exists already"));
                    }
                    return Err(Error::Conflict(format!(
                        "a materialized view named {name} exists already (DROP MATERIALIZED VIEW {name} first)"
                    )));
                }
                self.create_view(&name, &query, access).await?;
                message(format!(
                    "created materialized view {name}; events stored before now are being folded in (see SHOW VIEWS)"
                ))
            }
            ViewStatement::Drop { name, if_exists } => {
                access.require_admin("DROP MATERIALIZED VIEW")?;
                if let Some(catalog) = self.shared_views() {
                    return match (self.drop_shared(&catalog, &name, access).await?, if_exists) {
                        (true, _) => message(format!("dropped materialized view {name}")),
                        (false, true) => message(format!("no materialized view named {name}")),
                        (false, false) => Err(strata_store::Error::UnknownView(name).into()),
                    };
                }
                if let Some(def) = self.store()?.views().def(&name) {
                    access.require_stream(def.stream.as_str(), &format!("view {name}"))?;
                }
                let store = self.store()?.clone();
                let n = name.clone();
                let dropped = blocking(move || store.views().remove(&n)).await?;
                self.views.plans.write().remove(&name);
                self.unloaded.lock().remove(&name);
                match (dropped, if_exists) {
                    (true, _) => message(format!("dropped materialized view {name}")),
                    (false, true) => message(format!("no materialized view named {name}")),
                    (false, false) => Err(strata_store::Error::UnknownView(name).into()),
                }
            }
            ViewStatement::Show => {
                let mut listing = self.view_listing().await?;
                listing.retain(|v| access.may_read(&v.stream));
                let text = |f: fn(&ViewListing) -> String| -> ArrayRef {
                    Arc::new(StringArray::from(listing.iter().map(f).collect::<Vec<_>>()))
                };
                let number = |f: fn(&ViewListing) -> u64| -> ArrayRef {
                    Arc::new(UInt64Array::from(listing.iter().map(f).collect::<Vec<_>>()))
                };
                let schema = show_views_schema();
                let applied = |v: &ViewListing| {
                    v.partitions
                        .iter()
                        .map(|p| match &p.node {
                            Some(node) => format!("{}:{}@{node}", p.partition, p.applied),
                            None => format!("{}:{}", p.partition, p.applied),
                        })
                        .collect::<Vec<_>>()
                        .join(" ")
                };
                let batch = RecordBatch::try_new(
                    schema,
                    vec![
                        text(|v| v.name.clone()),
                        text(|v| v.stream.clone()),
                        text(|v| v.definition.clone()),
                        number(|v| v.rows),
                        Arc::new(StringArray::from(
                            listing.iter().map(applied).collect::<Vec<_>>(),
                        )),
                        number(|v| v.lag),
                        text(|v| v.status.clone()),
                    ],
                )?;
                Ok(one_batch(batch))
            }
        }
    }

    /// Checks `query` and creates view `name` over its stream.
    async fn create_view(&self, name: &str, query: &str, access: &Access) -> Result<()> {
        let own = self.store()?;
        let (plan, stream) = self
            .check_definition(name, query, &own.catalog(), access)
            .await?;
        let plan = Arc::new(plan);
        let (store, n, q, fold) = (
            own.clone(),
            name.to_owned(),
            query.to_owned(),
            Arc::new(Maintainer(plan.clone())),
        );
        blocking(move || store.create_view(&n, &stream, &q, false, fold)).await?;
        self.views.plans.write().insert(name.to_owned(), plan);
        self.wake.notify_one();
        Ok(())
    }

    /// Checks a view definition: its name is not a stream's of `streams`, it compiles, it reads
    /// one of `streams`, which `access` may read. Returns the plan and the stream.
    pub(crate) async fn check_definition(
        &self,
        name: &str,
        query: &str,
        streams: &strata_proto::Catalog,
        access: &Access,
    ) -> Result<(ViewPlan, StreamName)> {
        if StreamName::new(name).is_ok_and(|n| streams.contains_key(&n)) {
            return Err(Error::Conflict(format!(
                "a stream is named {name}; a view needs a name of its own"
            )));
        }
        let plan = ViewPlan::new(&self.ctx, query).await?;
        let stream = StreamName::new(&plan.stream)
            .ok()
            .filter(|s| streams.contains_key(s))
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "this view cannot be maintained incrementally: it reads {}, which is not a stream (views read streams only)",
                    plan.stream
                ))
            })?;
        access.require_stream(stream.as_str(), &format!("view {name}"))?;
        Ok((plan, stream))
    }

    /// Compiles and attaches every stored view that is not maintained yet (after a restart).
    /// A definition that does not compile (its stream not known yet) is retried later.
    pub async fn attach_views(&self) {
        self.reconcile_shared().await;
        let Some(own) = self.local_store() else {
            return;
        };
        for def in own.views().defs() {
            if self.views.get(&def.name).is_some() && own.views().attached(&def.name) {
                continue;
            }
            match ViewPlan::new(&self.ctx, &def.query).await {
                Ok(plan) => {
                    let plan = Arc::new(plan);
                    own.views()
                        .attach(&def.name, Arc::new(Maintainer(plan.clone())));
                    self.views.plans.write().insert(def.name.clone(), plan);
                    self.unloaded.lock().remove(&def.name);
                }
                Err(e) => {
                    let mut unloaded = self.unloaded.lock();
                    if unloaded.insert(def.name.clone(), e.to_string()).is_none() {
                        tracing::warn!(view = %def.name, error = %e, "cannot load a materialized view yet");
                    }
                }
            }
        }
    }

    /// Folds into each view what it has not applied yet, for every view behind its shards.
    pub(crate) async fn catch_up_views(&self) {
        let Some(own) = self.local_store() else {
            return;
        };
        for def in own.views().defs() {
            let (store, name) = (own.clone(), def.name.clone());
            let backlog = match blocking(move || store.view_backlog(&name, false)).await {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(view = %def.name, error = %e, "cannot read a view's progress");
                    continue;
                }
            };
            for (partition, behind) in backlog {
                let (store, name) = (own.clone(), def.name.clone());
                let started = Instant::now();
                let done =
                    blocking(move || store.catch_up_view(&name, false, partition, &mut |_| {}))
                        .await;
                match done {
                    Ok(()) => {
                        tracing::info!(view = %def.name, partition, offsets = behind, ms = started.elapsed().as_millis() as u64, "view caught up")
                    }
                    Err(e) => {
                        tracing::warn!(view = %def.name, partition, error = %e, "view catch-up failed; retrying")
                    }
                }
            }
        }
    }

    /// Keeps every view maintained until `shutdown`: loads stored definitions, and folds in what
    /// a view has not applied (a new view's past, a view that was not loaded while events came).
    pub async fn maintain_views(self: Arc<Self>, shutdown: CancellationToken) {
        let mut shared = self.shared_views();
        while !shutdown.is_cancelled() {
            self.attach_views().await;
            self.catch_up_views().await;
            let changed = async {
                match shared.as_mut() {
                    Some(rx) => {
                        if rx.changed().await.is_err() {
                            std::future::pending::<()>().await;
                        }
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = self.wake.notified() => {}
                () = changed => {}
                () = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }

    /// Starts a rebuild of view `name` (see [`Rebuild::run`]), refusing at once when it cannot
    /// run: an unknown view, one that is not loaded, a rebuild of it running already.
    ///
    /// # Errors
    /// [`strata_store::Error::UnknownView`], [`Error::Conflict`], or a view not attached yet.
    pub fn begin_rebuild(self: &Arc<Self>, name: &str) -> Result<Rebuild> {
        if self.store()?.views().def(name).is_none() {
            return Err(strata_store::Error::UnknownView(name.to_owned()).into());
        }
        if let Some(why) = self.unloaded.lock().get(name) {
            return Err(Error::Conflict(format!(
                "view {name} is not loaded, so it cannot be rebuilt: {why}"
            )));
        }
        if !self.store()?.views().attached(name) {
            return Err(strata_store::Error::View(format!(
                "view {name} is not loaded yet; try again"
            ))
            .into());
        }
        if !self.rebuilding.lock().insert(name.to_owned()) {
            return Err(Error::Conflict(format!(
                "a rebuild of view {name} is running already"
            )));
        }
        Ok(Rebuild {
            engine: self.clone(),
            name: name.to_owned(),
        })
    }

    /// Rebuilds view `name` in this node's store: refused at once when it cannot start (see
    /// [`SqlEngine::begin_rebuild`]); once started it runs to its end even if the stream is
    /// dropped. The stream reports progress every 250 ms and ends with the finished progress or
    /// the failure.
    ///
    /// # Errors
    /// As [`SqlEngine::begin_rebuild`].
    pub fn rebuild_events(
        self: &Arc<Self>,
        name: &str,
    ) -> Result<BoxStream<'static, RebuildEvent>> {
        let rebuild = self.begin_rebuild(name)?;
        let (progress, watch) = watch::channel(RebuildProgress::default());
        let task = tokio::spawn(rebuild.run(progress));
        let tick = tokio::time::interval(PROGRESS_EVERY);
        // Progress on every tick while the task runs, then its outcome.
        let events = futures::stream::unfold(Some((task, tick, watch)), |state| async move {
            let (mut task, mut tick, mut watch) = state?;
            tokio::select! {
                biased;
                joined = &mut task => {
                    let last = match joined {
                        Ok(Ok(done)) => RebuildEvent::Progress(done),
                        Ok(Err(e)) => RebuildEvent::Failed { error: e.to_string() },
                        Err(e) => RebuildEvent::Failed {
                            error: format!("the rebuild task failed: {e}"),
                        },
                    };
                    Some((last, None))
                }
                _ = tick.tick() => {
                    let now = watch.borrow_and_update().clone();
                    Some((RebuildEvent::Progress(now), Some((task, tick, watch))))
                }
            }
        });
        Ok(events.boxed())
    }

    /// Recomputes view `name`: [`SqlEngine::begin_rebuild`], then [`Rebuild::run`].
    ///
    /// # Errors
    /// As those two.
    pub async fn rebuild_view(
        self: &Arc<Self>,
        name: &str,
        progress: watch::Sender<RebuildProgress>,
    ) -> Result<RebuildProgress> {
        self.begin_rebuild(name)?.run(progress).await
    }
}

/// A rebuild that may run (no other rebuild of the view runs until it is dropped).
pub struct Rebuild {
    engine: Arc<SqlEngine>,
    name: String,
}

impl Rebuild {
    /// Recomputes the view from the stored events into a new generation, reporting progress on
    /// `progress`, then swaps it in. Memory stays bounded: the stored events are folded one
    /// block at a time. A failed rebuild is cleaned up and the old generation stays.
    ///
    /// # Errors
    /// Store failures while folding or swapping.
    pub async fn run(self, progress: watch::Sender<RebuildProgress>) -> Result<RebuildProgress> {
        let (store, n) = (self.engine.store()?.clone(), self.name.clone());
        let started = Instant::now();
        let result = blocking(move || -> strata_store::Result<RebuildProgress> {
            store.views().start_rebuild(&n)?;
            let backlog = store.view_backlog(&n, true)?;
            let mut state = RebuildProgress {
                total: backlog.iter().map(|(_, b)| b).sum(),
                ..RebuildProgress::default()
            };
            progress.send_replace(state.clone());
            for (partition, _) in backlog {
                store.catch_up_view(&n, true, partition, &mut |rows| {
                    state.done += rows;
                    state.elapsed_ms = started.elapsed().as_millis() as u64;
                    progress.send_replace(state.clone());
                })?;
            }
            // Events stored meanwhile on partitions that were caught up before they came.
            for (partition, _) in store.view_backlog(&n, true)? {
                store.catch_up_view(&n, true, partition, &mut |rows| {
                    state.done += rows;
                })?;
            }
            store.views().finish_rebuild(&n)?;
            state.total = state.total.max(state.done);
            state.rows = Some(store.view_status(&n)?.rows);
            state.elapsed_ms = started.elapsed().as_millis() as u64;
            state.finished = true;
            progress.send_replace(state.clone());
            Ok(state)
        })
        .await;
        if result.is_err()
            && let Some(store) = self.engine.local_store().cloned()
        {
            let n = self.name.clone();
            if let Err(e) = blocking(move || store.views().abort_rebuild(&n)).await {
                tracing::warn!(view = %self.name, error = %e, "cannot clean up a failed rebuild");
            }
        }
        result
    }
}

impl Drop for Rebuild {
    fn drop(&mut self) {
        self.engine.rebuilding.lock().remove(&self.name);
    }
}
