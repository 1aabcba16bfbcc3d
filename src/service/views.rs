//! Materialized views: listings and rebuilds (their DDL goes through SQL, see
//! [`QueryService`](super::QueryService)). In a cluster a rebuild runs on every store node.

use super::{Parts, Result};
use crate::auth::{Operation, Principal};
use futures::StreamExt;
use futures::stream::BoxStream;
use std::sync::Arc;
use std::time::Duration;
pub use strata_views::RebuildEvent;
use strata_views::{RebuildProgress, SqlEngine, ViewListing};

/// Lists and rebuilds materialized views.
#[derive(Clone)]
pub struct ViewService {
    parts: Arc<Parts>,
}

impl ViewService {
    pub(super) fn new(parts: Arc<Parts>) -> Self {
        Self { parts }
    }

    /// The views of the streams `who` may use, with rows, progress and lag.
    ///
    /// # Errors
    /// Forbidden without `read`; the wrong role; store failures.
    pub async fn list(&self, who: &Principal) -> Result<Vec<ViewListing>> {
        who.authorize(Operation::Browse)?;
        let mut listing = self.parts.sql()?.view_listing().await?;
        listing.retain(|v| who.may_use(&v.stream));
        Ok(listing)
    }

    /// Rebuilds view `name` from the stored events. A rebuild that cannot start (an unknown view,
    /// one rebuilding already) is refused here; once started it runs to its end even if the
    /// stream of its progress is dropped. The stream reports progress every 250 ms and ends with
    /// the finished progress or the failure.
    ///
    /// # Errors
    /// Forbidden (`admin` on the view's stream), unknown view, conflict, the wrong role.
    pub fn rebuild(&self, who: &Principal, name: &str) -> Result<BoxStream<'static, RebuildEvent>> {
        let engine = self.parts.sql()?;
        match engine.view_stream(name) {
            Some(stream) => who.authorize(Operation::Admin(stream.as_str()))?,
            None => who.require(crate::auth::Scope::Admin)?,
        }
        match &self.parts.cluster {
            Some(cluster) if engine.views_are_shared() => {
                if engine.view_stream(name).is_none() {
                    return Err(strata_store::Error::UnknownView(name.to_owned()).into());
                }
                self.rebuild_everywhere(engine, cluster, name)
            }
            _ => Ok(engine.rebuild_events(name)?),
        }
    }

    /// A rebuild of view `name` on every store node of the cluster (each rebuilds the state of
    /// the partitions in its store), reported as one: progress summed every 250 ms, then the
    /// rebuilt view's rows once every node finished, or the failures by node.
    fn rebuild_everywhere(
        &self,
        engine: &Arc<SqlEngine>,
        cluster: &strata_cluster::Cluster,
        name: &str,
    ) -> Result<BoxStream<'static, RebuildEvent>> {
        let mut nodes: Vec<(String, BoxStream<'static, RebuildEvent>)> = Vec::new();
        if self.parts.store.is_some() {
            nodes.push((self.parts.node.id.clone(), engine.rebuild_events(name)?));
        }
        for (id, url) in cluster.store_peers() {
            let (cluster, view) = (cluster.clone(), name.to_owned());
            let events =
                futures::stream::once(async move { cluster.rebuild_on(&url, &view).await })
                    .flatten()
                    .boxed();
            nodes.push((id, events));
        }
        if nodes.is_empty() {
            return Err(strata_views::Error::Unavailable(
                "no live store node to rebuild the view on; retry shortly".into(),
            )
            .into());
        }
        let ids: Vec<String> = nodes.iter().map(|(id, _)| id.clone()).collect();
        let tagged = futures::stream::select_all(
            nodes
                .into_iter()
                .enumerate()
                .map(|(i, (_, events))| events.map(move |e| (i, e)).boxed()),
        );
        let state = Merged {
            latest: vec![None; ids.len()],
            ids,
            engine: engine.clone(),
            name: name.to_owned(),
        };
        let tick = tokio::time::interval(PROGRESS_EVERY);
        let events = futures::stream::unfold(Some((tagged, tick, state)), |next| async move {
            let (mut tagged, mut tick, mut state) = next?;
            loop {
                tokio::select! {
                    event = tagged.next() => match event {
                        Some((i, e)) => state.latest[i] = Some(e),
                        None => return Some((state.outcome().await, None)),
                    },
                    _ = tick.tick() => {
                        let progress = RebuildEvent::Progress(state.sum());
                        return Some((progress, Some((tagged, tick, state))));
                    }
                }
            }
        });
        Ok(events.boxed())
    }
}

/// How often a cluster-wide rebuild reports its progress.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

/// The latest report of each node of a cluster-wide rebuild.
struct Merged {
    ids: Vec<String>,
    latest: Vec<Option<RebuildEvent>>,
    engine: Arc<SqlEngine>,
    name: String,
}

impl Merged {
    /// Every node's progress added up.
    fn sum(&self) -> RebuildProgress {
        let mut total = RebuildProgress::default();
        for event in self.latest.iter().flatten() {
            if let RebuildEvent::Progress(p) = event {
                total.done += p.done;
                total.total += p.total;
                total.elapsed_ms = total.elapsed_ms.max(p.elapsed_ms);
            }
        }
        total
    }

    /// How the rebuild ended: the failures by node, or the finished progress with the view's rows.
    async fn outcome(&self) -> RebuildEvent {
        let failures: Vec<String> = self
            .ids
            .iter()
            .zip(&self.latest)
            .filter_map(|(id, event)| match event {
                Some(RebuildEvent::Failed { error }) => Some(format!("node {id}: {error}")),
                Some(RebuildEvent::Progress(p)) if p.finished => None,
                _ => Some(format!(
                    "node {id} stopped reporting before the rebuild finished"
                )),
            })
            .collect();
        if !failures.is_empty() {
            return RebuildEvent::Failed {
                error: failures.join("; "),
            };
        }
        let mut done = self.sum();
        done.total = done.total.max(done.done);
        done.finished = true;
        done.rows = match self.engine.view_listing().await {
            Ok(listing) => listing.iter().find(|v| v.name == self.name).map(|v| v.rows),
            Err(_) => None,
        };
        RebuildEvent::Progress(done)
    }
}
