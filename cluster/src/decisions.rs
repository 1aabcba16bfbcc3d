//! Where a conditional append learns its decision: from the store node holding the partition
//! (this one in process, a peer over `DoAction`), once that node has applied the batch.

use crate::Cluster;
use crate::source::ClusterSource;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use strata_proto::{BatchDecision, StreamName};
use strata_views::{Error, Result};

/// The `DoAction` type asking a holder for the decision on a conditional batch.
pub(crate) const DECISION_ACTION: &str = "append_decision";

/// A question for the decision on the conditional batch starting at `first`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecisionRequest {
    /// The stream.
    pub stream: String,
    /// The batch's partition.
    pub partition: u32,
    /// The batch's first offset.
    pub first: u64,
    /// The offset after the batch's last record: the holder waits to have applied it.
    pub through: u64,
    /// How long the holder may wait, in milliseconds.
    pub wait_ms: u64,
}

impl ClusterSource {
    /// Holder side: waits (at most `wait_ms`) until this node's shard has applied `through`, then
    /// reads the decision.
    ///
    /// # Errors
    /// [`Error::Unavailable`] when the partition is not held here; [`Error::Timeout`] when it
    /// is not applied in time.
    pub(crate) async fn local_decision(
        &self,
        r: &DecisionRequest,
    ) -> Result<Option<BatchDecision>> {
        let stream = StreamName::new(&r.stream).map_err(|e| Error::Invalid(e.to_string()))?;
        let store = self.holding(&stream, r.partition)?.clone();
        let wait = Duration::from_millis(r.wait_ms.min(60_000));
        strata_views::wait_stored(store.as_ref(), &stream, r.partition, r.through, wait).await?;
        let (first, partition) = (r.first, r.partition);
        tokio::task::spawn_blocking(move || store.decision(&stream, partition, first))
            .await
            .map_err(|e| Error::Execution(format!("reading a decision failed: {e}")))?
            .map_err(Error::from)
    }
}

impl Cluster {
    /// The decision on a conditional batch of `stream`/`partition` (first record at `first`, the
    /// last before `through`), from the node holding the partition once it has applied the batch;
    /// `None` when that node has no decision there (the records were not a batch's).
    ///
    /// # Errors
    /// [`Error::Unavailable`] when no live node holds the partition or it cannot be reached;
    /// [`Error::Timeout`] when the holder has not applied the batch within `wait`.
    pub async fn decision(
        &self,
        stream: &StreamName,
        partition: u32,
        first: u64,
        through: u64,
        wait: Duration,
    ) -> Result<Option<BatchDecision>> {
        let request = DecisionRequest {
            stream: stream.to_string(),
            partition,
            first,
            through,
            wait_ms: u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
        };
        let holders = self.map.holders(stream.as_str(), &[partition])?;
        match self.source.located(holders)?.into_iter().next() {
            Some((Some(url), _)) => {
                let ask = self.source.peers().action(&url, DECISION_ACTION, &request);
                let body = tokio::time::timeout(wait + Duration::from_secs(5), ask)
                    .await
                    .map_err(|_| {
                        Error::Unavailable(format!(
                            "the node at {url} did not answer for the decision in time; retry shortly"
                        ))
                    })??;
                serde_json::from_slice(&body)
                    .map_err(|e| Error::Execution(format!("a peer's decision: {e}")))
            }
            _ => self.source.local_decision(&request).await,
        }
    }
}
