//! Materialized views defined in the log's shared catalog (Kafka's `<prefix>__catalog`): a view
//! created or dropped on any node is written there, every node compiles it (so any node can read
//! it), and every store node keeps a local view of the same definition for the partitions it
//! holds. The embedded log has no shared catalog: its one store keeps its views.

use crate::engine::Access;
use crate::manage::blocking;
use crate::materialized::{Maintainer, ViewPlan};
use crate::{Error, Result, SqlEngine};
use std::sync::Arc;
use std::time::{Duration, Instant};
use strata_proto::{SharedView, StreamName, ViewCatalog};
use tokio::sync::watch;

/// How long `CREATE MATERIALIZED VIEW` waits for every partition's holder to maintain the view.
const SPREAD_WAIT: Duration = Duration::from_secs(15);

fn log_error(e: strata_proto::Error) -> Error {
    Error::Unavailable(e.to_string())
}

impl SqlEngine {
    /// Whether views are defined in the log's shared catalog (every store node keeps each view
    /// for the partitions it holds).
    pub fn views_are_shared(&self) -> bool {
        self.shared_views().is_some()
    }

    /// The stream view `name` reads: from the shared catalog, or this node's store.
    pub fn view_stream(&self, name: &str) -> Option<StreamName> {
        match self.shared_views() {
            Some(catalog) => catalog.borrow().get(name).map(|d| d.stream.clone()),
            None => self.local_store()?.views().def(name).map(|d| d.stream),
        }
    }

    /// The shared catalog of views, when the log has one.
    pub(crate) fn shared_views(&self) -> Option<watch::Receiver<ViewCatalog>> {
        self.log.as_ref()?.shared_views()
    }

    /// `CREATE MATERIALIZED VIEW` into the shared catalog: checked here (it compiles, it reads a
    /// stream the caller may read), written to the log, then awaited until every partition's
    /// holder maintains it (at most [`SPREAD_WAIT`]). Returns whether it was created now.
    pub(crate) async fn create_shared(
        &self,
        catalog: &watch::Receiver<ViewCatalog>,
        name: &str,
        query: &str,
        if_not_exists: bool,
        access: &Access,
    ) -> Result<bool> {
        if catalog.borrow().contains_key(name) {
            if if_not_exists {
                return Ok(false);
            }
            return Err(Error::Conflict(format!(
                "a materialized view named {name} exists already (DROP MATERIALIZED VIEW {name} first)"
            )));
        }
        let (_, stream) = self
            .check_definition(name, query, &self.tables.catalog(), access)
            .await?;
        let def = SharedView {
            name: name.to_owned(),
            stream: stream.clone(),
            query: query.to_owned(),
        };
        let log = self.log.as_ref().ok_or_else(|| {
            Error::Unavailable("this node has no log to write the view to".into())
        })?;
        log.put_view(name, Some(&def)).await.map_err(log_error)?;
        self.reconcile_shared().await;
        self.await_spread(&stream, name).await;
        Ok(true)
    }

    /// `DROP MATERIALIZED VIEW` from the shared catalog. Returns whether there was such a view.
    pub(crate) async fn drop_shared(
        &self,
        catalog: &watch::Receiver<ViewCatalog>,
        name: &str,
        access: &Access,
    ) -> Result<bool> {
        let Some(def) = catalog.borrow().get(name).cloned() else {
            return Ok(false);
        };
        access.require_stream(def.stream.as_str(), &format!("view {name}"))?;
        let log = self.log.as_ref().ok_or_else(|| {
            Error::Unavailable("this node has no log to write the view to".into())
        })?;
        log.put_view(name, None).await.map_err(log_error)?;
        self.reconcile_shared().await;
        Ok(true)
    }

    /// Waits until every partition of `stream` has a holder maintaining view `name`, or
    /// [`SPREAD_WAIT`] passes (the view is then still being set up; `SHOW VIEWS` tells).
    async fn await_spread(&self, stream: &StreamName, name: &str) {
        let started = Instant::now();
        while started.elapsed() < SPREAD_WAIT {
            let (tables, s, n) = (self.tables.clone(), stream.clone(), name.to_owned());
            let progress = tokio::task::spawn_blocking(move || tables.view_progress(&s, &n)).await;
            if let Ok(Ok(partitions)) = progress
                && partitions.iter().all(|p| p.error.is_none())
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tracing::warn!(
            view = name,
            "not every holder maintains the new view yet; it will as they catch up"
        );
    }

    /// Brings this node in line with the shared catalog: every shared view compiled (or noted as
    /// not loaded, with why), and the local store keeping exactly the shared views — a view it
    /// kept alone before (defined before views were shared) is published once instead of dropped.
    pub(crate) async fn reconcile_shared(&self) {
        let Some(catalog) = self.shared_views() else {
            return;
        };
        let defs = catalog.borrow().clone();
        self.compile_shared(&defs).await;
        let Some(store) = self.local_store().cloned() else {
            return;
        };
        for local in store.views().defs() {
            let outcome = match defs.get(&local.name) {
                Some(d) if d.stream == local.stream && d.query == local.query => {
                    if local.shared {
                        continue;
                    }
                    let (s, n) = (store.clone(), local.name.clone());
                    blocking(move || s.views().mark_shared(&n)).await
                }
                Some(_) => self.drop_local(&local.name).await,
                None if local.shared => self.drop_local(&local.name).await,
                None => self.publish_local(&local).await,
            };
            if let Err(e) = outcome {
                tracing::warn!(view = %local.name, error = %e, "cannot align a view with the shared catalog");
            }
        }
        for def in defs.values() {
            if store.views().def(&def.name).is_some() {
                continue;
            }
            let Some(plan) = self.views.get(&def.name) else {
                continue;
            };
            let (s, d) = (store.clone(), def.clone());
            let fold = Arc::new(Maintainer(plan));
            let created =
                blocking(move || s.create_view(&d.name, &d.stream, &d.query, true, fold)).await;
            match created {
                Ok(_) => self.wake.notify_one(),
                // The stream may not be in this store's catalog yet: the next round retries.
                Err(e) => {
                    tracing::debug!(view = %def.name, error = %e, "cannot keep a shared view yet")
                }
            }
        }
    }

    /// Compiles every shared view not compiled yet (or redefined), and forgets the dropped ones.
    async fn compile_shared(&self, defs: &ViewCatalog) {
        let stale: Vec<String> = self
            .compiled
            .lock()
            .iter()
            .filter(|(name, query)| defs.get(*name).is_none_or(|d| &d.query != *query))
            .map(|(name, _)| name.clone())
            .collect();
        for name in stale {
            self.compiled.lock().remove(&name);
            self.views.plans.write().remove(&name);
            self.unloaded.lock().remove(&name);
        }
        for def in defs.values() {
            if self.compiled.lock().contains_key(&def.name) {
                continue;
            }
            match ViewPlan::new(&self.ctx, &def.query).await {
                Ok(plan) => {
                    self.views
                        .plans
                        .write()
                        .insert(def.name.clone(), Arc::new(plan));
                    self.compiled
                        .lock()
                        .insert(def.name.clone(), def.query.clone());
                    self.unloaded.lock().remove(&def.name);
                }
                Err(e) => {
                    if self
                        .unloaded
                        .lock()
                        .insert(def.name.clone(), e.to_string())
                        .is_none()
                    {
                        tracing::warn!(view = %def.name, error = %e, "cannot load a shared view yet");
                    }
                }
            }
        }
    }

    async fn drop_local(&self, name: &str) -> Result<()> {
        let Some(store) = self.local_store().cloned() else {
            return Ok(());
        };
        let n = name.to_owned();
        blocking(move || store.views().remove(&n)).await?;
        // A plan compiled from the store's definition (not from the shared catalog) goes too.
        if !self.compiled.lock().contains_key(name) {
            self.views.plans.write().remove(name);
            self.unloaded.lock().remove(name);
        }
        Ok(())
    }

    /// Publishes a view this store kept alone into the shared catalog, and marks it shared.
    async fn publish_local(&self, local: &strata_store::ViewDef) -> Result<()> {
        let (Some(log), Some(store)) = (self.log.as_ref(), self.local_store().cloned()) else {
            return Ok(());
        };
        tracing::info!(view = %local.name, "publishing a view kept on this store alone to the shared catalog");
        let def = SharedView {
            name: local.name.clone(),
            stream: local.stream.clone(),
            query: local.query.clone(),
        };
        log.put_view(&local.name, Some(&def))
            .await
            .map_err(log_error)?;
        let n = local.name.clone();
        blocking(move || store.views().mark_shared(&n)).await
    }
}
