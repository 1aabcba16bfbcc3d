//! Waiting for new events in partitions held anywhere: a subscription served from other nodes'
//! shards asks each holder to answer once one of its partitions has stored past the
//! subscription's position (a `DoAction` that waits), instead of asking them all again and again.

use crate::Cluster;
use crate::source::ClusterSource;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use strata_proto::StreamName;
use strata_views::{Error, Result};

/// The `DoAction` type that waits for a holder's partitions to store past offsets.
pub(crate) const STORED_ACTION: &str = "stored_past";

/// The longest a holder waits before answering (a subscription asks again after).
const MAX_WAIT: Duration = Duration::from_secs(10);

/// A question: answer once one of these partitions (with the offset a new event would be at)
/// has stored past it, or after `wait_ms`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredRequest {
    /// The stream.
    pub stream: String,
    /// Partitions and the first offset not seen yet in each.
    pub from: Vec<(u32, u64)>,
    /// How long the holder may wait, in milliseconds (at most 10 s).
    pub wait_ms: u64,
}

impl ClusterSource {
    /// Holder side: waits (at most `wait_ms`, 10 s) until one of the partitions of `r` has
    /// stored an event at or past its offset; answers every one's next offset then.
    ///
    /// # Errors
    /// [`Error::Unavailable`] when one of them is not held here (it moved).
    pub(crate) async fn local_stored_past(&self, r: &StoredRequest) -> Result<Vec<(u32, u64)>> {
        let stream = StreamName::new(&r.stream).map_err(|e| Error::Invalid(e.to_string()))?;
        let mut watchers = Vec::with_capacity(r.from.len());
        for &(p, from) in &r.from {
            let progress = self.holding(&stream, p)?.subscribe(&stream, p)?;
            watchers.push((p, from, progress));
        }
        let wait = Duration::from_millis(r.wait_ms).min(MAX_WAIT);
        let waits = watchers.iter_mut().map(|(_, from, progress)| async move {
            // A shard closing (the node stopping) ends its watch: wait out the time instead of
            // answering at once, again and again.
            if progress.wait_for(|next| *next > *from).await.is_err() {
                futures::future::pending::<()>().await;
            }
        });
        let mut any = futures::stream::FuturesUnordered::from_iter(waits);
        let _ = tokio::time::timeout(wait, any.next()).await;
        drop(any);
        Ok(watchers
            .iter()
            .map(|(p, _, progress)| (*p, *progress.borrow()))
            .collect())
    }
}

impl Cluster {
    /// Waits at most `wait` (10 s) until one of `from`'s partitions of `stream` has stored an
    /// event at or past its offset, asking the nodes holding them at once; answers the next
    /// offsets the holders reported (all of them when none moved in time).
    ///
    /// # Errors
    /// [`Error::Unavailable`] when a partition has no live holder or one cannot be reached.
    pub async fn stored_past(
        &self,
        stream: &StreamName,
        from: &[(u32, u64)],
        wait: Duration,
    ) -> Result<Vec<(u32, u64)>> {
        let partitions: Vec<u32> = from.iter().map(|(p, _)| *p).collect();
        let holders = self.map.holders(stream.as_str(), &partitions)?;
        let wait = wait.min(MAX_WAIT);
        let asks = self
            .source
            .located(holders)?
            .into_iter()
            .map(|(url, held)| {
                let request = StoredRequest {
                    stream: stream.to_string(),
                    from: from
                        .iter()
                        .filter(|(p, _)| held.contains(p))
                        .copied()
                        .collect(),
                    wait_ms: u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                };
                let source = self.source.clone();
                async move {
                    let Some(url) = url else {
                        return source.local_stored_past(&request).await;
                    };
                    let ask = source.peers().action(&url, STORED_ACTION, &request);
                    let body = tokio::time::timeout(wait + Duration::from_secs(5), ask)
                        .await
                        .map_err(|_| {
                            Error::Unavailable(format!("the node at {url} did not answer in time"))
                        })??;
                    serde_json::from_slice::<Vec<(u32, u64)>>(&body)
                        .map_err(|e| Error::Execution(format!("a peer's stored offsets: {e}")))
                }
            });
        let mut asks = futures::stream::FuturesUnordered::from_iter(asks);
        let mut stored = Vec::with_capacity(from.len());
        while let Some(answer) = asks.next().await {
            let answer = answer?;
            let moved = answer
                .iter()
                .any(|(p, next)| from.iter().any(|(q, at)| p == q && next > at));
            stored.extend(answer);
            if moved {
                break;
            }
        }
        Ok(stored)
    }
}
