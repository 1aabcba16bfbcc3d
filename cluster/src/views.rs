//! Materialized views across the cluster. Every store node keeps each view's state per partition
//! for the partitions it holds; a view read asks each holder (this node in process, peers over
//! Arrow Flight `DoGet`) for the group states of its partitions — all of them, or point reads of
//! the group keys a lookup pins — and the reader merges them. A view's progress is asked the same
//! way (`DoAction`).

use crate::source::ClusterSource;
use arrow::array::{Array, BinaryArray, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use strata_proto::StreamName;
use strata_views::{Error, Result, ViewAfter, ViewProgress};

/// How long a peer may take to answer a view read (beyond waiting for `after`) or a progress
/// question; a node that is up but stuck must not hold a read forever.
const PEER_ANSWER: Duration = Duration::from_secs(30);

/// A peer that did not answer in time: retryable.
fn silent(url: &url::Url, limit: Duration) -> Error {
    Error::Unavailable(format!(
        "the node at {url} did not answer within {} s; retry shortly",
        limit.as_secs()
    ))
}

/// The `DoAction` type asking for a view's progress on some partitions.
pub(crate) const PROGRESS_ACTION: &str = "view_progress";

/// A read of view states on the partitions one node holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ViewTicket {
    /// The view's stream.
    pub stream: String,
    /// The view.
    pub view: String,
    /// The partitions to read.
    pub partitions: Vec<u32>,
    /// The encoded group keys to read (point reads); `None` reads every group.
    pub keys: Option<Vec<Vec<u8>>>,
    /// What the view must have applied on these partitions before the read (`after`).
    #[serde(default)]
    pub after: ViewAfter,
}

/// A question for a view's progress on the partitions one node holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProgressRequest {
    /// The view's stream.
    pub stream: String,
    /// The view.
    pub view: String,
    /// The partitions.
    pub partitions: Vec<u32>,
}

fn stream_of(name: &str) -> Result<StreamName> {
    StreamName::new(name).map_err(|e| Error::Invalid(e.to_string()))
}

/// View states as one batch (one binary column) to send.
///
/// # Errors
/// Arrow refusing the batch.
pub(crate) fn states_batch(states: Vec<Vec<u8>>) -> Result<RecordBatch> {
    let schema = Arc::new(Schema::new(vec![Field::new(
        "state",
        DataType::Binary,
        false,
    )]));
    let column = BinaryArray::from_iter_values(states);
    Ok(RecordBatch::try_new(schema, vec![Arc::new(column)])?)
}

/// The view states of a received batch.
///
/// # Errors
/// A batch that is not one binary column.
pub(crate) fn states_of(batch: &RecordBatch) -> Result<Vec<Vec<u8>>> {
    let column = batch
        .columns()
        .first()
        .and_then(|c| c.as_any().downcast_ref::<BinaryArray>())
        .ok_or_else(|| Error::Execution("a peer sent view states in a wrong shape".into()))?;
    Ok((0..column.len())
        .map(|i| column.value(i).to_vec())
        .collect())
}

impl ClusterSource {
    /// Holder side of a view read: the states of the ticket's partitions, which this node must
    /// hold and whose view it must maintain.
    ///
    /// # Errors
    /// [`Error::Unavailable`] when a partition moved or the view is not maintained here yet.
    pub(crate) fn local_view(&self, t: &ViewTicket) -> Result<Vec<Vec<u8>>> {
        let stream = stream_of(&t.stream)?;
        for p in &t.partitions {
            self.holding(&stream, *p)?;
        }
        let store = self.store("materialized views")?;
        if !store.views().attached(&t.view) {
            return Err(Error::Unavailable(format!(
                "view {} is not maintained on node {} yet; retry shortly",
                t.view,
                self.map().local().id
            )));
        }
        t.after
            .wait_for(&t.view, |p| Ok(store.views().applied(&t.view, p)?))?;
        Ok(match &t.keys {
            Some(keys) => store.views().get(&t.view, keys, Some(&t.partitions))?,
            None => store.views().groups(&t.view, Some(&t.partitions))?,
        })
    }

    /// Holder side of a progress question: the view's progress on the asked partitions, as this
    /// node keeps them (a view not set up here yet shows as not maintained).
    pub(crate) fn local_progress(&self, r: &ProgressRequest) -> Vec<ViewProgress> {
        let node = self.map().local().id.clone();
        let store = self.store("materialized views");
        let status = store
            .as_ref()
            .map_err(|_| ())
            .and_then(|store| store.view_progress(&r.view).map_err(|_| ()));
        match status {
            Ok(status) => {
                let attached = store.is_ok_and(|s| s.views().attached(&r.view));
                let mut out = ViewProgress::of(&status, Some(&node), |p| r.partitions.contains(&p));
                for p in &mut out {
                    p.maintained = attached;
                }
                out
            }
            _ => r
                .partitions
                .iter()
                .map(|&partition| ViewProgress::missing(partition, Some(node.clone())))
                .collect(),
        }
    }

    /// Reads view `name` over every partition of `stream` from the holders: the group states
    /// (all, or those of `keys`), one per partition and group. Blocking.
    pub(crate) fn read_view(
        &self,
        stream: &StreamName,
        name: &str,
        keys: Option<&[Vec<u8>]>,
        after: &ViewAfter,
    ) -> Result<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        let mut remote = Vec::new();
        for (node, partitions) in self.spread(stream)? {
            let ticket = ViewTicket {
                stream: stream.to_string(),
                view: name.to_owned(),
                after: ViewAfter {
                    offsets: after
                        .offsets
                        .iter()
                        .filter(|(p, _)| partitions.contains(p))
                        .map(|(p, o)| (*p, *o))
                        .collect(),
                    wait: after.wait,
                },
                partitions,
                keys: keys.map(<[Vec<u8>]>::to_vec),
            };
            match node {
                None => out.extend(self.local_view(&ticket)?),
                Some(url) => remote.push((url, ticket)),
            }
        }
        let fetched = self
            .runtime()
            .block_on(futures::future::join_all(remote.iter().map(
                |(url, ticket)| async move {
                    use futures::TryStreamExt;
                    let peer_ticket = crate::PeerTicket::View(ticket.clone());
                    let read = async {
                        let batches: Vec<RecordBatch> = self
                            .peers()
                            .get(url, &peer_ticket)
                            .await?
                            .try_collect()
                            .await?;
                        let mut states = Vec::new();
                        for b in &batches {
                            states.extend(states_of(b)?);
                        }
                        Ok::<_, Error>(states)
                    };
                    let limit = ticket.after.wait + PEER_ANSWER;
                    tokio::time::timeout(limit, read)
                        .await
                        .unwrap_or_else(|_| Err(silent(url, limit)))
                },
            )));
        for states in fetched {
            out.extend(states?);
        }
        Ok(out)
    }

    /// View `name`'s progress on every partition of `stream`, as each holder reports it. A
    /// partition without a live holder, or whose holder does not answer, shows as not maintained.
    /// Blocking.
    pub(crate) fn view_progress_all(
        &self,
        stream: &StreamName,
        name: &str,
    ) -> Result<Vec<ViewProgress>> {
        let partitions = self.partitions(stream)?;
        let spread = self.spread_live(stream, &partitions);
        let mut out = Vec::new();
        let mut remote = Vec::new();
        for (node, partitions) in spread {
            let request = ProgressRequest {
                stream: stream.to_string(),
                view: name.to_owned(),
                partitions,
            };
            match node {
                None => out.extend(self.local_progress(&request)),
                Some(url) => remote.push((url, request)),
            }
        }
        let answers = self
            .runtime()
            .block_on(futures::future::join_all(remote.iter().map(
                |(url, request)| async move {
                    let ask = self.peers().action(url, PROGRESS_ACTION, request);
                    let body = tokio::time::timeout(PEER_ANSWER, ask)
                        .await
                        .unwrap_or_else(|_| Err(silent(url, PEER_ANSWER)))?;
                    serde_json::from_slice::<Vec<ViewProgress>>(&body)
                        .map_err(|e| Error::Execution(format!("a peer's view progress: {e}")))
                },
            )));
        out.extend(answers.into_iter().flatten().flatten());
        // Partitions nobody reported on (no live holder, or it did not answer).
        for p in partitions {
            if !out.iter().any(|v| v.partition == p) {
                out.push(ViewProgress::missing(p, None));
            }
        }
        out.sort_by_key(|p| p.partition);
        Ok(out)
    }
}
