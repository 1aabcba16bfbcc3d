//! Materialized views: listings and rebuilds (their DDL goes through SQL, see
//! [`QueryService`](super::QueryService)).

use super::{Parts, Result};
use crate::auth::{Operation, Principal};
use futures::StreamExt;
use futures::stream::BoxStream;
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;
use strata_views::{RebuildProgress, ViewListing};

/// How often a rebuild reports its progress.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

/// What a rebuild reports: progress while it runs, then how it ended.
#[derive(Clone, Debug, PartialEq, Serialize)]
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
        match self.parts.store.as_ref().and_then(|s| s.views().def(name)) {
            Some(def) => who.authorize(Operation::Admin(def.stream.as_str()))?,
            None => who.require(crate::auth::Scope::Admin)?,
        }
        let engine = self.parts.sql()?;
        let rebuild = engine.begin_rebuild(name)?;
        let (progress, watch) = tokio::sync::watch::channel(RebuildProgress::default());
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
}
